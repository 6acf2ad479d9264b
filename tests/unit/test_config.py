"""Settings: precedence of sources and a readable error for every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from payphone.config import Settings, load_settings
from payphone.settings_errors import SettingsError
from payphone.speech.vad import VadEndpointer


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problems(config: Path | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    return info.value.problems


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.vad.aggressiveness == 2
    assert settings.vad.hangover_ms == 600
    assert settings.llm.backend == "embedded"
    assert settings.call.inter_digit_timeout_s == 3.0


def test_precedence_toml_then_dotenv_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write(
        tmp_path / "payphone.toml",
        "[vad]\naggressiveness = 1\nhangover_ms = 700\nframe_ms = 20\n[hook]\npin = 4\n",
    )
    assert load_settings(toml).vad.aggressiveness == 1

    write(tmp_path / ".env", "PAYPHONE_VAD__AGGRESSIVENESS=0\nPAYPHONE_VAD__HANGOVER_MS=800\n")
    from_dotenv = load_settings(toml)
    assert from_dotenv.vad.aggressiveness == 0
    assert from_dotenv.vad.hangover_ms == 800
    assert from_dotenv.vad.frame_ms == 20  # TOML still fills what .env does not set

    monkeypatch.setenv("PAYPHONE_VAD__AGGRESSIVENESS", "3")
    final = load_settings(toml)
    assert final.vad.aggressiveness == 3
    assert final.vad.hangover_ms == 800
    assert final.hook.pin == 4


def test_config_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write(tmp_path / "other.toml", '[llm]\nbackend = "ollama"\n')
    monkeypatch.setenv("PAYPHONE_CONFIG", str(toml))
    assert load_settings().llm.backend == "ollama"


def test_env_value_out_of_range_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_VAD__AGGRESSIVENESS", "7")
    [line] = problems()
    assert line.startswith("PAYPHONE_VAD__AGGRESSIVENESS: '7'")
    assert "from 0 to 3" in line


def test_toml_value_names_table_key_and_file(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[vad]\nframe_ms = 25\n")
    [line] = problems(toml)
    assert line.startswith(f"[vad] frame_ms (in {toml}): 25")
    assert "one of 10, 20, 30" in line


def test_a_rule_across_a_group_names_its_settings(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[vad]\nbarge_in_start_frames = 7\n")
    [line] = problems(toml)
    assert line == (
        f"vad (in {toml}): vad.barge_in_start_frames (7) must be at most "
        "vad.start_window_frames (6)"
    )
    # the barge-in rule's default shrinks with a smaller window: nothing to complain about
    small = write(
        tmp_path / "small.toml", "[vad]\nstart_voiced_frames = 2\nstart_window_frames = 2\n"
    )
    assert load_settings(small).vad.barge_in_start_frames == 3
    assert VadEndpointer(load_settings(small).vad).barge_in_start == 2


def test_dotenv_value_names_the_file(tmp_path: Path) -> None:
    write(tmp_path / ".env", "PAYPHONE_HOOK__PIN=40\n")
    [line] = problems()
    assert line.startswith("PAYPHONE_HOOK__PIN (in .env): '40'")
    assert "from 0 to 27" in line


def test_every_problem_gets_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_VAD__SAMPLE_RATE", "44100")
    monkeypatch.setenv("PAYPHONE_LLM__OLLAMA_HOST", "not a url")
    monkeypatch.setenv("PAYPHONE_HOOK__SWITCH", "sideways")
    lines = problems()
    assert len(lines) == 3
    by_name = {line.split(":")[0]: line for line in lines}
    assert "8000, 16000, 32000, 48000" in by_name["PAYPHONE_VAD__SAMPLE_RATE"]
    assert "URL" in by_name["PAYPHONE_LLM__OLLAMA_HOST"]
    assert "'normally_open', 'normally_closed'" in by_name["PAYPHONE_HOOK__SWITCH"]


def test_list_element_out_of_range(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[keypad]\nrow_pins = [5, 6, 99, 19]\n")
    [line] = problems(toml)
    assert line.startswith(f"[keypad] row_pins (in {toml}): 99")
    assert "from 0 to 27" in line


def test_unknown_key_is_an_error_listing_known_keys(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[vad]\nagressiveness = 2\n")
    [line] = problems(toml)
    assert "agressiveness" in line
    assert "unknown setting" in line
    assert "aggressiveness" in line.split("allowed here:")[1]


def test_unknown_group_is_an_error(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[vadd]\naggressiveness = 2\n")
    [line] = problems(toml)
    assert "vadd" in line
    assert "unknown setting" in line


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[vad\naggressiveness = 2\n")
    [line] = problems(toml)
    assert str(toml) in line
    assert "not valid TOML" in line


def test_missing_config_file(tmp_path: Path) -> None:
    [line] = problems(tmp_path / "nope.toml")
    assert "nope.toml" in line
    assert "not found" in line


def test_bad_json_in_a_list_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_KEYPAD__ROW_PINS", "[5, 6,")
    [line] = problems()
    assert "keypad" in line
    assert "JSON" in line
