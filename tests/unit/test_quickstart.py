"""The quick start the README promises is what CI runs, and the scripts are sound."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.helpers import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the quick start has a shell block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_is_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("demo")
    assert commands[1].endswith("test")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = readme_commands()[1]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    run_lines = [
        line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert run_lines[-1] == test_command


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_are_shellcheck_clean() -> None:
    scripts = [REPO / "quickstart", REPO / ".ci" / "run", *sorted((REPO / "scripts").glob("*.sh"))]
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_models_and_venvs_are_ignored_by_git() -> None:
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    for pattern in (".venv/", "*.gguf", "*.onnx", "*.wav", "/training/out/"):
        assert pattern in ignored
