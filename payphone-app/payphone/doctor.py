"""`payphone doctor`: check an installation the way an operator would, one line per check.

Each check says ok, warn or fail, and with a warning or failure, the fix. A check that raises is
a failed check with the message, never a traceback: doctor runs on machines in a bad state.
The sound card is probed in a child process (`python -m payphone.doctor audio SETTINGS_JSON`):
PortAudio can abort the whole process on a broken ALSA configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from payphone.config import AudioSettings, LlmSettings, Settings, config_file_in_use, load_settings
from payphone.log import ms
from payphone.settings_errors import SettingsError

if TYPE_CHECKING:
    from payphone.personas.loader import Persona

Status = Literal["ok", "warn", "fail"]
AUDIO_PROBE_TIMEOUT_S = 30.0
GGUF_MAGIC = b"GGUF"
SERVICE = "payphone.service"
ASOUND_CARDS = Path("/proc/asound/cards")
BUG_FIX = "unexpected: report it with this line and `python -m payphone config`"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def format_check(check: Check) -> str:
    """`ok   name: detail`, and for a problem an indented `fix:` line."""
    label = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[check.status]
    line = f"{label}  {check.name}: {check.detail}"
    return f"{line}\n      fix: {check.fix}" if check.fix and check.status != "ok" else line


def exit_code(checks: list[Check]) -> int:
    """0 when nothing failed (warnings allowed), else 1."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def guarded(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    """Run a check; whatever it raises becomes a failed line."""
    try:
        return check()
    except Exception as exc:
        return [fail(name, f"{type(exc).__name__}: {exc}", BUG_FIX)]


def run_checks(config: Path | None) -> Iterator[Check]:
    """Every check in order; nothing past the settings when they are invalid."""
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        for problem in exc.problems:
            yield fail("settings", problem, "edit the setting named, then `payphone config`")
        return
    source = config_file_in_use(config)
    yield ok(
        "settings",
        f"valid; file {source or '(none: defaults)'}, .env, PAYPHONE_* variables; "
        f"models.dir {settings.models.dir}",
    )
    voices: list[str] = []
    yield from guarded("personas", lambda: check_personas(settings, voices))
    yield from guarded("sound cards", check_sound_cards)
    yield from guarded("audio", lambda: check_audio(settings.audio))
    yield from guarded("gpio", lambda: check_gpio(settings))
    yield from guarded("models", lambda: check_models(settings, voices))
    yield from guarded("echo", lambda: check_echo(settings))
    yield from guarded("llm.prompt_style", lambda: check_prompt_style(settings))
    yield from guarded("ollama", lambda: asyncio.run(check_ollama(settings.llm)))


# -- personas ---------------------------------------------------------------------------------


def check_personas(settings: Settings, voices: list[str]) -> list[Check]:
    """Persona files parse; the default persona exists. Fills `voices` for the model check."""
    from payphone.personas.loader import load_personas

    book = load_personas(settings.personas.user_dir)
    checks = [
        fail("personas", problem, "fix the file and field named, then `systemctl reload payphone`")
        for problem in book.errors
    ]
    personas = list(book)
    if not personas:
        return [*checks, fail("personas", "no persona loaded", "restore the shipped persona files")]
    keys = " ".join(f"{p.key}={p.id}" for p in personas)
    checks.append(ok("personas", f"{len(personas)} loaded: {keys}"))
    checks.extend(check_persona_voice(settings, p, voices) for p in personas)
    key = settings.call.default_persona_key
    if book.by_key(key) is None:
        checks.append(
            warn(
                "personas",
                f"call.default_persona_key = {key!r}: no persona has that key (operator answers)",
                f"set call.default_persona_key to one of: {' '.join(p.key for p in personas)}",
            )
        )
    return checks


def check_persona_voice(settings: Settings, persona: Persona, voices: list[str]) -> Check:
    """The voice that really speaks for a persona: its production voice (ok), or its fallback
    (warn: it works, but Grandma Mae is a pitched-up man until the voice is downloaded). Adds
    the voice used to `voices`, which the model check then loads."""
    from payphone.models import FETCH_COMMAND, ModelNotFound
    from payphone.speech.voices import choose_here

    name = f"voice {persona.key}={persona.id}"
    try:
        choice = choose_here(settings, persona.voice_spec)
    except ModelNotFound as exc:
        return fail(name, str(exc), f"`{FETCH_COMMAND}` as the service user, or fix voice.model")
    if choice.used.model not in voices:
        voices.append(choice.used.model)
    if choice.reason is None:
        return ok(name, f"{choice.describe()} (production voice)")
    return warn(
        name,
        choice.describe(),
        f"`{FETCH_COMMAND}` as the service user fetches {persona.voice.model}",
    )


# -- audio ------------------------------------------------------------------------------------


def check_sound_cards(cards_file: Path = ASOUND_CARDS) -> list[Check]:
    """The kernel's sound cards: the handset's USB card must be among them (PortAudio would
    otherwise quietly open whatever else there is, such as HDMI)."""
    if not cards_file.is_file():
        return [ok("sound cards", f"not listed here (no {cards_file}: not Linux, or a container)")]
    # ` 1 [Device         ]: USB-Audio - USB Audio Device`
    found = re.findall(r"^\s*(\d+) \[(\S+)\s*\]: (\S+) - (.*)$", cards_file.read_text(), re.M)
    names = ", ".join(f"{index}: {name} ({driver})" for index, name, driver, _ in found)
    if not found:
        return [
            fail(
                "sound cards",
                "no sound card at all",
                "plug in the handset's USB sound card; `aplay -l` must list it",
            )
        ]
    if not any(driver == "USB-Audio" for _, _, driver, _ in found):
        return [
            warn(
                "sound cards",
                f"no USB sound card (have {names})",
                "plug in the handset's USB sound card (`aplay -l` must list it); the Pi 5 has "
                "no analogue audio of its own",
            )
        ]
    return [ok("sound cards", names)]


def check_audio(settings: AudioSettings) -> list[Check]:
    """Probe the sound card in a child process and read its verdict."""
    args = [sys.executable, "-m", "payphone.doctor", "audio", settings.model_dump_json()]
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=AUDIO_PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return [
            fail(
                "audio",
                f"the sound card did not answer within {AUDIO_PROBE_TIMEOUT_S:g} s",
                "replug the USB sound card; `aplay -l` and `arecord -l` must list it",
            )
        ]
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return [
            fail(
                "audio",
                f"PortAudio failed while listing devices: {why}",
                "check /etc/asound.conf (see deploy/asound.conf) and that `aplay -L` works",
            )
        ]
    return [Check(**item) for item in json.loads(lines[-1])]


def probe_audio(settings: AudioSettings) -> list[Check]:
    """Find the configured devices by name and open each at the device rate (child process)."""
    import pyaudio

    from payphone.hardware.audio import DeviceNotFound, find_device

    pa = pyaudio.PyAudio()
    try:
        devices = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
        if not devices:
            return [
                fail(
                    "audio",
                    "no sound device at all",
                    "plug in the USB sound card (`aplay -l` must list it); the service user "
                    "needs group audio",
                )
            ]
        checks = []
        for direction in ("input", "output"):
            selector = settings.input_device if direction == "input" else settings.output_device
            name = f"audio {direction}"
            here = _names(devices, direction)
            try:
                index = find_device(pa, selector, direction)
                if index is None:
                    index = _alsa_default(pa, devices, direction)
            except DeviceNotFound as exc:
                fix = f"set audio.{direction}_device to part of one of those names"
                if selector in (None, ""):
                    fix = (
                        "plug in the USB sound card (`aplay -l` must list it) and make "
                        f"/etc/asound.conf name it (see deploy/asound.conf), or {fix}"
                    )
                checks.append(fail(name, str(exc), f"{fix} (or plug the card in)"))
                continue
            check = _open(pa, settings, direction, index)
            what = "the ALSA default; " if selector in (None, "") else ""
            checks.append(
                replace(check, detail=f"{check.detail} ({what}{direction}s here: {here})")
            )
        return checks
    finally:
        pa.terminate()


def _names(devices: list[dict[str, Any]], direction: str) -> str:
    channels = "maxInputChannels" if direction == "input" else "maxOutputChannels"
    usable = [f"{d['index']}: {d['name']}" for d in devices if int(d[channels]) > 0]
    return ", ".join(usable) or "none"


def _alsa_default(pa: Any, devices: list[dict[str, Any]], direction: str) -> int | None:
    """The ALSA `default` device for an empty audio.*_device. When it cannot open (its card is
    unplugged, or /etc/asound.conf names a card that is not there) PortAudio leaves it out and
    quietly makes another device the default: the first it finds, often HDMI. That is an error
    here, not a success."""
    from payphone.hardware.audio import DeviceNotFound

    host = pa.get_default_host_api_info()
    if host.get("name") != "ALSA":
        return None  # another host API: its own default is the only notion there is
    channels = "maxInputChannels" if direction == "input" else "maxOutputChannels"
    for device in devices:
        if device["name"] == "default" and int(device[channels]) > 0:
            return int(device["index"])
    fallback = host.get(f"default{direction.capitalize()}Device", -1)
    instead = next((d["name"] for d in devices if d["index"] == fallback), None)
    raise DeviceNotFound(
        f"the ALSA default device has no {direction}: no sound card, or /etc/asound.conf names "
        f"a card that is not there"
        + (f"; PortAudio would quietly use {instead!r} instead" if instead else "")
        + f" (have {_names(devices, direction)})"
    )


def _open(pa: Any, settings: AudioSettings, direction: str, index: int | None) -> Check:
    import numpy as np
    import pyaudio

    name = f"audio {direction}"
    try:
        if index is None:
            info = (
                pa.get_default_input_device_info()
                if direction == "input"
                else pa.get_default_output_device_info()
            )
            index = int(info["index"])
        device = pa.get_device_info_by_index(index)["name"]
    except OSError as exc:
        return fail(
            name,
            f"no default {direction} device ({exc})",
            f"plug in the sound card or set audio.{direction}_device",
        )
    rate = settings.device_rate
    block = rate * settings.buffer_ms // 1000
    try:
        stream = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=rate,
            frames_per_buffer=block,
            **{direction: True, f"{direction}_device_index": index},
        )
        try:
            if direction == "input":
                stream.read(block, exception_on_overflow=False)
            else:
                stream.write(np.zeros(block, np.int16).tobytes())
        finally:
            stream.close()
    except (OSError, ValueError) as exc:
        return fail(
            name,
            f"{device!r} does not open at {rate} Hz mono 16-bit: {exc}",
            "stop whatever holds the card (`systemctl stop payphone`, `fuser -v /dev/snd/*`) "
            "or try audio.device_rate = 44100",
        )
    return ok(name, f"{device!r} opens at {rate} Hz mono 16-bit")


# -- GPIO -------------------------------------------------------------------------------------


def planned_pins(settings: Settings) -> dict[str, list[int]]:
    """Which settings claim which BCM pins (the in-band keypad claims none)."""
    pins: dict[str, list[int]] = {"hook.pin": [settings.hook.pin]}
    keypad = settings.keypad
    if keypad.source == "matrix":
        pins["keypad.row_pins"] = list(keypad.row_pins)
        pins["keypad.column_pins"] = list(keypad.column_pins)
    elif keypad.source == "mt8870":
        pins["keypad.mt8870_pins"] = list(keypad.mt8870_pins)
        pins["keypad.mt8870_std_pin"] = [keypad.mt8870_std_pin]
    return pins


def check_gpio(settings: Settings) -> list[Check]:
    """Every configured pin is distinct, exists, and is free; the hook switch reads a state."""
    claimed: dict[int, str] = {}
    for setting, pins in planned_pins(settings).items():
        for pin in pins:
            if pin in claimed:
                return [
                    fail(
                        "gpio",
                        f"GPIO{pin} is in both {claimed[pin]} and {setting}",
                        "give each its own pin (see deploy/WIRING.md)",
                    )
                ]
            claimed[pin] = setting
    with lgpio_work_dir():
        return _open_pins(settings)


@contextlib.contextmanager
def lgpio_work_dir() -> Iterator[None]:
    """lgpio makes its notification pipe in $LG_WD, else in the current directory, when it is
    imported, and moves the process there. Doctor is often run (`sudo -u payphone ...`) from a
    directory that user cannot write, and then lgpio, and with it the GPIO, fails: a private
    temporary directory instead, and the process back where it was afterwards."""
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the current directory may be gone
        cwd = None
    with contextlib.ExitStack() as stack:
        if not os.environ.get("LG_WD"):
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="payphone-lgpio-"))
            os.environ["LG_WD"] = work_dir
            stack.callback(os.environ.pop, "LG_WD", None)
        if cwd is not None:
            stack.callback(os.chdir, cwd)  # first of the clean-ups: out of the directory
        yield


def _open_pins(settings: Settings) -> list[Check]:
    from gpiozero import Button, Device, DigitalInputDevice, DigitalOutputDevice
    from gpiozero.exc import BadPinFactory, GPIOPinInUse, PinFactoryFallback, PinInvalidPin

    opened: list[Any] = []
    pin, setting = settings.hook.pin, "hook.pin"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PinFactoryFallback)  # each says why a factory failed
            try:
                hook = Button(settings.hook.pin, pull_up=settings.hook.pull_up, bounce_time=None)
            except BadPinFactory:
                reasons = [str(w.message) for w in caught if w.category is PinFactoryFallback]
                return [no_pin_factory(reasons)]
            opened.append(hook)
            for setting, pins in planned_pins(settings).items():
                if setting == "hook.pin":
                    continue
                for pin in pins:
                    device = (
                        DigitalOutputDevice(pin)
                        if setting == "keypad.row_pins"
                        else DigitalInputDevice(pin, pull_up=False)
                    )
                    opened.append(device)
        factory = type(Device.pin_factory).__name__
        closed_means = "on-hook" if settings.hook.switch == "normally_open" else "off-hook"
        state = closed_means if hook.is_active else _other(closed_means)
        pins_text = ", ".join(f"{k}={v}" for k, v in planned_pins(settings).items())
        return [ok("gpio", f"{factory}: pins free ({pins_text}); the hook switch reads {state}")]
    except (GPIOPinInUse, PinInvalidPin, OSError) as exc:
        return [
            fail(
                "gpio",
                f"{type(exc).__name__}: {exc}",
                "stop whatever holds the pin (`systemctl stop payphone`) or choose another pin; "
                "the service user needs group gpio",
            )
        ]
    except Exception as exc:
        if not is_lgpio_error(exc):
            raise
        return [lgpio_failure(exc, pin, setting)]
    finally:
        for device in opened:
            device.close()


def is_lgpio_error(exc: BaseException) -> bool:
    """lgpio reports everything as its own `lgpio.error` (not an OSError)."""
    error = getattr(sys.modules.get("lgpio"), "error", None)
    return isinstance(error, type) and isinstance(exc, error)


def lgpio_failure(exc: Exception, pin: int, setting: str) -> Check:
    """A pin lgpio would not claim: held by the running service (expected), or by another
    program, or not reachable for this user."""
    why = str(exc).strip("'\"")
    if "busy" in why.lower():
        if service_active():
            return warn(
                "gpio",
                f"GPIO{pin} ({setting}) is in use by the running service ({SERVICE} is "
                "active): the pins and the hook switch are not read while it runs",
                "to read the hook switch: `sudo systemctl stop payphone`, run doctor, then "
                "`sudo systemctl start payphone`",
            )
        return fail(
            "gpio",
            f"GPIO{pin} ({setting}) is busy: another program holds it ({SERVICE} is not running)",
            "`gpioinfo` names the holder of each line: stop it, or choose another pin",
        )
    return fail(
        "gpio",
        f"GPIO{pin} ({setting}): lgpio: {why}",
        "the service user needs group gpio (`ls -l /dev/gpiochip*`); on a Pi 5 the header is "
        "gpiochip4 (or gpiochip0 on newer kernels)",
    )


def no_pin_factory(reasons: list[str]) -> Check:
    """No gpiozero pin factory loaded: say why each failed, and the fix for the first reason
    that has one (lgpio's is the one that matters on a Pi)."""
    detail = "; ".join(reasons) or "gpiozero tried no pin factory"
    text = detail.lower()
    if ".lgd-nfy" in text:
        fix = (
            "lgpio could not make its notification pipe: set LG_WD to a directory this user "
            "can write, or run from one"
        )
    elif "no module named 'lgpio'" in text:
        fix = "on the Pi: install the app with its `pi` extra (pip install lgpio)"
    elif "gpiochip" in text:
        fix = "the user needs group gpio and a GPIO chip (`ls -l /dev/gpiochip*`): is this a Pi?"
    elif "pi revision" in text:
        fix = "this is not a Raspberry Pi (gpiozero finds no Pi model here)"
    else:
        fix = "on the Pi: install the app with its `pi` extra (lgpio) and add the user to gpio"
    return fail(
        "gpio",
        f"no GPIO on this machine: {detail}",
        f"{fix}; off a Pi (tests, laptops): GPIOZERO_PIN_FACTORY=mock",
    )


def service_active() -> bool:
    """Whether the payphone service runs now (it then holds the pins and the sound card)."""
    try:
        done = subprocess.run(
            ["systemctl", "is-active", "--quiet", SERVICE], timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _other(state: str) -> str:
    return "off-hook" if state == "on-hook" else "on-hook"


# -- models -----------------------------------------------------------------------------------


def check_models(settings: Settings, voices: list[str]) -> list[Check]:
    """Every model resolves to a file, and loads (Whisper, each Piper voice, the GGUF header,
    the end-of-turn model). A broken end-of-turn model is a warning: the phone then ends turns
    by the silence rule alone."""
    from payphone.models import TURN, resolve_all

    checks: list[Check] = []
    loaders = {"Whisper model": _load_whisper, "Piper voice": _load_voice, TURN.kind: _load_turn}
    for res in resolve_all(settings, voices=voices, download=False):
        name = f"model {res.setting.key}"
        bad = warn if res.setting == TURN else fail
        if res.path is None:
            checks.append(bad(name, res.error or "not found", "see the message for the fix"))
            continue
        kind = res.setting.kind
        loader = loaders.get(kind, _load_gguf)
        started = time.monotonic()
        try:
            what = loader(settings, res.path)
        except Exception as exc:
            checks.append(
                bad(
                    name,
                    f"{res.value!r} at {res.path} does not load: {type(exc).__name__}: {exc}",
                    f"the file is damaged or not a {kind}: delete it and run "
                    "`payphone models --download`, or fix the path",
                )
            )
            continue
        took = ms(time.monotonic() - started)
        checks.append(ok(name, f"{res.value!r} -> {res.path} ({what}, {took:g} ms)"))
    if settings.llm.backend == "ollama":
        checks.append(ok("model llm.gguf", "not needed: llm.backend = ollama (Pi #2 has it)"))
    if not settings.turn.model:
        checks.append(ok("model turn.model", "not used: turn.model is empty (silence rule only)"))
    return checks


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence native libraries that write to file descriptor 2 for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load_whisper(settings: Settings, path: Path) -> str:
    from faster_whisper import WhisperModel

    WhisperModel(str(path), device="cpu", compute_type=settings.stt.compute_type, cpu_threads=1)
    return "loads"


def _load_voice(settings: Settings, path: Path) -> str:
    from payphone.speech.tts import load_voice

    voice = load_voice(path)
    return f"loads, {voice.config.sample_rate} Hz"


def _load_turn(settings: Settings, path: Path) -> str:
    import numpy as np

    from payphone.speech.turn_model import SAMPLE_RATE, SmartTurn

    model = SmartTurn(path, settings.turn.threads)
    quiet = np.zeros(SAMPLE_RATE, np.int16)
    model.predict(quiet)  # the first run also prepares the session
    started = time.monotonic()
    model.predict(quiet)
    return f"loads, a prediction takes {ms(time.monotonic() - started):g} ms"


def _load_gguf(settings: Settings, path: Path) -> str:
    with path.open("rb") as file:
        head = file.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ValueError(f"not a GGUF file (starts with {head[:4]!r})")
    version = int.from_bytes(head[4:8], "little")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise RuntimeError(
            "llama-cpp-python is missing: pip install 'payphone-ai[embedded]'"
        ) from exc
    with quiet_stderr():  # llama.cpp writes context warnings straight to fd 2
        Llama(model_path=str(path), vocab_only=True, verbose=False)
    return f"GGUF v{version}, vocabulary loads"


# -- echo cancellation ------------------------------------------------------------------------


def check_echo(settings: Settings) -> list[Check]:
    """The echo canceller loads and what a 10 ms block costs here; without it (a warning) the
    phone still works, with barge-in off."""
    import numpy as np

    from payphone.speech.echo_canceller import EchoUnavailable, open_echo_canceller

    if not settings.echo.enabled:
        return [ok("echo", "off: echo.enabled = false (barge-in stays off)")]
    rate = settings.vad.sample_rate
    try:
        canceller = open_echo_canceller(settings.echo, rate)
    except EchoUnavailable as exc:
        fix = "reinstall the app (`pip install pywebrtc-audio`); until then barge-in stays off"
        return [warn("echo", f"no echo cancellation: {exc}", fix)]
    noise = np.random.default_rng(0).integers(-3000, 3000, rate, dtype=np.int16)  # 1 s
    for start in range(0, rate, canceller.block * 3):
        frame = noise[start : start + canceller.block * 3]
        canceller.process(frame, frame)
    cost = f"{canceller.ms_per_block:.2f} ms CPU per 10 ms block"
    words = f"Whisper hears the {canceller.words_filter}"
    linear = canceller.has_words_filter
    canceller.close()
    checks = [ok("echo", f"WebRTC AEC3 loads at {rate} Hz; {words}; {cost}")]
    if settings.echo.words_tail_ms and not linear:
        fix = "apt-get install libspeexdsp1 (or echo.words_tail_ms = 0 to say you mean it)"
        why = "speexdsp did not load: a caller's first syllable over the persona may be lost"
        checks.append(warn("echo words", why, fix))
    return checks


def check_prompt_style(settings: Settings) -> list[Check]:
    """Which system prompt calls send: the setting, or the style the model declares."""
    from payphone.llm.factory import chosen_prompt_style

    try:
        with quiet_stderr():  # llama.cpp reads the GGUF's vocabulary
            chosen = asyncio.run(chosen_prompt_style(settings))
    except Exception as exc:
        detail = f"cannot read the model's prompt style: {type(exc).__name__}: {exc}"
        return [warn("llm.prompt_style", detail, "see the model check above")]
    return [ok("llm.prompt_style", chosen.explain())]


# -- Ollama -----------------------------------------------------------------------------------


CAUSE_FIXES = {
    "refused": "start Ollama on Pi #2 (`systemctl status ollama`) and check its OLLAMA_HOST",
    "unknown_host": "fix llm.ollama_host (a name that does not resolve)",
    "connect_timeout": "check the cable to Pi #2 (`ping` it) and its firewall (Pi #1's address)",
    "unreachable": "check the cable to Pi #2 (`ping` it) and llm.ollama_host",
    "probe_timeout": "Pi #2 answers too slowly: `journalctl -u ollama` there",
}


async def check_ollama(llm: LlmSettings) -> list[Check]:
    """Every host in `llm.ollama_hosts`, in the order a turn tries them. With several, a host
    that fails while another passes is a warning: the phone fails over and still answers, but
    the operator should know one Pi #2 is down before the other one goes too."""
    used = llm.backend == "ollama"
    name = "ollama" if used else "ollama (not used: llm.backend = embedded)"
    hosts = [host.rstrip("/") for host in llm.hosts]
    results = [await _check_ollama_host(llm, host, name, used) for host in hosts]
    if len(hosts) > 1 and any(all(c.status == "ok" for c in checks) for checks in results):
        results = [[_failed_over(c) for c in checks] for checks in results]
    return [check for checks in results for check in checks]


def _failed_over(check: Check) -> Check:
    if check.status != "fail":
        return check
    return warn(check.name, f"{check.detail} (turns fail over to the next host)", check.fix)


async def _check_ollama_host(llm: LlmSettings, host: str, name: str, used: bool) -> list[Check]:
    """Reachable, has the persona model, answers a one-token chat (a warning when not used)."""
    from payphone.llm.base import ChatOptions, LlmError, Message
    from payphone.llm.factory import build_ollama

    bad = fail if used else warn
    backend = build_ollama(llm, host)
    backend.probe_timeout_s = llm.connect_timeout_s
    try:
        try:
            models = await backend.list_models()
        except LlmError as exc:
            if exc.cause == "model_not_found":  # a 404 on /api/tags: something else answers
                why = "answers, but not as Ollama does (HTTP 404 on /api/tags)"
                return [bad(name, f"{host} {why}", "check llm.ollama_host (address and port)")]
            fix = CAUSE_FIXES.get(exc.cause, "check Pi #2: `systemctl status ollama`")
            return [bad(name, f"{host} not reachable: {exc}", fix)]
        checks = [ok(name, f"{host} answers; {len(models)} model(s)")]
        wanted = llm.ollama_model if ":" in llm.ollama_model else f"{llm.ollama_model}:latest"
        if wanted not in models:
            have = ", ".join(models) or "none"
            fix = (
                f"on Pi #2: deploy/pi2-install.sh {llm.ollama_model} MODELFILE, "
                "or set llm.ollama_model to one it has"
            )
            missing = f"{host}: model {llm.ollama_model} missing (has: {have})"
            return [*checks, bad(name, missing, fix)]
        checks.append(ok(name, f"{host}: model {llm.ollama_model} present"))
        messages: list[Message] = [{"role": "user", "content": "Hello?"}]
        options = ChatOptions(num_predict=1, temperature=0.0, num_ctx=llm.num_ctx)
        started = time.monotonic()
        try:
            async for _piece in backend.stream(messages, options):
                pass
        except LlmError as exc:
            failed = f"{host}: a one-token chat failed: {exc}"
            return [*checks, bad(name, failed, "`journalctl -u ollama`")]
        took = ms(time.monotonic() - started)
        checks.append(ok(name, f"{host}: round trip {took:g} ms (a one-token chat)"))
        return checks
    finally:
        await backend.aclose()


def _audio_child(settings_json: str) -> None:
    from payphone.log import setup_logging

    setup_logging("error", "json")
    try:
        checks = probe_audio(AudioSettings.model_validate_json(settings_json))
    except Exception as exc:
        checks = [fail("audio", f"{type(exc).__name__}: {exc}", BUG_FIX)]
    print(json.dumps([asdict(c) for c in checks]))


def main(config: Path | None, out: TextIO | None = None) -> int:
    """Print each check as it completes; 0 when nothing failed, 1 otherwise."""
    from payphone.log import setup_logging

    stream = out or sys.stdout
    setup_logging("error", "json")  # the checks' own log lines would drown the report
    checks: list[Check] = []
    for check in run_checks(config):
        checks.append(check)
        print(format_check(check), file=stream, flush=True)
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    verdict = "FAILED" if failed else "healthy"
    print(f"doctor: {verdict} ({failed} failed, {warned} warnings)", file=stream)
    return exit_code(checks)


if __name__ == "__main__":
    if sys.argv[1:2] == ["audio"] and len(sys.argv) == 3:
        _audio_child(sys.argv[2])
    elif sys.argv[1:2] == ["check"] and len(sys.argv) in (2, 4) and sys.argv[2:3] in ([], ["-c"]):
        sys.exit(main(Path(sys.argv[3]) if len(sys.argv) == 4 else None))
    else:
        sys.exit(
            "usage: python -m payphone.doctor check [-c CONFIG] (or: python -m payphone doctor)"
        )
