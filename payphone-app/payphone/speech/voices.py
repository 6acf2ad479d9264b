"""Which voice a persona really speaks with: its production voice when this machine has it, else
its offline fallback (the packaged voice with effects), and why.

Production voices arrive with `python -m payphone models --download` (the installer runs it);
the demo and the tests run offline and hear the fallback. One function decides, so the service,
the simulator, `personas` and `doctor` all tell the same story.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from payphone.config import Settings
from payphone.models import ModelNotFound, resolve_voice
from payphone.speech.base import VoiceSpec


@dataclass(frozen=True)
class VoiceChoice:
    """The voice a persona asked for, the one that speaks, its `.onnx`, and why it is a fallback
    (`reason` is None when the production voice speaks)."""

    wanted: VoiceSpec
    used: VoiceSpec
    path: Path
    reason: str | None = None

    @property
    def is_fallback(self) -> bool:
        return self.reason is not None

    def describe(self) -> str:
        """`en_US-kathleen-low x1.1 + elderly`, or `fallback en_US-joe-medium x1.25 + elderly
        (en_US-kathleen-low not downloaded ...)`: what a caller hears, in one line."""
        if self.reason is None:
            return self.used.describe()
        return f"fallback {self.used.describe()} ({self.reason})"


def choose_voice(voice: VoiceSpec, resolve: Callable[[str], Path]) -> VoiceChoice:
    """The production voice if `resolve` finds it, else the fallback with the reason; raises
    `ModelNotFound` when neither is there (or the voice has no fallback)."""
    try:
        return VoiceChoice(voice, voice, resolve(voice.model))
    except ModelNotFound as missing:
        if voice.fallback is None:
            raise
        try:
            path = resolve(voice.fallback.model)
        except ModelNotFound as also:
            raise ModelNotFound(f"{missing}; and its fallback: {also}", missing.reason) from also
        return VoiceChoice(voice, voice.fallback, path, f"{voice.model} {missing.reason}")


def choose_here(settings: Settings, voice: VoiceSpec) -> VoiceChoice:
    """What `choose_voice` picks on this machine now, never downloading (`personas`, `doctor`)."""
    return choose_voice(voice, functools.partial(resolve_voice, settings, download=False))
