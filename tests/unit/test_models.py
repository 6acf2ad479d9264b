"""The model resolver: explicit paths, the real demo packages, downloads from a local server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from payphone import demo_gguf, models
from payphone.config import load_settings
from payphone.download import DownloadError
from payphone.models import (
    DEMO_PACKAGES,
    ModelNotFound,
    demo_package_path,
    resolve_all,
    resolve_gguf,
    resolve_turn_model,
    resolve_voice,
    resolve_whisper,
)
from tests.helpers import REPO


def test_demo_packages_resolve_to_real_model_files() -> None:
    settings = load_settings()
    whisper = resolve_whisper(settings)
    assert (whisper / "model.bin").stat().st_size > 10_000_000
    voice = resolve_voice(settings)
    assert voice.suffix == ".onnx"
    assert voice.with_suffix(".onnx.json").is_file()
    gguf = resolve_gguf(settings)
    assert gguf.read_bytes()[:4] == b"GGUF"


def test_the_demo_gguf_runs_as_a_q8_0_copy_made_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf as gguf_file

    monkeypatch.setattr(models, "q8_copy", demo_gguf.q8_copy)  # not the tests' shared copy
    monkeypatch.setenv("PAYPHONE_MODELS__DIR", str(tmp_path / "own"))
    settings = load_settings()
    copy = resolve_gguf(settings)
    assert copy.parent == tmp_path / "own" / "gguf" and copy.name.endswith(".Q8_0.gguf")
    file_type = gguf_file.GGUFReader(copy).fields["general.file_type"]
    assert int(file_type.parts[-1][0]) == gguf_file.LlamaFileType.MOSTLY_Q8_0
    made = copy.stat().st_mtime_ns
    packaged = demo_package_path(*models.DEMO_GGUF["SmolLM2-135M-Instruct"])
    assert packaged is not None and made == packaged.stat().st_mtime_ns  # the package's version
    assert resolve_gguf(settings) == copy and copy.stat().st_mtime_ns == made  # not again
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temporary left


def test_without_a_writable_models_dir_the_packaged_gguf_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "q8_copy", demo_gguf.q8_copy)  # not the tests' shared copy
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    monkeypatch.setenv("PAYPHONE_MODELS__DIR", str(blocked))
    packaged = resolve_gguf(load_settings())
    assert packaged.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and packaged.is_file()


def test_explicit_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = resolve_voice(load_settings())
    copy = tmp_path / "mine" / "voice.onnx"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    shutil.copy(source.with_suffix(".onnx.json"), copy.with_suffix(".onnx.json"))
    monkeypatch.setenv("PAYPHONE_TTS__VOICE", str(copy))
    assert resolve_voice(load_settings()) == copy


def test_missing_path_names_setting_and_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PAYPHONE_LLM__GGUF", str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelNotFound, match=r"llm\.gguf \(PAYPHONE_LLM__GGUF\).*gone\.gguf"):
        resolve_gguf(load_settings())


def test_unknown_name_says_which_command_fixes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_STT__MODEL", "small.en")
    with pytest.raises(ModelNotFound) as info:
        resolve_whisper(load_settings())
    message = str(info.value)
    assert "stt.model (PAYPHONE_STT__MODEL) = 'small.en'" in message
    assert "python -m payphone models --download" in message


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server laid out like the model hub, serving copies of the demo files."""
    root = tmp_path / "hub"
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_whisper_and_voice_from_the_hub(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, root = hub
    demo = load_settings()
    whisper_src = resolve_whisper(demo)
    voice_src = resolve_voice(demo)
    repo = root / "Systran" / "faster-whisper-base.en" / "resolve" / "main"
    repo.mkdir(parents=True)
    for name in ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(whisper_src / name, repo / name)
    voices = root / "rhasspy/piper-voices/resolve/main/en/en_US/joe/low"
    voices.mkdir(parents=True)
    shutil.copy(voice_src, voices / "en_US-joe-low.onnx")
    shutil.copy(voice_src.with_suffix(".onnx.json"), voices / "en_US-joe-low.onnx.json")

    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    monkeypatch.setenv("PAYPHONE_STT__MODEL", "base.en")
    monkeypatch.setenv("PAYPHONE_TTS__VOICE", "en_US-joe-low")
    settings = load_settings()
    with pytest.raises(ModelNotFound):
        resolve_whisper(settings)  # downloads are off unless asked for
    got = resolve_whisper(settings, download=True)
    assert got == settings.models.dir / "whisper" / "base.en"
    assert (got / "model.bin").read_bytes() == (whisper_src / "model.bin").read_bytes()
    assert resolve_whisper(settings) == got  # found in the cache next time, no download
    voice = resolve_voice(settings, download=True)
    assert voice.read_bytes() == voice_src.read_bytes()


def test_failed_download_leaves_nothing_behind(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = hub
    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    monkeypatch.setenv("PAYPHONE_LLM__GGUF", "hf:someone/repo/model.gguf")
    settings = load_settings()
    with pytest.raises(DownloadError, match="HTTP 404"):
        resolve_gguf(settings, download=True)
    assert not [p for p in (settings.models.dir / "gguf").rglob("*") if p.is_file()]


def test_resolve_all_collects_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_STT__MODEL", "/nowhere/whisper")
    monkeypatch.setenv("PAYPHONE_TTS__VOICE", "/nowhere/voice.onnx")
    results = resolve_all(load_settings(), voices=[])
    errors = [r.error for r in results if r.error]
    assert len(errors) == 2
    assert any("stt.model" in e for e in errors)
    assert any("tts.voice" in e for e in errors)
    assert next(r.path for r in results if r.setting.key == "llm.gguf") is not None


def test_demo_package_lookup_does_not_need_the_package() -> None:
    assert demo_package_path("no_such_package_here", "x") is None


# -- the end-of-turn model --------------------------------------------------------------------


def test_the_turn_model_is_found_in_pipecat_without_importing_it() -> None:
    path = resolve_turn_model(load_settings())
    assert path is not None
    assert path.name == "smart-turn-v3.2-cpu.onnx"
    assert path.stat().st_size > 1_000_000
    assert "pipecat" not in sys.modules  # its dependencies are not installed


def test_an_empty_turn_model_means_none_and_no_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", "")
    settings = load_settings()
    assert resolve_turn_model(settings) is None
    assert "turn.model" not in {r.setting.key for r in resolve_all(settings, voices=[])}


def test_the_turn_model_shows_in_resolve_all() -> None:
    (turn,) = [r for r in resolve_all(load_settings(), voices=[]) if r.setting.key == "turn.model"]
    assert turn.value == "smart-turn-v3.2"
    assert turn.path is not None


def test_a_turn_model_path_is_taken_as_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"not checked here")
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", str(mine))
    assert resolve_turn_model(load_settings()) == mine
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", str(tmp_path / "gone.onnx"))
    with pytest.raises(ModelNotFound, match=r"turn\.model \(PAYPHONE_TURN__MODEL\).*gone\.onnx"):
        resolve_turn_model(load_settings())


def test_download_the_turn_model_from_the_hub(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root = hub
    source = resolve_turn_model(load_settings())
    assert source is not None
    repo = root / "pipecat-ai" / "smart-turn-v3" / "resolve" / "main"
    repo.mkdir(parents=True)
    shutil.copy(source, repo / "smart-turn-v3.2-cpu.onnx")
    # production: pipecat-ai not installed
    monkeypatch.setattr(models, "demo_package_path", lambda package, inner: None)
    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    settings = load_settings()
    with pytest.raises(ModelNotFound, match="pipecat-ai"):
        resolve_turn_model(settings)  # downloads are off unless asked for
    got = resolve_turn_model(settings, download=True)
    assert got == settings.models.dir / "turn" / "smart-turn-v3.2.onnx"
    assert got.read_bytes() == source.read_bytes()
    assert resolve_turn_model(settings) == got  # found in the cache next time


def test_an_unknown_turn_model_name_is_not_downloaded(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = hub
    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", "smart-turn-v9")
    with pytest.raises(ModelNotFound, match=r"unknown name; known: smart-turn-v3\.2"):
        resolve_turn_model(load_settings(), download=True)


def test_bootstrap_installs_the_demo_packages_the_messages_name() -> None:
    script = (REPO / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    found = re.search(r"^demo_models=\((.*)\)$", script, re.M)
    assert found is not None
    assert found.group(1).split() == DEMO_PACKAGES.split()


# -- Whisper repositories laid out as the hub has them ----------------------------------------


def hub_whisper_repo(root: Path, repo: str, vocabulary: str, preprocessor: bool) -> Path:
    """A copy of the demo Whisper model as `repo` on the local hub, its vocabulary in either
    format (vocabulary.txt: older repositories; vocabulary.json: distil-*, large-v3, turbo)."""
    source = resolve_whisper(load_settings())
    folder = root / repo / "resolve" / "main"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.bin", "tokenizer.json"):
        shutil.copy(source / name, folder / name)
    tokens = (source / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    if vocabulary == "vocabulary.json":
        (folder / vocabulary).write_text(json.dumps(tokens), encoding="utf-8")
    else:
        (folder / vocabulary).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    if preprocessor:
        config = {"feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400}
        (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.models
def test_distil_small_en_downloads_with_its_own_files_and_loads(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from faster_whisper import WhisperModel

    url, root = hub
    hub_whisper_repo(root, "Systran/faster-distil-whisper-small.en", "vocabulary.json", True)
    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    monkeypatch.setenv("PAYPHONE_STT__MODEL", "distil-small.en")
    settings = load_settings()

    [whisper] = [r for r in resolve_all(settings, [], True) if r.setting.key == "stt.model"]

    assert whisper.error is None, whisper.error
    assert whisper.path == settings.models.dir / "whisper" / "distil-small.en"
    assert sorted(p.name for p in whisper.path.iterdir()) == [
        "config.json",
        "model.bin",
        "preprocessor_config.json",
        "tokenizer.json",
        "vocabulary.json",
    ]
    WhisperModel(str(whisper.path), device="cpu", compute_type="int8", cpu_threads=1)


def test_a_failed_whisper_download_is_a_line_naming_the_setting_not_a_crash(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root = hub
    repo = "Systran/faster-distil-whisper-small.en"
    folder = hub_whisper_repo(root, repo, "vocabulary.json", preprocessor=False)
    (folder / "model.bin").unlink()  # a repository that is not a CTranslate2 model
    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    monkeypatch.setenv("PAYPHONE_STT__MODEL", "distil-small.en")
    settings = load_settings()

    [whisper] = [r for r in resolve_all(settings, [], True) if r.setting.key == "stt.model"]

    assert whisper.path is None
    assert whisper.error is not None
    assert whisper.error.startswith(
        "stt.model (PAYPHONE_STT__MODEL) = 'distil-small.en': Whisper model download failed: "
        f"{url}/Systran/faster-distil-whisper-small.en/resolve/main: no model.bin there"
    )
    assert "models.hub_url" in whisper.error
    assert not (settings.models.dir / "whisper" / "distil-small.en" / "model.bin").exists()

    proc = subprocess.run(  # what the installer runs
        [sys.executable, "-m", "payphone", "models", "--download"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "payphone-app"), "COLUMNS": "300"},
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Whisper model download failed" in proc.stdout


# -- the personas' production voices ---------------------------------------------------------


def test_models_download_fetches_every_personas_production_voice(
    hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the installer runs: each persona's voice comes from rhasspy/piper-voices, laid out
    `<lang>/<lang_REGION>/<name>/<quality>/`, into `models.dir/piper`."""
    from payphone.personas.loader import load_personas

    url, root = hub
    voices = [p.voice.model for p in load_personas()]
    for name in voices:
        lang, speaker, quality = name.split("-")
        folder = root / "rhasspy/piper-voices/resolve/main/en" / lang / speaker / quality
        folder.mkdir(parents=True)
        (folder / f"{name}.onnx").write_bytes(f"onnx of {name}".encode())
        (folder / f"{name}.onnx.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv("PAYPHONE_MODELS__HUB_URL", url)
    settings = load_settings()

    proc = subprocess.run(
        [sys.executable, "-m", "payphone", "models", "--download"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "payphone-app"), "COLUMNS": "300"},
        check=False,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in voices:
        onnx = settings.models.dir / "piper" / f"{name}.onnx"
        assert onnx.read_bytes() == f"onnx of {name}".encode()
        assert onnx.with_suffix(".onnx.json").is_file()
        assert f"│ {name}" in proc.stdout
