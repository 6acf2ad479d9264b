"""Persona model versions: install keeps the previous one, rollback is one command, a dry run
changes nothing, bad input stops before anything changes.

The one-Pi store runs on a temporary folder; the Pi #2 store through the real `ollama` client
against the Ollama protocol server (blobs, create, copy, delete, tags as Ollama speaks them).
The command line runs in-process (typer's runner) in a worker thread, so the server keeps
answering on the test's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from payphone.cli import app
from payphone.versions.naming import is_version
from tests.helpers import REPO
from tests.support.ollama_server import OllamaProtocolServer

STABLE = "payphone-persona:latest"


def model(*args: str) -> Result:
    return CliRunner().invoke(app, ["model", *args])


def refused(result: Result, message: str) -> None:
    """Exit 2, one line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr


def gguf(folder: Path, name: str, body: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"GGUF" + body)
    return path


def training_output(root: Path, body: bytes) -> Path:
    """What `python -m training` leaves in out/model: the GGUF and a Modelfile that FROMs it."""
    out = root / "model"
    gguf(out, "persona.Q4_K_M.gguf", body)
    template = (REPO / "deploy" / "Modelfile.template").read_text()
    (out / "Modelfile").write_text(template.replace("@GGUF@", "./persona.Q4_K_M.gguf"))
    return out


def tree(folder: Path) -> dict[str, str]:
    """Every entry: a link's target or a file's sha256, to compare before and after."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def current(store: Path) -> str:
    return Path(os.readlink(store / "current.gguf")).stem


def versions(store: Path) -> list[str]:
    return sorted(p.stem for p in store.glob("*.gguf") if not p.is_symlink())


# -- one Pi: a folder of versions and current.gguf ----------------------------------------------


def test_one_pi_install_keeps_the_previous_and_rollback_returns_to_it(tmp_path: Path) -> None:
    store = tmp_path / "persona"
    first = gguf(tmp_path / "in", "first.gguf", b"one")
    second = gguf(tmp_path / "in", "second.gguf", b"two")

    for source in (first, second):
        result = model("install", "--dir", str(store), "--no-restart", str(source))
        assert result.exit_code == 0, result.output
    old, new = versions(store)
    assert all(is_version(v) for v in (old, new))
    assert new.endswith(hashlib.sha256(second.read_bytes()).hexdigest()[:12])
    assert current(store) == new
    assert (store / f"{old}.gguf").read_bytes() == first.read_bytes()  # the previous is kept
    assert (store / "current.gguf").read_bytes() == second.read_bytes()

    result = model("rollback", "--dir", str(store), "--no-restart")
    assert result.exit_code == 0, result.output
    assert current(store) == old
    assert f"current version: {old}" in result.stdout

    before = tree(store)
    refused(
        model("rollback", "--dir", str(store), "--no-restart"),
        f"no version before {old} in {store}: nothing to roll back to",
    )
    assert tree(store) == before

    result = model("switch", "--dir", str(store), "--no-restart", new)  # and forward again
    assert result.exit_code == 0, result.output
    assert current(store) == new


def test_one_pi_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "persona"
    first = gguf(tmp_path / "in", "first.gguf", b"one")
    assert model("install", "--dir", str(store), "--no-restart", str(first)).exit_code == 0
    before = tree(store)

    second = gguf(tmp_path / "in", "second.gguf", b"two")
    result = model("install", "--dir", str(store), "--dry-run", str(second))
    assert result.exit_code == 0, result.output
    assert tree(store) == before
    lines = result.stdout.splitlines()
    assert lines[0] == f"dry run, nothing changes ({store})"
    copy = next(line for line in lines if line.startswith(f"[dry-run] copy {second} -> {store}/"))
    version = Path(copy.rsplit(" ", 1)[1]).stem
    assert is_version(version)
    assert f"[dry-run] point {store}/current.gguf -> {version}.gguf" in lines
    assert "[dry-run] systemctl try-restart payphone.service" in lines  # restarts by default

    result = model("rollback", "--dir", str(store), "--dry-run")
    refused(result, "nothing to roll back to")  # one version only: refused in a dry run too
    assert tree(store) == before


def test_one_pi_same_gguf_is_not_stored_twice_and_old_versions_are_pruned(
    tmp_path: Path,
) -> None:
    store = tmp_path / "persona"
    sources = [gguf(tmp_path / "in", f"{i}.gguf", str(i).encode()) for i in range(4)]
    for source in sources[:3]:
        assert model("install", "--dir", str(store), "--no-restart", str(source)).exit_code == 0
    three = versions(store)

    again = model("install", "--dir", str(store), "--no-restart", str(sources[2]))
    assert again.exit_code == 0, again.output
    assert "is already version" in again.stdout
    assert versions(store) == three

    result = model("install", "--dir", str(store), "--no-restart", "--keep", "3", str(sources[3]))
    assert result.exit_code == 0, result.output
    assert f"delete {store}/{three[0]}.gguf" in result.stdout
    assert versions(store)[:2] == three[1:]  # the oldest went; the previous is still there
    assert len(versions(store)) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["switch", "latest-and-greatest"], "'latest-and-greatest' is not a persona model version"),
        (["switch", "20261201-183855-3f2a9c1b0d4e"], "version 20261201-183855-3f2a9c1b0d4e is not"),
        (["install", "/no/such/persona.gguf"], "/no/such/persona.gguf: no such file"),
        (["install", "NOT_GGUF"], "not a GGUF file (it does not start with 'GGUF')"),
        (["install", "ZIP"], "neither a GGUF file nor a Modelfile"),
        (["install", "--keep", "1", "GGUF"], "--keep 1: keep at least 2"),
        (["rollback"], "no current version in"),
    ],
)
def test_one_pi_bad_input_names_the_problem_and_changes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    store = tmp_path / "persona"
    store.mkdir()
    files = {"NOT_GGUF": "persona.gguf", "ZIP": "persona.zip", "GGUF": "fine.gguf"}
    (tmp_path / files["NOT_GGUF"]).write_bytes(b"PK\x03\x04 a zip")
    (tmp_path / files["ZIP"]).write_bytes(b"PK\x03\x04\xff\xfe a zip")
    gguf(tmp_path, files["GGUF"], b"fine")
    args = [str(tmp_path / files[a]) if a in files else a for a in args]
    refused(model(*args[:1], "--dir", str(store), "--no-restart", *args[1:]), message)
    assert tree(store) == {}


def test_the_settings_choose_the_one_pi_store_and_say_when_the_service_loads_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYPHONE_LLM__BACKEND", "embedded")
    monkeypatch.setenv("PAYPHONE_LLM__GGUF", "SmolLM2-135M-Instruct")
    source = gguf(tmp_path / "in", "p.gguf", b"x")
    result = model("install", "--no-restart", str(source))
    assert result.exit_code == 0, result.output
    store = tmp_path / "models" / "persona"  # <models.dir>/persona
    assert current(store) == versions(store)[0]
    assert f'set llm.gguf = "{store}/current.gguf"' in result.stderr

    monkeypatch.setenv("PAYPHONE_LLM__GGUF", str(store / "current.gguf"))
    listed = model("list")
    assert listed.exit_code == 0
    assert f" * {versions(store)[0]}" in listed.stdout
    assert listed.stderr == ""


# -- Pi #2: Ollama models payphone-persona:<version>, the phone's name a copy of one ------------


async def run_model(*args: str) -> Result:
    return await asyncio.to_thread(model, *args)


def ollama_versions(server: OllamaProtocolServer) -> list[str]:
    return sorted(m.split(":")[1] for m in server.models if is_version(m.split(":")[1]))


async def test_pi2_install_creates_a_version_switches_the_phone_and_rolls_back(
    tmp_path: Path,
) -> None:
    one = training_output(tmp_path / "one", b"first weights")
    two = training_output(tmp_path / "two", b"second weights")
    async with OllamaProtocolServer(models=[]) as server:
        result = await run_model("install", "--host", server.url, "--no-restart", str(one))
        assert result.exit_code == 0, result.output
        [first] = ollama_versions(server)
        assert server.digest(STABLE) == server.digest(f"payphone-persona:{first}")
        data = (one / "persona.Q4_K_M.gguf").read_bytes()
        assert server.blobs == {f"sha256:{hashlib.sha256(data).hexdigest()}": data}
        created = server.created[0]
        assert created["model"] == f"payphone-persona:{first}"
        assert list(created["files"]) == ["persona.Q4_K_M.gguf"]
        assert created["template"].startswith("{{- range .Messages }}")
        assert created["system"] == "persona: Operator"
        assert created["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]
        assert created["parameters"]["num_ctx"] == 2048
        assert [c.messages for c in server.chats if c.model == STABLE] == [[]]  # loaded

        result = await run_model("install", "--host", server.url, "--no-restart", str(two))
        assert result.exit_code == 0, result.output
        second = ollama_versions(server)[1]
        assert ollama_versions(server) == [first, second]  # the previous one is kept
        assert server.digest(STABLE) == server.digest(f"payphone-persona:{second}")

        listed = await run_model("list", "--host", server.url)
        assert f" * {second}" in listed.stdout
        assert f"   {first}" in listed.stdout

        result = await run_model("rollback", "--host", server.url, "--no-restart")
        assert result.exit_code == 0, result.output
        assert f"ollama cp payphone-persona:{first} {STABLE}" in result.stdout
        assert server.digest(STABLE) == server.digest(f"payphone-persona:{first}")

        refused(
            await run_model("rollback", "--host", server.url, "--no-restart"),
            f"no version before {first} in Ollama at {server.url}",
        )


async def test_pi2_dry_run_only_reads_and_prints_every_step(tmp_path: Path) -> None:
    source = training_output(tmp_path, b"weights")
    async with OllamaProtocolServer() as server:  # the phone's model, made by pi2-install.sh
        before = dict(server.manifests)
        result = await run_model("install", "--host", server.url, "--dry-run", str(source))
        assert result.exit_code == 0, result.output
        assert set(server.requests) == {"/api/tags", "/api/show"}  # reads only
        assert server.manifests == before
        assert server.blobs == {}
        out = result.stdout
        assert f"[dry-run] upload {source}/persona.Q4_K_M.gguf" in out
        assert "[dry-run] ollama create payphone-persona:" in out
        assert "[dry-run] ollama cp payphone-persona:" in out
        assert f"[dry-run] load {STABLE} on {server.url}" in out
        assert "[dry-run] systemctl try-restart payphone.service" in out


async def test_pi2_keeps_the_newest_versions_and_deletes_older_ones(tmp_path: Path) -> None:
    sources = [training_output(tmp_path / str(i), str(i).encode()) for i in range(3)]
    async with OllamaProtocolServer(models=[]) as server:
        for source in sources:
            result = await run_model(
                "install", "--host", server.url, "--no-restart", "--keep", "2", str(source)
            )
            assert result.exit_code == 0, result.output
        kept = ollama_versions(server)
        assert len(kept) == 2
        assert "/api/delete" in server.requests
        assert server.digest(STABLE) == server.digest(f"payphone-persona:{kept[1]}")


async def test_pi2_refuses_what_it_cannot_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = gguf(tmp_path, "persona.gguf", b"weights")  # no Modelfile beside it
    async with OllamaProtocolServer(models=[]) as server:
        refused(
            await run_model("install", "--host", server.url, str(bare)),
            "Ollama needs the Modelfile too",
        )
        monkeypatch.setenv(
            "PAYPHONE_LLM__OLLAMA_MODEL", "payphone-persona:20261201-183855-aaaaaaaaaaaa"
        )
        refused(
            await run_model("rollback", "--host", server.url),
            "names one version, so switching could never change what the phone uses",
        )
        assert server.models == []
        assert server.blobs == {}


async def test_pi2_unreachable_is_one_line_and_exit_1(tmp_path: Path) -> None:
    from tests.support.ollama_server import free_port

    result = await run_model("list", "--host", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "cannot reach Ollama at" in result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_run_as_root_the_new_files_belong_to_the_folders_owner(tmp_path: Path) -> None:
    """The installer runs it as root; the service (user payphone) must own what it loads."""
    store = tmp_path / "persona"
    store.mkdir()
    os.chown(store, 65534, 65534)  # the service user's folder
    source = gguf(tmp_path / "in", "p.gguf", b"x")
    assert model("install", "--dir", str(store), "--no-restart", str(source)).exit_code == 0
    [version] = versions(store)
    for path in (store / f"{version}.gguf", store / "current.gguf"):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (65534, 65534), path
    assert (store / f"{version}.gguf").stat().st_mode & 0o777 == 0o640


async def test_pi2_keeps_the_model_made_before_versions_so_rollback_returns_to_it(
    tmp_path: Path,
) -> None:
    """An earlier pi2-install.sh made plain `payphone-persona`: the first install keeps it as a
    version of the GGUF it holds (read from `ollama show`) before replacing it."""
    old = b"GGUF weights of old"
    digest = f"sha256:{hashlib.sha256(old).hexdigest()}"
    source = training_output(tmp_path, b"new weights")
    async with OllamaProtocolServer(models=[]) as server:
        server.blobs[digest] = old
        server._put(STABLE, {"files": {"old.gguf": digest}, "template": None})
        before = server.digest(STABLE)

        result = await run_model("install", "--host", server.url, "--no-restart", str(source))
        assert result.exit_code == 0, result.output
        kept, new = ollama_versions(server)
        assert kept.endswith(digest[7:19])  # named after the GGUF it holds
        assert server.digest(STABLE) == server.digest(f"payphone-persona:{new}")
        assert server.digest(f"payphone-persona:{kept}") == before
        assert f"ollama cp {STABLE} payphone-persona:{kept}" in result.stdout

        result = await run_model("rollback", "--host", server.url, "--no-restart")
        assert result.exit_code == 0, result.output
        assert server.digest(STABLE) == before


@pytest.mark.parametrize("works", [True, False], ids=["restarted", "restart-failed"])
def test_a_switch_restarts_the_phone_and_a_failed_restart_only_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, works: bool
) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    shim = bin_dir / "systemctl"
    shim.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        + ("exit 0\n" if works else 'echo "Access denied" >&2\nexit 4\n')
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    store = tmp_path / "persona"
    result = model("install", "--dir", str(store), str(gguf(tmp_path / "in", "p.gguf", b"x")))
    assert result.exit_code == 0, result.output  # the version is switched either way
    assert log.read_text() == "try-restart payphone.service\n"
    assert ("could not restart the phone (Access denied)" in result.stdout) is not works
    assert current(store) == versions(store)[0]
