"""Shared fixtures: every test starts from clean settings sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the demo GGUF's Q8_0 copy is made, once for the whole session."""
    return tmp_path_factory.mktemp("demo-gguf")


@pytest.fixture(autouse=True)
def clean_settings_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_gguf_dir: Path
) -> None:
    """No PAYPHONE_* variable, no .env and no earlier downloads leak in from the machine.

    Every test has its own `models.dir`, but the demo GGUF's Q8_0 copy (payphone/demo_gguf.py,
    ~145 MB, 0.6 s) is made once per session and shared: one per test filled 5 GB of /tmp.
    tests/unit/test_models.py checks the copy in a test's own `models.dir`."""
    from payphone import demo_gguf, models

    for name in list(os.environ):
        if name.upper().startswith("PAYPHONE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PAYPHONE_MODELS__DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)

    def shared_copy(packaged: Path, dest: Path) -> Path:
        return demo_gguf.q8_copy(packaged, demo_gguf_dir / dest.name)

    monkeypatch.setattr(models, "q8_copy", shared_copy)


@pytest.fixture(scope="session")
def tagged_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packaged SmolLM2 GGUF that says it was trained on persona tags
    (`payphone.prompt_style = "tag"`, written the way the training export writes it)."""
    import shutil

    from training.base_model import BaseModelError, resolve
    from training.export import tag_gguf

    try:
        source = resolve("SmolLM2-135M-Instruct").gguf
    except BaseModelError as exc:
        pytest.skip(str(exc))
    assert source is not None
    dest = tmp_path_factory.mktemp("tagged") / "persona.Q4_1.gguf"
    shutil.copyfile(source, dest)
    return tag_gguf(dest, "tag")
