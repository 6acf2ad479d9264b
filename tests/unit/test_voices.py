"""Voices that fit: each persona's production voice when this machine has it, else its fallback
(the packaged voice with effects) and why, the same answer for the phone, `personas`, `doctor`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import structlog

from payphone.config import load_settings
from payphone.models import ModelNotFound, resolve_voice
from payphone.personas.loader import PACKAGED_VOICE, SHIPPED_DIR, load_personas
from payphone.speech.base import VoiceSpec
from payphone.speech.tts import PiperSynthesizer
from payphone.speech.voices import choose_here
from tests.helpers import run_module
from tests.voice_fixtures import production_voice_names, stage_production_voices


def test_every_persona_names_its_own_production_voice_and_the_packaged_fallback() -> None:
    book = load_personas()
    assert book.errors == []
    specs = {p.id: p.voice_spec for p in book}
    assert len({s.model for s in specs.values()}) == 4  # four different speakers
    assert PACKAGED_VOICE not in {s.model for s in specs.values()}
    for spec in specs.values():
        assert spec.fallback is not None and spec.fallback.model == PACKAGED_VOICE
    # the fallbacks are today's voices: Mae is still pitched up while hers is missing
    assert specs["grandma_mae"].fallback == VoiceSpec(PACKAGED_VOICE, None, 1.25, "elderly", 3.0)


def test_the_fallback_speaks_while_the_production_voice_is_missing_and_says_why() -> None:
    settings = load_settings()
    mae = load_personas().personas["2"]
    choice = choose_here(settings, mae.voice_spec)
    assert choice.is_fallback
    assert choice.used == mae.voice_spec.fallback
    assert choice.path == resolve_voice(settings)  # the packaged voice
    assert choice.reason is not None
    assert choice.reason.startswith(f"{mae.voice.model} not downloaded to {settings.models.dir}")
    assert "python -m payphone models --download" in choice.reason
    assert choice.describe().startswith("fallback en_US-joe-medium x1.25 + elderly +3 st (")


def test_the_production_voice_speaks_once_it_is_there() -> None:
    settings = load_settings()
    [staged] = stage_production_voices(settings, ["en_US-kathleen-low"])
    mae = load_personas().personas["2"]
    choice = choose_here(settings, mae.voice_spec)
    assert not choice.is_fallback
    assert choice.path == staged
    assert choice.used.model == "en_US-kathleen-low"
    assert choice.used.pitch_semitones == 0  # a woman's voice: no pitch shift
    assert choice.describe() == "en_US-kathleen-low x1.15 + elderly"


def test_no_fallback_and_no_voice_is_an_error_naming_the_persona_field() -> None:
    spec = VoiceSpec("en_US-nobody-medium")
    with pytest.raises(ModelNotFound, match=r"voice\.model in a persona file = 'en_US-nobody"):
        choose_here(load_settings(), spec)


def test_the_synthesizer_logs_a_fallback_once() -> None:
    settings = load_settings()
    tts = PiperSynthesizer(settings.tts, partial(resolve_voice, settings))
    jones = load_personas().personas["1"].voice_spec
    with structlog.testing.capture_logs() as logs:
        first = tts.choose(jones)
        again = tts.choose(jones)
    assert first is again
    [event] = [e for e in logs if e["event"] == "voice_fallback"]
    assert event["voice"] == "en_US-ryan-medium"
    assert event["speaks"] == "en_US-joe-medium x1.1 + noir"
    assert "not downloaded" in event["reason"]


@pytest.mark.parametrize(
    ("model", "shown"),
    [("en_US-mae", "'en_US-mae' is not a Piper voice name"), ("en-US-amy-medium", "x_low, low")],
)
def test_a_bad_voice_name_names_the_file_and_field(tmp_path: Path, model: str, shown: str) -> None:
    text = (SHIPPED_DIR / "grandma_mae.toml").read_text(encoding="utf-8")
    text = text.replace('model = "en_US-kathleen-low"', f'model = "{model}"')
    (tmp_path / "grandma_mae.toml").write_text(text, "utf-8")
    book = load_personas(tmp_path)
    [error] = book.errors
    assert f"{tmp_path / 'grandma_mae.toml'}: field voice.model:" in error
    assert shown in error
    assert "2" not in book.personas  # the others still load
    assert len(book.personas) == 3


def test_personas_command_shows_the_voice_really_used(tmp_path: Path) -> None:
    result = run_module("payphone", "personas", env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    assert "fallback en_US-joe-medium x1.25 + elderly +3 st" in result.stdout
    assert "Grandma Mae speaks with the fallback voice: en_US-kathleen-low not downloaded" in (
        result.stdout
    )
    stage_production_voices(load_settings())
    result = run_module("payphone", "personas", env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    assert "en_US-kathleen-low x1.15 + elderly" in result.stdout
    assert "fallback" not in result.stdout


def test_models_lists_the_persona_voices_and_a_missing_one_only_warns() -> None:
    result = run_module("payphone", "models", env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stdout + result.stderr
    for name in production_voice_names():
        assert f"'{name}': Piper voice not found" in result.stdout
    assert "meanwhile the fallback speaks: en_US-joe-medium x1.25 + elderly +3 st" in result.stdout
