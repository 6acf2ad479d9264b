"""`payphone doctor` on a healthy stand-in install, and on each way an install can be broken.

Healthy means: the demo models, gpiozero's mock pins, ALSA `null` devices from a private ALSA
configuration (read by the audio probe's child process), and a local server speaking Ollama's
protocol. Whole runs go through `python -m payphone.doctor check` in a child process, as an
operator runs it; single checks are called directly with one thing broken at a time.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Button, Device
from gpiozero.pins.mock import MockFactory

from payphone import doctor as doctor_module
from payphone.config import AudioSettings, Settings, load_settings
from payphone.doctor import (
    Check,
    check_audio,
    check_gpio,
    check_models,
    check_ollama,
    check_personas,
    check_sound_cards,
    exit_code,
    format_check,
    guarded,
)
from tests.helpers import REPO
from tests.support.ollama_server import OllamaProtocolServer, free_port
from tests.voice_fixtures import stage_production_voices

NULL_ALSA = """
pcm.payphone_mic { type null }
pcm.payphone_ear { type null }
pcm.default { type null }
"""
# this checkout's app first: the venv's editable install may point at another checkout
PATHS = (REPO / "payphone-app", REPO)
needs_alsa = pytest.mark.skipif(
    ctypes.util.find_library("asound") is None, reason="no ALSA library (libasound2) here"
)


@pytest.fixture
def null_alsa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private ALSA config with null devices; the environment a healthy rig runs with."""
    conf = tmp_path / "asound.conf"
    conf.write_text(NULL_ALSA)
    env = {
        "ALSA_CONFIG_PATH": str(conf),
        "GPIOZERO_PIN_FACTORY": "mock",
        "PAYPHONE_AUDIO__INPUT_DEVICE": "payphone_mic",
        "PAYPHONE_AUDIO__OUTPUT_DEVICE": "payphone_ear",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def downloaded_voices() -> list[Path]:
    """The personas' production voices in models.dir, as `models --download` leaves them."""
    return stage_production_voices(load_settings())


@pytest.fixture
def mock_pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    factory = MockFactory()
    monkeypatch.setattr(Device, "pin_factory", factory)
    yield factory
    factory.reset()


async def doctor(*args: str, **env: str) -> tuple[int, str]:
    """Run the whole doctor as an operator would; never a traceback."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "payphone.doctor",
        "check",
        *args,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, PATHS)), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode() + err.decode()
    assert "Traceback" not in text, text
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def problems(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("WARN", "FAIL"))]


def settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"PAYPHONE_{name}", value)
    return load_settings()


# -- whole runs -------------------------------------------------------------------------------


@needs_alsa
@pytest.mark.models
async def test_a_healthy_one_pi_install_passes_every_check(
    null_alsa: dict[str, str], downloaded_voices: list[Path]
) -> None:
    async with OllamaProtocolServer() as server:
        code, out = await doctor(PAYPHONE_LLM__OLLAMA_HOST=server.url)

    assert code == 0, out
    assert problems(out) == [], out
    for expected in (
        "ok    settings: valid",
        "ok    personas: 4 loaded: 0=operator",
        "ok    audio input: 'payphone_mic' opens at 48000 Hz mono 16-bit",
        "ok    audio output: 'payphone_ear' opens at 48000 Hz mono 16-bit",
        "ok    gpio: MockFactory: pins free (hook.pin=[17])",
        "ok    model stt.model: 'tiny.en' -> ",
        "ok    model tts.voice: 'en_US-joe-medium' -> ",
        "ok    voice 2=grandma_mae: en_US-kathleen-low x1.15 + elderly (production voice)",
        "ok    model voice.model: 'en_US-kathleen-low' -> ",
        "ok    model llm.gguf: 'SmolLM2-135M-Instruct' -> ",
        "GGUF v3, vocabulary loads",
        f"ok    ollama (not used: llm.backend = embedded): {server.url} answers",
        "model payphone-persona present",
        "round trip",
        "doctor: healthy (0 failed, 0 warnings)",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "/api/tags" in server.requests
    assert [chat.options.get("num_predict") for chat in server.chats] == [1]


@needs_alsa
@pytest.mark.models
async def test_a_two_pi_install_checks_ollama_and_needs_no_gguf(
    null_alsa: dict[str, str], downloaded_voices: list[Path]
) -> None:
    async with OllamaProtocolServer() as server:
        code, out = await doctor(
            PAYPHONE_LLM__BACKEND="ollama", PAYPHONE_LLM__OLLAMA_HOST=server.url
        )

    assert code == 0, out
    assert problems(out) == [], out
    assert f"ok    ollama: {server.url} answers; 1 model(s)" in out
    assert "not needed: llm.backend = ollama" in out


async def test_a_bad_setting_fails_and_stops_there(tmp_path: Path) -> None:
    config = tmp_path / "payphone.toml"
    config.write_text("[vad]\naggressiveness = 9\n")
    code, out = await doctor("-c", str(config))

    assert code == 1
    assert problems(out) == [
        f"FAIL  settings: [vad] aggressiveness (in {config}): 9 is not valid "
        "(Input should be less than or equal to 3); allowed: an integer from 0 to 3"
    ], out
    assert "fix: edit the setting named" in out
    assert "audio" not in out  # nothing else can be checked without settings


@needs_alsa
async def test_ollama_down_fails_a_two_pi_install(null_alsa: dict[str, str]) -> None:
    code, out = await doctor(
        PAYPHONE_LLM__BACKEND="ollama",
        PAYPHONE_LLM__OLLAMA_HOST=f"http://127.0.0.1:{free_port()}",
        PAYPHONE_STT__MODEL="/nowhere/whisper",  # and a second failure, reported too
    )

    assert code == 1
    failed = [line for line in problems(out) if line.startswith("FAIL")]
    assert any(line.startswith("FAIL  ollama: http://127.0.0.1:") for line in failed), out
    assert any("refused" in line for line in failed), out
    assert any(line.startswith("FAIL  model stt.model") for line in failed), out
    assert "fix: start Ollama on Pi #2" in out
    assert "doctor: FAILED (2 failed" in out


# -- one check at a time ----------------------------------------------------------------------


@needs_alsa
def test_no_matching_sound_card_fails_with_the_names_there_are(
    null_alsa: dict[str, str],
) -> None:
    checks = check_audio(AudioSettings(input_device="USB Audio", output_device="payphone_ear"))

    assert [c.status for c in checks] == ["fail", "ok"]
    assert checks[0].name == "audio input"
    assert "no input device matching 'USB Audio'" in checks[0].detail
    assert "payphone_mic" in checks[0].detail  # what is there instead
    assert "audio.input_device" in checks[0].fix


@needs_alsa
def test_a_sound_card_that_cannot_open_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "broken.conf"
    # the file plugin opens its `infile` when the device opens: in a missing folder, that fails,
    # so PortAudio leaves the device out of its list, as it does with an unplugged card
    mic = 'pcm.payphone_mic { type file slave.pcm { type null } file "/dev/null" '
    mic += f'infile "{tmp_path}/unplugged/mic.raw" format "raw" }}'
    conf.write_text(NULL_ALSA.replace("pcm.payphone_mic { type null }", mic))
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    checks = check_audio(AudioSettings(input_device="payphone_mic", output_device="payphone_ear"))

    assert [c.status for c in checks] == ["fail", "ok"], checks
    assert checks[0].detail.startswith("no input device matching 'payphone_mic' (have ")
    assert "payphone_ear" in checks[0].detail
    assert "or plug the card in" in checks[0].fix


def test_gpio_with_mock_pins_passes_and_reads_the_hook(
    mock_pins: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_with(monkeypatch, KEYPAD__SOURCE="matrix", HOOK__PULL_UP="false")
    [check] = check_gpio(settings)

    assert check.status == "ok", check
    assert "keypad.row_pins=[5, 6, 13, 19]" in check.detail
    assert "the hook switch reads off-hook" in check.detail  # pulled down: contacts open


def test_gpio_pin_in_use_fails(mock_pins: MockFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = Button(17)
    try:
        [check] = check_gpio(settings_with(monkeypatch))
    finally:
        holder.close()
    assert check.status == "fail"
    assert "GPIOPinInUse" in check.detail
    assert "systemctl stop payphone" in check.fix


def test_gpio_pin_given_twice_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with(monkeypatch, KEYPAD__SOURCE="mt8870", HOOK__PIN="22")
    [check] = check_gpio(settings)

    assert check.status == "fail"
    assert check.detail == "GPIO22 is in both hook.pin and keypad.mt8870_pins"


def test_gpio_on_a_machine_without_gpio_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if Path("/dev/gpiochip0").exists():
        pytest.skip("this machine has GPIO")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(Device, "pin_factory", None)
    [check] = check_gpio(settings_with(monkeypatch))

    assert check.status == "fail"
    assert check.detail.startswith("no GPIO on this machine")
    assert "GPIOZERO_PIN_FACTORY=mock" in check.fix


@pytest.mark.models
def test_missing_and_damaged_models_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "persona.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf at all")
    settings = settings_with(monkeypatch, STT__MODEL="base.en", LLM__GGUF=str(junk))
    checks = {c.name: c for c in check_models(settings, ["en_US-joe-medium"])}

    assert checks["model stt.model"].status == "fail"
    assert "not downloaded to" in checks["model stt.model"].detail
    assert "python -m payphone models --download" in checks["model stt.model"].detail
    assert checks["model tts.voice"].status == "ok"
    assert checks["model llm.gguf"].status == "fail"
    assert "not a GGUF file" in checks["model llm.gguf"].detail


@pytest.mark.models
def test_the_turn_model_loads_and_a_broken_one_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def turn_check(**env: str) -> Check:
        settings = settings_with(monkeypatch, LLM__BACKEND="ollama", **env)
        return {c.name: c for c in check_models(settings, [])}["model turn.model"]

    check = turn_check()
    assert check.status == "ok"
    assert "'smart-turn-v3.2' -> " in check.detail
    assert "a prediction takes" in check.detail
    broken = tmp_path / "turn.onnx"
    broken.write_bytes(b"\x08\x07 not an onnx model")
    check = turn_check(TURN__MODEL=str(broken))
    assert check.status == "warn"  # the phone still works: the silence rule ends turns
    assert "does not load" in check.detail
    check = turn_check(TURN__MODEL=str(tmp_path / "gone.onnx"))
    assert check.status == "warn"
    assert "gone.onnx" in check.detail
    check = turn_check(TURN__MODEL="")
    assert check.status == "ok"
    assert "silence rule only" in check.detail


async def test_ollama_without_the_persona_model_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async with OllamaProtocolServer(models=["llama3.2:1b"]) as server:
        settings = settings_with(monkeypatch, LLM__BACKEND="ollama", LLM__OLLAMA_HOST=server.url)
        checks = await check_ollama(settings.llm)

    assert [c.status for c in checks] == ["ok", "fail"]
    assert checks[1].detail == f"{server.url}: model payphone-persona missing (has: llama3.2:1b)"
    assert "deploy/pi2-install.sh payphone-persona MODELFILE" in checks[1].fix
    assert server.chats == []  # no latency probe against a model that is not there


async def test_every_ollama_host_is_checked_and_one_down_of_two_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    async with OllamaProtocolServer(models=["payphone-persona:latest"]) as server:
        hosts = f'["{down}", "{server.url}"]'
        settings = settings_with(monkeypatch, LLM__BACKEND="ollama", LLM__OLLAMA_HOSTS=hosts)
        checks = await check_ollama(settings.llm)
        only_down = settings_with(
            monkeypatch, LLM__BACKEND="ollama", LLM__OLLAMA_HOSTS=f'["{down}"]'
        )
        [alone] = await check_ollama(only_down.llm)

    first, *rest = checks
    assert first.status == "warn" and down in first.detail and "refused" in first.detail
    assert "fail over" in first.detail
    assert [c.status for c in rest] == ["ok", "ok", "ok"]
    assert all(server.url in c.detail for c in rest)
    assert exit_code(checks) == 0
    assert alone.status == "fail" and exit_code([alone]) != 0  # no host left: the phone is down


async def test_ollama_down_is_only_a_warning_for_the_embedded_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    settings = settings_with(monkeypatch, LLM__OLLAMA_HOST=host)
    [check] = await check_ollama(settings.llm)

    assert check.status == "warn"
    assert check.name == "ollama (not used: llm.backend = embedded)"
    assert "refused" in check.detail
    assert exit_code([check]) == 0


def test_a_broken_persona_file_fails_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_dir = tmp_path / "personas"
    user_dir.mkdir()
    (user_dir / "pirate.toml").write_text('name = "Pirate Pete"\nkey = "X"\n')
    voices: list[str] = []
    checks = check_personas(settings_with(monkeypatch, PERSONAS__USER_DIR=str(user_dir)), voices)

    assert [c.status for c in checks][:2] == ["fail", "ok"]
    assert "pirate.toml" in checks[0].detail
    assert voices == ["en_US-joe-medium"]  # every persona's fallback: what the model check loads


def test_each_persona_names_its_voice_and_a_fallback_warns_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_with(monkeypatch)
    voices: list[str] = []
    checks = {c.name: c for c in check_personas(settings, voices)}
    mae = checks["voice 2=grandma_mae"]
    assert mae.status == "warn"
    assert mae.detail.startswith("fallback en_US-joe-medium x1.25 + elderly +3 st (")
    assert "en_US-kathleen-low not downloaded" in mae.detail
    fetch = "`python -m payphone models --download` as the service user fetches en_US-kathleen-low"
    assert mae.fix == fetch
    assert voices == ["en_US-joe-medium"]

    stage_production_voices(settings, ["en_US-kathleen-low"])
    voices.clear()
    checks = {c.name: c for c in check_personas(settings, voices)}
    assert checks["voice 2=grandma_mae"].status == "ok"
    production = "en_US-kathleen-low x1.15 + elderly (production voice)"
    assert checks["voice 2=grandma_mae"].detail == production
    assert checks["voice 1=detective_jones"].status == "warn"
    assert voices == ["en_US-joe-medium", "en_US-kathleen-low"]


def test_a_check_that_raises_is_a_failed_line_not_a_traceback() -> None:
    def broken() -> list[Check]:
        raise KeyError("maxInputChannels")

    [check] = guarded("audio", broken)

    assert check.status == "fail"
    assert format_check(check).startswith("FAIL  audio: KeyError: 'maxInputChannels'\n      fix:")
    assert exit_code([Check("a", "ok", ""), Check("b", "warn", "", "x")]) == 0
    assert exit_code([Check("a", "ok", ""), check]) == 1


# -- what a real Pi adds: lgpio, the running service, the ALSA default --------------------------


class LgpioError(Exception):
    """As lgpio's own `error`: not an OSError; str() is the repr of its text."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __str__(self) -> str:
        return repr(self.value)


@pytest.fixture
def busy_pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pins held by another process, as lgpio reports them: `lgpio.error('GPIO busy')`."""
    lgpio = types.ModuleType("lgpio")
    lgpio.error = LgpioError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lgpio", lgpio)

    class HeldElsewhere(MockFactory):
        def pin(self, name: Any, pin_class: Any = None, **kwargs: Any) -> Any:
            raise LgpioError("GPIO busy")

    factory = HeldElsewhere()
    monkeypatch.setattr(Device, "pin_factory", factory)
    yield
    factory.reset()


def test_gpio_held_by_the_running_service_is_said_so(
    busy_pins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_module, "service_active", lambda: True)
    [check] = check_gpio(settings_with(monkeypatch))

    assert check.status == "warn", check  # expected while the service runs: not a failure
    assert check.detail.startswith("GPIO17 (hook.pin) is in use by the running service")
    assert "sudo systemctl stop payphone" in check.fix
    print(format_check(check))


def test_gpio_held_by_another_program_fails(
    busy_pins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_module, "service_active", lambda: False)
    [check] = check_gpio(settings_with(monkeypatch))

    assert check.status == "fail"
    assert check.detail == (
        "GPIO17 (hook.pin) is busy: another program holds it (payphone.service is not running)"
    )
    assert "gpioinfo" in check.fix


@needs_alsa
@pytest.mark.models
def test_with_the_service_running_doctor_still_checks_everything_else(
    busy_pins: None, null_alsa: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_module, "service_active", lambda: True)
    monkeypatch.setenv("PAYPHONE_LLM__OLLAMA_HOST", f"http://127.0.0.1:{free_port()}")
    checks = list(doctor_module.run_checks(None))

    by_name = {c.name: c for c in checks}
    assert by_name["gpio"].status == "warn"
    assert "in use by the running service" in by_name["gpio"].detail
    assert all(c.fix != doctor_module.BUG_FIX for c in checks), checks
    for name in ("audio input", "audio output", "model stt.model", "model tts.voice"):
        assert by_name[name].status == "ok", by_name[name]
    assert exit_code(checks) == 0


FAKE_LGPIO = '''
"""Stands in for lgpio's import: its notification pipe goes in $LG_WD, else the current
directory, and the process moves there; no /dev/gpiochip here."""
import os

class error(Exception):
    def __init__(self, value):
        self.value = value
    def __str__(self):
        return repr(self.value)

_work = os.environ.get("LG_WD") or os.getcwd()
try:
    os.mkfifo(os.path.join(_work, ".lgd-nfy0"))
except OSError:
    pass  # the C library only logs this...
os.chdir(_work)
if not os.path.exists(".lgd-nfy0"):  # ...and Python's open() of the pipe then fails
    raise FileNotFoundError(2, "No such file or directory", ".lgd-nfy-3")

def gpiochip_open(chip):
    raise error("can not open gpiochip")

def __getattr__(name):  # the constants gpiozero reads (BOTH_EDGES, SET_BIAS_DISABLE, ...)
    if name.isupper():
        return 0
    raise AttributeError(name)
'''


@pytest.fixture
def fake_lgpio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gpiozero's default pin factories, lgpio first, with a stand-in lgpio on the path."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "lgpio.py").write_text(FAKE_LGPIO)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.setattr(Device, "pin_factory", None)
    for name in ("lgpio", "gpiozero.pins.lgpio"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in ("lgpio", "gpiozero.pins.lgpio"):
        sys.modules.pop(name, None)


def test_doctor_run_from_an_unwritable_directory_still_reaches_lgpio(
    fake_lgpio: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if Path("/dev/gpiochip0").exists():
        pytest.skip("this machine has GPIO")
    monkeypatch.chdir("/proc")  # no one can make a pipe here (sudo -u payphone from /root)
    [check] = check_gpio(settings_with(monkeypatch))

    assert check.status == "fail"
    # lgpio loaded (its pipe went elsewhere), and gpiozero said what is really wrong here
    assert "Falling back from lgpio: unable to locate Pi revision" in check.detail, check.detail
    assert ".lgd-nfy" not in check.detail
    assert "this is not a Raspberry Pi" in check.fix
    assert os.getcwd() == "/proc"  # lgpio moved the process; doctor moved it back
    assert "LG_WD" not in os.environ
    print(format_check(check))


def test_lgpios_own_failure_is_shown_not_hidden(
    fake_lgpio: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_WD", "/proc")  # an operator's LG_WD that cannot be written
    [check] = check_gpio(settings_with(monkeypatch))

    assert check.status == "fail"
    assert "Falling back from lgpio: [Errno 2] No such file or directory: '.lgd-nfy-3'" in (
        check.detail
    )
    assert "set LG_WD to a directory this user can write" in check.fix


BROKEN_DEFAULT_ALSA = """
pcm.payphone_mic { type null }
pcm.hdmi { type null }
pcm.default {
    type file
    slave.pcm { type null }
    file "/dev/null"
    infile "UNPLUGGED/mic.raw"
    format "raw"
}
"""


@needs_alsa
def test_an_alsa_default_without_its_card_is_not_taken_for_a_sound_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "asound.conf"
    # the default's capture side opens a file in a missing folder, as an unplugged card fails:
    # PortAudio then leaves it out and quietly makes the first other input the default
    conf.write_text(BROKEN_DEFAULT_ALSA.replace("UNPLUGGED", str(tmp_path / "unplugged")))
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    checks = check_audio(AudioSettings())

    assert [c.status for c in checks] == ["fail", "ok"], checks
    assert checks[0].detail.startswith("the ALSA default device has no input")
    assert "PortAudio would quietly use 'payphone_mic' instead" in checks[0].detail
    assert "(have 0: payphone_mic, 1: hdmi)" in checks[0].detail
    assert "/etc/asound.conf" in checks[0].fix
    assert checks[1].detail.startswith("'default' opens at 48000 Hz mono 16-bit")
    assert "(the ALSA default; outputs here: 0: payphone_mic, 1: hdmi, 2: default)" in (
        checks[1].detail
    )


CARDS_HDMI = """\
 0 [vc4hdmi0       ]: vc4-hdmi - vc4-hdmi-0
                      vc4-hdmi-0
 1 [vc4hdmi1       ]: vc4-hdmi - vc4-hdmi-1
                      vc4-hdmi-1
"""
CARDS_USB = (
    CARDS_HDMI
    + """\
 2 [Device         ]: USB-Audio - USB Audio Device
                      C-Media Electronics Inc. USB Audio Device at usb-xhci-hcd.0-1, full speed
"""
)


@pytest.mark.parametrize(
    ("cards", "status", "detail"),
    [
        (CARDS_USB, "ok", "0: vc4hdmi0 (vc4-hdmi), 1: vc4hdmi1 (vc4-hdmi), 2: Device (USB-Audio)"),
        (CARDS_HDMI, "warn", "no USB sound card (have 0: vc4hdmi0 (vc4-hdmi), 1: vc4hdmi1 "),
        ("--- no soundcards ---\n", "fail", "no sound card at all"),
    ],
)
def test_the_handsets_usb_card_must_be_among_the_sound_cards(
    tmp_path: Path, cards: str, status: str, detail: str
) -> None:
    listing = tmp_path / "cards"
    listing.write_text(cards)
    [check] = check_sound_cards(listing)

    assert check.status == status
    assert check.detail.startswith(detail), check.detail
