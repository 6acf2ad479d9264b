"""Version names, the Modelfile reader, and the model the status watch says the phone runs."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import ollama
import pytest
from structlog.testing import capture_logs

from payphone.config import StatusSettings
from payphone.llm.breaker import BreakerState, BreakerStatus
from payphone.status.health import LlmWatch
from payphone.status.page import StatusPage
from payphone.versions import naming
from payphone.versions.modelfile import find_source, read_modelfile
from payphone.versions.naming import VersionError, file_sha256, new_version, parse_version
from tests.helpers import REPO
from tests.support.ollama_server import OllamaProtocolServer

UP = BreakerStatus(BreakerState.CLOSED, 0, None, "", None, 0)
SHA = "3f2a9c1b0d4e" + "0" * 52


def test_a_version_names_the_time_and_the_file_and_sorts_by_time() -> None:
    noon = datetime(2026, 12, 1, 12, 0, 5, 999, tzinfo=UTC)
    version = new_version(SHA, noon)
    assert version.name == "20261201-120005-3f2a9c1b0d4e"
    assert parse_version(version.name) == version
    # a clock behind the newest installed version still sorts after it
    later = new_version("ab" * 32, datetime(2026, 11, 30, tzinfo=UTC), after=version)
    assert later.name == "20261201-120006-abababababab"
    assert later > version
    for bad in ("latest", "20261201-3f2a9c1b0d4e", "20261201-120005-3F2A9C1B0D4E", ""):
        with pytest.raises(VersionError, match="not a persona model version"):
            parse_version(bad)


def test_the_sha256_is_computed_once_per_file_state(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF one")
    assert file_sha256(path) == hashlib.sha256(b"GGUF one").hexdigest()
    key = next(k for k in naming._cache if k[0] == str(path))
    naming._cache[key] = "cached"
    assert file_sha256(path) == "cached"  # same path, size and mtime: not read again
    path.write_bytes(b"GGUF two!")
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) == hashlib.sha256(b"GGUF two!").hexdigest()
    link = tmp_path / "current.gguf"
    link.symlink_to(path.name)
    assert file_sha256(link) == file_sha256(path)  # the file behind the link


def test_the_modelfile_reader_takes_the_deploy_template(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "Modelfile.template").read_text().replace("@GGUF@", "./p.gguf")
    (tmp_path / "Modelfile").write_text(text)
    (tmp_path / "p.gguf").write_bytes(b"GGUF")
    gguf, modelfile = find_source(tmp_path)
    assert gguf == tmp_path / "p.gguf"
    assert modelfile is not None
    assert modelfile.template == (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )
    assert modelfile.system == "persona: Operator"
    assert modelfile.parameters == {
        "stop": ["<|im_end|>", "<|im_start|>"],
        "num_ctx": 2048,
        "temperature": 0.7,
        "num_predict": 96,
    }
    assert find_source(tmp_path / "p.gguf") == (gguf, modelfile)  # the GGUF finds it too


def test_the_modelfile_reader_takes_what_training_writes(tmp_path: Path) -> None:
    from training.config import ModelfileStage
    from training.modelfile import ChatTemplate, go_template, render

    gguf = tmp_path / "persona.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    chat = ChatTemplate(jinja="", default_system='You are "helpful".')
    cfg = ModelfileStage(system='persona: "Mabel"\nthe operator', num_predict=80)
    (tmp_path / "Modelfile").write_text(render(gguf, chat, cfg, tmp_path, "tag"))
    modelfile = read_modelfile(tmp_path / "Modelfile")
    assert modelfile.gguf.resolve() == gguf
    assert modelfile.template == go_template(chat)
    assert modelfile.system == cfg.system
    assert modelfile.parameters["num_predict"] == 80
    assert modelfile.parameters["stop"] == ["<|im_start|>", "<|im_end|>"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM llama3.2\n", "the persona model must be a .gguf file"),
        ("FROM ./p.gguf\nADAPTER ./lora.gguf\n", "ADAPTER is not supported"),
        ('FROM ./p.gguf\nSYSTEM """never closed\n', 'SYSTEM has no closing """'),
        ("SYSTEM hello\n", "no FROM line"),
        ("FROM ./missing.gguf\n", "no such GGUF file"),
    ],
)
def test_a_modelfile_it_cannot_use_is_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "Modelfile").write_text(text)
    (tmp_path / "p.gguf").write_bytes(b"GGUF")
    with pytest.raises(VersionError, match=message):
        find_source(tmp_path / "Modelfile")


async def test_the_embedded_watch_logs_the_loaded_version_and_its_sha256(tmp_path: Path) -> None:
    version = "20261201-120005-" + hashlib.sha256(b"GGUF w").hexdigest()[:12]
    (tmp_path / f"{version}.gguf").write_bytes(b"GGUF w")
    (tmp_path / "current.gguf").symlink_to(f"{version}.gguf")
    watch = LlmWatch(lambda: UP, backend="embedded", model="m", gguf=tmp_path / "current.gguf")
    assert watch().detail == "model m up"
    with capture_logs() as logs:
        await watch.run()
    [event] = [e for e in logs if e["event"] == "llm_model"]
    assert event["sha256"] == hashlib.sha256(b"GGUF w").hexdigest()
    assert event["version"] == version
    assert event["path"] == str(tmp_path / f"{version}.gguf")
    assert watch.describe()["digest"] == event["sha256"][:12]
    assert watch().detail == f"model m (version {version}) up"

    page = StatusPage(StatusSettings.model_validate({"listen": []}), checks={}, llm=watch, phone={})
    page.tick()
    assert page.snapshot()["llm"]["version"] == version
    assert f'model_version="{version}"' in page.metrics.render().decode()
    assert f"version {version}" in page.health.line  # /healthz and systemctl status


async def test_the_ollama_watch_names_the_version_the_phone_name_is_a_copy_of() -> None:
    version = "20261201-120005-3f2a9c1b0d4e"
    async with OllamaProtocolServer(models=[f"payphone-persona:{version}", "other:x"]) as server:
        server.manifests[f"payphone-persona:{version}"] = {"files": {"p.gguf": "sha256:1"}}
        server._put("payphone-persona:latest", server.manifests[f"payphone-persona:{version}"])
        watch = LlmWatch(lambda: UP, backend="ollama", model="payphone-persona", host=server.url)
        client = ollama.AsyncClient(host=server.url)
        with capture_logs() as logs:
            await watch._probe(client)
            await watch._probe(client)  # unchanged: logged once
        await client.close()
    [event] = [e for e in logs if e["event"] == "llm_model"]
    assert event["version"] == version
    assert event["digest"] == server.digest("payphone-persona")[:12]
    assert watch().detail == f"model payphone-persona (version {version}) up"
    assert watch.describe()["version"] == version
