"""What an installer gets: the systemd unit, the install scripts, the example settings.

The unit goes through `systemd-analyze verify` (any warning fails it); the scripts through
shellcheck; each script's --dry-run must print its plan and change nothing: every command that
could change the machine is shadowed on $PATH by a recorder, and the recorder's log must show
only read-only queries.
"""

from __future__ import annotations

import configparser
import hashlib
import itertools
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from payphone.config import Settings, load_settings
from tests.helpers import REPO

UNIT = REPO / "systemd" / "payphone.service"
DEPLOY = REPO / "deploy"
SCRIPTS = [DEPLOY / "pi1-install.sh", DEPLOY / "pi2-install.sh", DEPLOY / "one-pi-install.sh"]
# commands that change a machine; the scripts may only ever run them through `run`
RECORDED = [
    "apt-get",
    "useradd",
    "groupadd",
    "usermod",
    "systemctl",
    "install",
    "runuser",
    "curl",
    "nft",
    "ollama",
    "cp",
    "mv",
    "mkdir",
    "rm",
    "chown",
    "chmod",
    "ln",
    "tee",
    "env",
    "mktemp",
    "python3",
    "pip",
    "sysctl",
]
NFT_RULES = "/etc/nftables.d/payphone-ollama.nft"
READ_ONLY = {"systemctl is-active --quiet payphone.service", "ollama --version", "ollama list"}


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on the unit, with ExecStart pointing at a Python that exists."""
    unit = tmp_path / "payphone.service"
    unit.write_text(unit_text.replace("/opt/payphone/.venv/bin/python", sys.executable))
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze (apt package systemd)"
)
def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""

    broken = verify(
        UNIT.read_text().replace("WatchdogSec=30s", "WatchdogSec=half a minute"), tmp_path
    )
    assert "Failed to parse sec value" in broken.stderr  # the check can fail


def test_the_unit_asks_systemd_for_what_the_service_needs() -> None:
    lines = set(UNIT.read_text().splitlines())
    for wanted in (
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=always",
        "RestartSec=5",
        "StartLimitIntervalSec=0",
        "SyslogIdentifier=payphone",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=10",
        "User=payphone",
        "SupplementaryGroups=audio gpio",
        "DevicePolicy=closed",
        "DeviceAllow=char-alsa rw",
        "DeviceAllow=/dev/snd rw",
        "DeviceAllow=char-gpiochip rw",
        "ProtectSystem=strict",
        "StateDirectory=payphone",
        "CacheDirectory=payphone",
        "LogsDirectory=payphone",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "Wants=network-online.target sound.target",
        "After=network-online.target sound.target",
        "Environment=PAYPHONE_CONFIG=/etc/payphone/payphone.toml",
        "ExecStart=/opt/payphone/.venv/bin/python -m payphone run",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert wanted in lines, wanted
    assert not any(line.startswith("PrivateDevices") for line in lines)  # would hide /dev/snd


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck (apt: shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_are_shellcheck_clean(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
    head = script.read_text().splitlines()
    assert head[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in head


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """$PATH with every state-changing command replaced by one that logs and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ran.log"
    log.touch()
    for name in RECORDED:
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 1\n')
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, log


def dry_run(
    env: dict[str, str], script: Path, *args: str, root: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The script's --dry-run; `root` stands in for / where it looks at installed files."""
    if root is not None:
        env = {**env, "PAYPHONE_INSTALL_ROOT": str(root)}
    return subprocess.run(
        ["bash", str(script), "--dry-run", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )


def changed(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line not in READ_ONLY]


def plan(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "dry run, nothing changes" in result.stderr
    # the shell-quoted commands, read back as plain words
    return re.sub(r"\\(.)", r"\1", result.stdout)


def test_pi1_dry_run_prints_the_plan_and_changes_nothing(
    recorder: tuple[dict[str, str], Path],
) -> None:
    env, log = recorder
    out = plan(dry_run(env, DEPLOY / "pi1-install.sh", "--ollama-host", "http://10.0.0.2:11434"))

    assert changed(log) == []
    if not Path("/etc/payphone/payphone.toml").exists():
        assert "/etc/payphone/payphone.toml" in out
        assert 'ollama_host = "http://10.0.0.2:11434"' in out  # the settings line it would set
    for step in (
        f"-m pip install --disable-pip-version-check -q --only-binary=lgpio {REPO}[pi]",
        "-m payphone models --download",
        "systemctl enable payphone.service",
        "systemctl start payphone.service",
        "-m payphone doctor",
    ):
        assert step in out, f"{step!r} not in the plan:\n{out}"
    if not Path("/etc/systemd/system/payphone.service").exists():
        assert f"install -m 0644 {REPO}/systemd/payphone.service" in out


def test_one_pi_dry_run_installs_the_embedded_model(
    recorder: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = recorder
    gguf = tmp_path / "persona.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    out = plan(dry_run(env, DEPLOY / "one-pi-install.sh", "--gguf", str(gguf)))

    assert changed(log) == []
    assert f"{REPO}[pi,embedded]" in out
    # a new version beside the previous ones, not a copy over the one the service loads
    assert (
        "/opt/payphone/.venv/bin/python -m payphone model install --dir "
        f"/var/lib/payphone/models/persona --no-restart {gguf}" in out
    )
    if not Path("/etc/payphone/payphone.toml").exists():
        assert 'backend = "embedded"' in out


@pytest.fixture
def modelfile(tmp_path: Path) -> Path:
    """A persona Modelfile for Pi #2, beside the GGUF it names."""
    path = tmp_path / "Modelfile"
    path.write_text("FROM ./persona.gguf\n")
    (tmp_path / "persona.gguf").write_bytes(b"GGUF persona")
    return path


def test_pi2_dry_run_plans_ollama_firewall_and_model(
    recorder: tuple[dict[str, str], Path], tmp_path: Path, modelfile: Path
) -> None:
    env, log = recorder
    out = plan(
        dry_run(
            env,
            DEPLOY / "pi2-install.sh",
            "--listen",
            "10.0.0.2",
            "--pi1",
            "10.0.0.1",
            "payphone-persona",
            str(modelfile),
        )
    )

    assert changed(log) == []
    assert 'Environment="OLLAMA_HOST=10.0.0.2:11434"' in out
    assert 'Environment="OLLAMA_KEEP_ALIVE=-1"' in out
    assert "tcp dport 11434 ip saddr 10.0.0.1 accept" in out
    assert "tcp dport 11434 counter drop" in out
    assert f"nft -f {NFT_RULES}" in out
    version = re.search(
        rf"env -C {tmp_path} OLLAMA_HOST=http://10.0.0.2:11434 ollama create "
        rf"payphone-persona:(\S+) -f {modelfile}$",
        out,
        re.M,
    )
    assert version is not None, out
    sha = hashlib.sha256((tmp_path / "persona.gguf").read_bytes()).hexdigest()
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{sha[:12]}", version[1])  # date, time, the GGUF's
    # the phone's name is a copy of the version, which stays for a rollback
    assert (
        f"env OLLAMA_HOST=http://10.0.0.2:11434 ollama cp payphone-persona:{version[1]} "
        "payphone-persona\n" in out
    )


def test_pi2_fills_the_modelfile_template_for_a_bare_gguf(
    recorder: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = recorder
    gguf = tmp_path / "persona.gguf"
    gguf.write_bytes(b"GGUF")
    out = plan(dry_run(env, DEPLOY / "pi2-install.sh", "payphone-persona", str(gguf)))

    assert changed(log) == []
    assert "    | FROM ./persona.gguf" in out
    assert "-f " + str(tmp_path / "Modelfile.payphone") in out


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("pi2-install.sh", [], "need NAME and MODELFILE"),
        ("pi2-install.sh", ["bad name!", "/etc/hostname"], "NAME bad name!: use letters"),
        ("pi2-install.sh", ["persona", "/no/Modelfile"], "/no/Modelfile: no such file"),
        (
            "pi2-install.sh",
            ["payphone-persona:20261201-183855-3f2a9c1b0d4e", "/etc/hostname"],
            "names one version: give the name the phone uses (e.g. payphone-persona)",
        ),
        ("pi2-install.sh", ["--pi1", "pi-one", "p", "/etc/hostname"], "not an IPv4 address"),
        ("pi1-install.sh", ["--gguf", "/etc/hostname"], "--gguf is for --one-pi"),
        ("pi1-install.sh", ["--frobnicate"], "unknown argument: --frobnicate"),
    ],
)
def test_bad_arguments_stop_before_anything_happens(
    recorder: tuple[dict[str, str], Path], script: str, args: list[str], message: str
) -> None:
    env, log = recorder
    result = dry_run(env, DEPLOY / script, *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert log.read_text() == ""


def test_the_example_settings_are_valid_and_document_every_setting() -> None:
    example = DEPLOY / "payphone.toml.example"
    settings = load_settings(example)
    assert settings.llm.backend == "ollama"  # what pi1-install.sh edits: active lines in [llm]
    assert tomllib.loads(example.read_text())["llm"]["ollama_model"] == "payphone-persona"

    sections: dict[str, str] = {}
    preamble, *blocks = re.split(r"^\[", example.read_text(), flags=re.M)
    for block in blocks:
        name, _, body = block.partition("]")
        sections[name] = body
    groups = {k: f for k, f in Settings.model_fields.items() if k != "phone_id"}
    assert list(sections) == list(groups)
    assert re.search(r"^(# )?phone_id = ", preamble, re.M)  # top-level: before any table
    for group, field in groups.items():
        model = field.annotation
        assert model is not None
        for key in model.model_fields:  # type: ignore[union-attr]
            assert re.search(rf"^(# )?{key} = ", sections[group], re.M), f"[{group}] {key}"


def test_the_modelfile_template_has_the_gguf_placeholder() -> None:
    text = (DEPLOY / "Modelfile.template").read_text()
    assert "FROM @GGUF@" in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def written(out: str, path: str) -> str:
    """The content a dry run would write to `path` (printed as `    | line` under its header)."""
    block = out.split(f"[dry-run] write {path} (mode ")[1].split("\n", 1)[1]
    lines = itertools.takewhile(lambda line: line.startswith("    |"), block.splitlines())
    return "\n".join(line[6:] for line in lines) + "\n"


@pytest.mark.skipif(shutil.which("nft") is None, reason="no nft (apt package nftables)")
def test_pi2_firewall_rules_pass_nft_check(
    recorder: tuple[dict[str, str], Path], modelfile: Path
) -> None:
    """`nft -c` parses and checks the ruleset without loading it; a typo fails the check."""
    env, _ = recorder
    args = ["--pi1", "10.0.0.1", "payphone-persona", str(modelfile)]
    rules = written(plan(dry_run(env, DEPLOY / "pi2-install.sh", *args)), NFT_RULES)

    def check(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, timeout=30
        )

    result = check(rules)
    if "Operation not permitted" in result.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert result.returncode == 0, f"{result.stderr}\n{rules}"
    assert "ip saddr 10.0.0.1 accept" in rules
    assert check(rules.replace("counter drop", "counter dorp")).returncode != 0


# -- what a real Pi hits on day one (issue 15) --------------------------------------------------

STATE = "/var/lib/payphone"
PERSONA_GGUF = f"{STATE}/models/persona/current.gguf"


def plan_lines(out: str) -> list[str]:
    return [line.removeprefix("[dry-run] ") for line in out.splitlines()]


def first_index(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines) if fragment in line)


def test_one_pi_gguf_leaves_the_model_folders_to_the_service_user(
    recorder: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    """`models --download` runs as payphone: models/ must be payphone's before it runs (an
    `install -D` of the GGUF made it root's, and the download could not make models/whisper)."""
    env, log = recorder
    gguf = tmp_path / "persona.gguf"
    gguf.write_bytes(b"GGUF")
    out = plan(dry_run(env, DEPLOY / "one-pi-install.sh", "--gguf", str(gguf), root=tmp_path))
    lines = plan_lines(out)

    assert changed(log) == []
    assert not [line for line in lines if line.startswith("install -D") and STATE in line]
    owned = "install -d -o payphone -g payphone -m 0750 "
    if not Path(STATE).exists():
        for folder in (STATE, f"{STATE}/models", f"{STATE}/models/gguf", f"{STATE}/models/persona"):
            assert owned + folder in lines, out
    model = first_index(lines, f"-m payphone model install --dir {STATE}/models/persona")
    download = first_index(lines, "-m payphone models --download")
    folders = [i for i, line in enumerate(lines) if line.startswith(owned)]
    assert all(i < model < download for i in folders)


ONE_PI_BEFORE = """\
# an earlier one-Pi install: the demo model, and the operator's own sound card
[audio]
input_device = "USB"

[llm]
backend = "embedded"
# For the embedded backend: a GGUF path, a demo name, or hf:OWNER/REPO/FILE.gguf.
# gguf = "SmolLM2-135M-Instruct"
gguf = "SmolLM2-135M-Instruct"
"""


def test_a_new_gguf_updates_the_existing_settings_and_keeps_a_backup(
    recorder: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = recorder
    installed = tmp_path / "etc" / "payphone" / "payphone.toml"
    installed.parent.mkdir(parents=True)
    installed.write_text(ONE_PI_BEFORE)
    gguf = tmp_path / "persona-v2.gguf"
    gguf.write_bytes(b"GGUF")
    result = dry_run(env, DEPLOY / "one-pi-install.sh", "--gguf", str(gguf), root=tmp_path)
    out = plan(result)

    assert changed(log) == []
    assert f"updating {installed} (the previous version is kept as {installed}.bak-" in (
        result.stderr
    )
    assert f'+gguf = "{PERSONA_GGUF}"' in result.stderr  # the change, shown as a diff
    assert re.search(
        rf"^\[dry-run\] cp -p {installed} {installed}\.bak-\d{{8}}-\d{{6}}$", out, re.M
    )
    new = tmp_path / "new.toml"
    new.write_text(written(out, str(installed)))
    settings = load_settings(new)
    assert settings.llm.backend == "embedded"
    assert settings.llm.gguf == PERSONA_GGUF  # the service now loads the new model
    assert settings.audio.input_device == "USB"  # the operator's own settings stay
    assert "# an earlier one-Pi install" in new.read_text()
    assert '# gguf = "SmolLM2-135M-Instruct"' in new.read_text()  # the active line was changed

    installed.write_text(new.read_text())  # a second run with the same model changes nothing
    again = dry_run(env, DEPLOY / "one-pi-install.sh", "--gguf", str(gguf), root=tmp_path)
    assert "already says what this install needs, kept as it is" in again.stderr
    assert f"cp -p {installed}" not in plan(again)


def test_doctor_by_hand_finds_the_models_where_the_service_keeps_them(
    recorder: tuple[dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sudo -u payphone ... doctor` has no $STATE_DIRECTORY (systemd sets it for the service
    only): the installed settings file must name the models folder for both."""
    env, _ = recorder
    out = plan(dry_run(env, DEPLOY / "pi1-install.sh", root=tmp_path))
    settings_file = tmp_path / "payphone.toml"
    settings_file.write_text(written(out, str(tmp_path / "etc/payphone/payphone.toml")))
    monkeypatch.delenv("PAYPHONE_MODELS__DIR")  # the test suite's own
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)  # doctor, run by hand
    by_hand = load_settings(settings_file).models.dir
    monkeypatch.setenv("STATE_DIRECTORY", STATE)  # the unit's StateDirectory=payphone
    service = load_settings(settings_file).models.dir

    assert by_hand == service == Path(f"{STATE}/models")


def test_pi1_installs_what_pyaudio_builds_with_and_takes_lgpio_as_a_wheel(
    recorder: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _ = recorder
    nothing_installed = env["PATH"].split(":")[0] + "/dpkg-query"
    Path(nothing_installed).write_text("#!/bin/sh\nexit 1\n")
    Path(nothing_installed).chmod(0o755)
    out = plan(dry_run(env, DEPLOY / "pi1-install.sh", root=tmp_path))

    [apt] = [line for line in plan_lines(out) if " apt-get install " in line]
    wanted = apt.split("--no-install-recommends ")[1].split()
    assert {"build-essential", "python3-dev", "portaudio19-dev"} <= set(wanted)
    assert "liblgpio-dev" not in wanted  # not in Debian bookworm: apt-get would stop here
    assert "swig" not in wanted
    assert f"--only-binary=lgpio {REPO}[pi]" in out


def test_ollama_waits_for_the_network_in_unit_and_binds_before_the_link_is_up(
    recorder: tuple[dict[str, str], Path], modelfile: Path, tmp_path: Path
) -> None:
    env, log = recorder
    out = plan(dry_run(env, DEPLOY / "pi2-install.sh", "payphone-persona", str(modelfile)))
    drop_in = written(out, "/etc/systemd/system/ollama.service.d/payphone.conf")

    assert changed(log) == []
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(drop_in)
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert "After" not in unit["Service"]
    assert "Wants" not in unit["Service"]
    sysctl = written(out, "/etc/sysctl.d/60-payphone-ollama.conf")
    assert "net.ipv4.ip_nonlocal_bind = 1" in sysctl.splitlines()
    assert "sysctl -q -p /etc/sysctl.d/60-payphone-ollama.conf" in out
    lines = plan_lines(out)
    assert first_index(lines, "sysctl -q -p") < first_index(lines, "restart ollama.service")

    if shutil.which("systemd-analyze") is None:
        return
    # the drop-in on a stand-in for the ollama.service that Ollama's installer writes
    (tmp_path / "ollama.service").write_text(
        f"[Unit]\nDescription=Ollama\n[Service]\nExecStart={sys.executable} -c pass\n"
        "[Install]\nWantedBy=default.target\n"
    )
    (tmp_path / "ollama.service.d").mkdir()
    (tmp_path / "ollama.service.d" / "payphone.conf").write_text(drop_in)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "ollama.service")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze (apt package systemd)"
)
def test_the_unit_uses_no_restart_back_off_bookworm_lacks(tmp_path: Path) -> None:
    """The unit's comment says systemd 252 has no RestartSteps=: on such a systemd, prove it."""
    version = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    ).stdout
    text = UNIT.read_text()
    keys = [line.split("=")[0] for line in text.splitlines() if not line.startswith("#")]
    assert not {"RestartSteps", "RestartMaxDelaySec", "StartLimitBurst"} & set(keys)
    if int(version.split()[1]) >= 254:
        pytest.skip(f"systemd {version.split()[1]} has RestartSteps=")
    stepped = text.replace("RestartSec=5\n", "RestartSec=5\nRestartSteps=5\n")
    assert "Unknown key 'RestartSteps'" in verify(stepped, tmp_path).stderr
