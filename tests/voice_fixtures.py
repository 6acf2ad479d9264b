"""The personas' production voices on a machine that cannot download them: the packaged voice
linked under each production name, laid out where `models --download` would put it."""

from __future__ import annotations

from pathlib import Path

from payphone.config import Settings
from payphone.models import resolve_voice
from payphone.personas.loader import load_personas


def production_voice_names() -> list[str]:
    """The production voice of every shipped persona, in key order."""
    return [p.voice.model for p in load_personas()]


def stage_production_voices(settings: Settings, names: list[str] | None = None) -> list[Path]:
    """Symlink the packaged voice (`.onnx` and `.onnx.json`) into `models.dir/piper` under each
    name: real, loadable Piper voices, as a download would leave them, without the network."""
    source = resolve_voice(settings, settings.tts.voice)
    folder = settings.models.dir / "piper"
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for name in names or production_voice_names():
        onnx = folder / f"{name}.onnx"
        onnx.symlink_to(source)
        onnx.with_suffix(".onnx.json").symlink_to(source.with_suffix(".onnx.json"))
        staged.append(onnx)
    return staged
