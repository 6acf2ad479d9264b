"""The command line as a user meets it: help, config, and exit codes."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import typer

from payphone.cli import BENCHES, State, with_llm_overrides
from tests.helpers import REPO, run_module

SUBCOMMANDS = ("run", "simulate", "doctor", "personas", "bench", "dtmf", "config", "stats", "model")


def test_payphone_help_lists_every_subcommand() -> None:
    result = run_module("payphone", "--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name: str) -> None:
    result = run_module("payphone", name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_training_help_from_the_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = run_module("training", "--help")
    assert result.returncode == 0, result.stderr
    for stage in ("data", "train", "export", "modelfile", "eval"):
        assert stage in result.stdout


def test_config_prints_effective_settings() -> None:
    result = run_module("payphone", "config", env={"PAYPHONE_VAD__AGGRESSIVENESS": "3"})
    assert result.returncode == 0, result.stderr
    assert "settings valid" in result.stdout
    assert "aggressiveness = 3" in result.stdout


def test_config_never_prints_the_status_token() -> None:
    secret = "s3cret-token-0123456789"
    result = run_module("payphone", "config", env={"PAYPHONE_STATUS__TOKEN": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout
    assert 'token = "(set, hidden)"' in result.stdout


def test_bad_setting_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_module("payphone", "config", env={"PAYPHONE_VAD__AGGRESSIVENESS": "7"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PAYPHONE_VAD__AGGRESSIVENESS" in lines[0]
    assert "Traceback" not in result.stderr


def test_config_option_reads_a_toml_file(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text("[hook]\npin = 40\n", encoding="utf-8")
    result = run_module("payphone", "--config", str(toml), "config")
    assert result.returncode == 2
    assert "[hook] pin" in result.stderr


def test_stats_reads_a_log_file(tmp_path: Path) -> None:
    import json

    log = tmp_path / "payphone.log"
    log.write_text(
        json.dumps(
            {
                "event": "call_started",
                "call_id": "c1",
                "persona": "operator",
                "level": "info",
                "timestamp": "2026-11-22T20:00:00Z",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    result = run_module("payphone", "stats", "--file", str(log), "--json")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), dict)


def test_stats_on_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = run_module("payphone", "stats", "--file", str(tmp_path / "nope.log"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_llm_options_override_the_settings_without_touching_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PAYPHONE_LLM__BACKEND", raising=False)
    monkeypatch.setenv("PAYPHONE_LLM__NUM_PREDICT", "50")
    before = dict(os.environ)
    gguf = tmp_path / "persona.gguf"
    settings = with_llm_overrides(State(None), "ollama", "http://pi2:11434", str(gguf))
    assert (settings.llm.backend, str(settings.llm.ollama_host)) == ("ollama", "http://pi2:11434/")
    assert settings.llm.gguf == str(gguf.resolve())
    assert settings.llm.num_predict == 50  # the other sources still count
    assert with_llm_overrides(State(None), None, None, None).llm.backend == "embedded"
    with pytest.raises(typer.Exit) as bad:
        with_llm_overrides(State(None), "gpt", None, None)
    assert bad.value.exit_code == 2
    assert "llm.backend: 'gpt' is not valid" in capsys.readouterr().err
    assert dict(os.environ) == before


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_exists(name: str) -> None:
    assert callable(importlib.import_module(f"payphone.bench.{name}").main)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["simulate", "call.yaml", "--echo-db", "5"], "--echo-db"),
        (["simulate", "--interactive", "--echo-db", "-10", "--echo-delay-ms", "500"],
         "--echo-delay-ms"),
        (["simulate", "call.yaml", "--echo-delay-ms", "20"], "--echo-delay-ms"),
        (["bench", "hangup", "--echo-db", "-70"], "--echo-db"),
        (["bench", "stt", "--echo-db", "-10"], "--echo-db"),
        (["bench", "turns", "--room-db", "50"], "--room-db"),
        (["bench", "vad", "--room-db", "15"], "--room-db"),
    ],
)  # fmt: skip
def test_echo_settings_out_of_range_exit_2_naming_the_setting(args: list[str], named: str) -> None:
    result = run_module("payphone", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"payphone: bad setting: {named}:")
    assert "Traceback" not in result.stderr
