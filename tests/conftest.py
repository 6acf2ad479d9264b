"""Shared fixtures: every test starts from clean settings sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PAYPHONE_* variable, no .env and no earlier downloads leak in from the machine."""
    for name in list(os.environ):
        if name.upper().startswith("PAYPHONE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PAYPHONE_MODELS__DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
