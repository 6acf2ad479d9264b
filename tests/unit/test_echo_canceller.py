"""Echo cancellation on real Piper speech through a simulated handset echo path.

The path is what a handset does to the earpiece's sound before the mouthpiece hears it: a slight
loudspeaker non-linearity, the telephone band (300-3400 Hz), 20 ms of delay and -10 dB, plus a
low noise floor. Frames are the VAD's 30 ms at 16 kHz.
"""

from __future__ import annotations

import asyncio
import builtins
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soxr
import structlog
from scipy.signal import butter, sosfilt

from payphone.config import EchoSettings, Settings, load_settings
from payphone.doctor import check_echo
from payphone.pcm import Pcm
from payphone.settings_errors import SettingsError
from payphone.speech.echo_canceller import EchoCanceller, load_echo_canceller, open_echo_canceller
from tests.helpers import run_module
from tests.speech_fixtures import SAMPLE_RATE, piper

FRAME = SAMPLE_RATE * 30 // 1000
REPLY = "Operator speaking. Tell me who you would like, and I will ring them for you right away."
CALLER = "Hello, can you hear me? I want the detective."
Signal = npt.NDArray[np.float64]


def level(pcm: Pcm, dbfs: float) -> Signal:
    """Speech scaled to an RMS of `dbfs` (the synthesizer's leveller aims at -18 dBFS)."""
    x = pcm.astype(np.float64)
    return x * (10 ** (dbfs / 20) * 32768 / np.sqrt(np.mean(x**2)))


def echo_path(played: Signal, db: float = -10.0, delay_ms: float = 20.0) -> Signal:
    """The earpiece heard by the mouthpiece: tanh, telephone band, delay, attenuation."""
    x = np.tanh(played / 32768.0)
    x = sosfilt(butter(4, [300, 3400], btype="band", fs=SAMPLE_RATE, output="sos"), x)
    delay = round(delay_ms * SAMPLE_RATE / 1000)
    x = np.concatenate([np.zeros(delay), x])[: len(played)]
    return np.asarray(x * 10 ** (db / 20) * 32768.0)


def noise_floor(n: int, dbfs: float = -65.0) -> Signal:
    return np.random.default_rng(0).standard_normal(n) * 10 ** (dbfs / 20) * 32768


def pcm(x: Signal) -> Pcm:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def cancel_both(canceller: EchoCanceller, mic: Pcm, played: Pcm | None) -> tuple[Signal, Signal]:
    """Mic and reference through the canceller frame by frame, as the call will feed it: (what
    the VAD hears, what Whisper hears)."""
    n = len(mic) - len(mic) % FRAME
    frames = [
        canceller.process(mic[i : i + FRAME], None if played is None else played[i : i + FRAME])
        for i in range(0, n, FRAME)
    ]
    vad = np.concatenate([f.vad for f in frames]).astype(np.float64)
    return vad, np.concatenate([f.words for f in frames]).astype(np.float64)


def cancel(canceller: EchoCanceller, mic: Pcm, played: Pcm | None, words: bool = False) -> Signal:
    """What the VAD hears, or with `words` what Whisper hears (see `cancel_both`)."""
    vad, heard = cancel_both(canceller, mic, played)
    return heard if words else vad


def erle_db(mic: Signal, out: Signal) -> float:
    """Echo return loss enhancement: how much quieter the canceller made the echo."""
    return float(10 * np.log10(np.sum(mic**2) / np.sum(out**2)))


@pytest.fixture(scope="module")
def app_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def reply(app_settings: Settings) -> Pcm:
    """About 5 s of the persona at the earpiece's level."""
    return pcm(level(piper(app_settings, REPLY), -18.0))


@pytest.fixture(scope="module")
def caller(app_settings: Settings) -> Signal:
    """The caller, a little faster, at the mouthpiece (louder than the echo)."""
    return level(piper(app_settings, CALLER, length_scale=0.85), -24.0)


@pytest.fixture
def canceller(app_settings: Settings) -> EchoCanceller:
    loaded = load_echo_canceller(app_settings)
    assert loaded is not None, "pywebrtc-audio must load here"
    return loaded


@pytest.mark.models
def test_the_echo_is_at_least_20_db_quieter_once_converged(
    canceller: EchoCanceller, reply: Pcm
) -> None:
    echo = echo_path(reply.astype(np.float64)) + noise_floor(len(reply))
    mic = pcm(echo)
    out = cancel(canceller, mic, reply)
    tail = slice(len(out) // 2, len(out))  # the second half of the reply

    assert erle_db(echo[tail], out[tail]) >= 20.0
    # its own meter agrees over the whole reply (convergence included)
    metered = 10 * np.log10(canceller.energy_in / canceller.energy_out)
    assert metered == pytest.approx(erle_db(mic.astype(np.float64), out), abs=0.1)
    # it is the reference that removes the echo: without it almost nothing is taken out
    without = cancel(open_echo_canceller(EchoSettings(), SAMPLE_RATE), mic, None)
    assert erle_db(echo[tail], without[tail]) < 10.0
    assert 0 < canceller.ms_per_block < 1.0  # the budget per 10 ms frame


@pytest.mark.models
def test_a_persona_switch_keeps_the_echo_cancelled_from_the_first_second(
    canceller: EchoCanceller, reply: Pcm, caller: Signal
) -> None:
    """Another persona: a faster voice three semitones higher (pitch by resampling, as the
    synthesizer's effects do); the echo path is the same handset, so nothing is relearned."""
    other = soxr.resample(caller / 32768.0, SAMPLE_RATE * 2 ** (3 / 12), SAMPLE_RATE)
    played = np.concatenate([reply, pcm(level(pcm(other * 32768.0), -18.0))])
    echo = echo_path(played.astype(np.float64)) + noise_floor(len(played))
    out = cancel(canceller, pcm(echo), played)
    first_second = slice(len(reply), len(reply) + SAMPLE_RATE)

    assert erle_db(echo[first_second], out[first_second]) >= 20.0


@pytest.mark.models
def test_double_talk_keeps_the_callers_voice(
    canceller: EchoCanceller, reply: Pcm, caller: Signal
) -> None:
    echo = echo_path(reply.astype(np.float64)) + noise_floor(len(reply))
    start = len(reply) // 3  # after the canceller has converged
    end = min(start + len(caller), len(reply) - SAMPLE_RATE)
    near = np.zeros(len(reply))
    near[start:end] = caller[: end - start]
    out = cancel(canceller, pcm(echo + near), reply)

    kept = 10 * np.log10(np.sum(out[start:end] ** 2) / np.sum(near[start:end] ** 2))
    assert -4.0 < kept < 2.0, f"the caller's energy changed by {kept:.1f} dB"
    # the filter survives the double talk: the echo after the caller stops is still cancelled
    after = slice(end + SAMPLE_RATE // 4, len(out))
    assert erle_db(echo[after], out[after]) >= 20.0


@pytest.mark.models
def test_the_words_keep_the_callers_first_syllable_over_the_persona(
    canceller: EchoCanceller, reply: Pcm, caller: Signal
) -> None:
    """AEC3's suppressor dents the start of double talk; the words come through the linear
    filter, which only subtracts the echo: the caller's onset passes whole, the echo stays
    well under it."""
    echo = echo_path(reply.astype(np.float64)) + noise_floor(len(reply))
    start = len(reply) // 2  # both filters have converged
    end = min(start + len(caller), len(reply))
    near = np.zeros(len(reply))
    near[start:end] = caller[: end - start]
    mic = pcm(echo + near)
    frames = [
        canceller.process(mic[i : i + FRAME], reply[i : i + FRAME])
        for i in range(0, len(mic) - len(mic) % FRAME, FRAME)
    ]
    vad = np.concatenate([f.vad for f in frames]).astype(np.float64)
    words = np.concatenate([f.words for f in frames]).astype(np.float64)
    voiced = start + int(np.flatnonzero(np.abs(near[start:]) > 300)[0])
    onset = slice(voiced, voiced + SAMPLE_RATE // 10)  # the first 100 ms of the caller's voice

    def kept(out: Signal) -> float:
        return float(10 * np.log10(np.sum(out[onset] ** 2) / np.sum(near[onset] ** 2)))

    assert -1.0 < kept(words) < 1.0, f"the words changed the onset by {kept(words):.1f} dB"
    assert kept(vad) < kept(words) - 2.0  # AEC3 dents it (4-7 dB measured)
    # a linear filter takes seconds to converge (~21 dB in `bench bargein`, where it has run
    # all call); 1-2 s into the first reply it is already well on the way
    echo_only = slice(len(reply) // 4, start)
    assert erle_db(echo[echo_only], words[echo_only]) >= 10.0
    assert canceller.words_filter.startswith("speexdsp linear filter")


def test_without_speexdsp_the_words_come_from_aec3(monkeypatch: pytest.MonkeyPatch) -> None:
    from payphone.speech import linear_echo

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(linear_echo.ctypes, "CDLL", missing)
    with structlog.testing.capture_logs() as logs:
        canceller = open_echo_canceller(EchoSettings(), SAMPLE_RATE)
    assert canceller.words_filter == "AEC3 (no linear filter)"
    assert any(e["event"] == "words_echo_filter_unavailable" for e in logs)
    frame = np.random.default_rng(3).integers(-2000, 2000, FRAME, dtype=np.int16)
    cleaned = canceller.process(frame, frame)
    assert cleaned.words is cleaned.vad
    off = open_echo_canceller(EchoSettings(words_tail_ms=0), SAMPLE_RATE)
    assert off.words_filter == "AEC3 (no linear filter)"
    # doctor says so, with the fix; the phone itself keeps working (barge-in included)
    aec3, words = check_echo(load_settings())
    assert aec3.status == "ok" and "Whisper hears the AEC3 (no linear filter)" in aec3.detail
    assert words.status == "warn" and "libspeexdsp1" in words.fix
    # closed (the service stopping), a late frame still comes out, words from AEC3
    monkeypatch.undo()
    speexdsp = open_echo_canceller(EchoSettings(), SAMPLE_RATE)
    assert speexdsp.has_words_filter
    speexdsp.close()
    late = speexdsp.process(frame, frame)
    assert late.words is late.vad and not speexdsp.has_words_filter


@pytest.mark.models
def test_reset_starts_over_like_a_fresh_canceller(canceller: EchoCanceller, reply: Pcm) -> None:
    mic = pcm(echo_path(reply.astype(np.float64)) + noise_floor(len(reply)))
    first = cancel(canceller, mic, reply)
    again = cancel(canceller, mic, reply)  # the same reply, the path already learned
    canceller.reset()
    assert canceller.blocks == 0
    after_reset = cancel(canceller, mic, reply)

    assert np.array_equal(after_reset, first)
    assert not np.array_equal(again, first)


def test_bytes_and_silence_as_reference_and_frames_of_whole_10_ms_blocks() -> None:
    canceller = open_echo_canceller(EchoSettings(delay_ms=20), SAMPLE_RATE)
    assert canceller.delay_ms == 20
    frame = np.random.default_rng(1).integers(-2000, 2000, FRAME, dtype=np.int16)
    out, words = canceller.process(frame.tobytes(), None)
    assert out.dtype == np.int16 and len(out) == FRAME
    assert words.dtype == np.int16 and len(words) == FRAME
    assert canceller.blocks == 3

    with pytest.raises(ValueError, match="whole 10 ms blocks"):
        canceller.process(frame[:100], None)
    with pytest.raises(ValueError, match="played has 160 samples"):
        canceller.process(frame, frame[:160])
    with pytest.raises(ValueError, match="int16"):
        canceller.process(frame.astype(np.float32), None)  # type: ignore[arg-type]


async def test_worker_threads_can_share_one_canceller() -> None:
    canceller = open_echo_canceller(EchoSettings(), SAMPLE_RATE)
    frame = np.random.default_rng(2).integers(-2000, 2000, FRAME, dtype=np.int16)

    def run() -> None:
        for _ in range(50):
            canceller.process(frame, frame)

    await asyncio.gather(*(asyncio.to_thread(run) for _ in range(4)))
    assert canceller.blocks == 4 * 50 * 3


def test_a_library_that_cannot_load_gives_none_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__
    missing = "libc++.so.1: cannot open shared object file"  # the native library, on the Pi

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pywebrtc_audio"):
            raise ImportError(missing)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pywebrtc_audio", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with structlog.testing.capture_logs() as logs:
        assert load_echo_canceller(load_settings()) is None

    [event] = [e for e in logs if e["event"] == "echo_canceller_unavailable"]
    assert event["log_level"] == "warning"
    assert event["reason"] == f"pywebrtc-audio: ImportError: {missing}"
    assert event["consequence"] == "barge-in off"
    [line] = check_echo(load_settings())
    assert line.status == "warn"
    assert line.detail == f"no echo cancellation: pywebrtc-audio: ImportError: {missing}"
    assert "barge-in stays off" in line.fix


def test_switched_off_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_ECHO__ENABLED", "false")
    with structlog.testing.capture_logs() as logs:
        assert load_echo_canceller(load_settings()) is None
    assert [e["reason"] for e in logs] == ["echo.enabled = false"]
    [line] = check_echo(load_settings())
    assert (line.status, line.detail) == ("ok", "off: echo.enabled = false (barge-in stays off)")


def test_doctor_reports_the_canceller_and_its_cost() -> None:
    [line] = check_echo(load_settings())
    assert line.status == "ok"
    assert line.detail.startswith(
        "WebRTC AEC3 loads at 16000 Hz; Whisper hears the speexdsp linear filter, 128 ms tail; "
    )
    assert line.detail.endswith(" ms CPU per 10 ms block")


def test_an_out_of_range_delay_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_ECHO__DELAY_MS", "900")
    with pytest.raises(SettingsError) as info:
        load_settings()
    [line] = info.value.problems
    assert line.startswith("PAYPHONE_ECHO__DELAY_MS: '900'")
    assert "from 0 to 500" in line

    result = run_module("payphone", "config", env={"PAYPHONE_ECHO__NOISE_SUPPRESSION": "maybe"})
    assert result.returncode == 2
    assert "PAYPHONE_ECHO__NOISE_SUPPRESSION" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.models
async def test_the_phone_decides_on_aec3_and_gives_the_call_the_linear_filters_words(
    reply: Pcm,
) -> None:
    """The phone's mic pump: AEC3's frame goes to the VAD and the keypads, the linear filter's
    to what the utterance carries; a swap would give Whisper a dented first syllable."""
    from payphone.call.phone import Phone

    class Recorder:
        plays_key_tone = False

        def __init__(self) -> None:
            self.heard: list[tuple[Pcm, Pcm]] = []

        def hear(self, frame: Pcm, words: Pcm) -> None:
            self.heard.append((frame, words))

    canceller = open_echo_canceller(EchoSettings(), SAMPLE_RATE)
    made: list[Any] = []
    process = canceller.process

    def recorded(mic: Pcm, played: Pcm | None) -> Any:
        made.append(process(mic, played))
        return made[-1]

    canceller.process = recorded  # type: ignore[method-assign]
    phone = Phone(None, [], None, None, lambda _: None, echo=canceller)  # type: ignore[arg-type]
    call = Recorder()
    phone.call = call  # type: ignore[assignment]
    mic = pcm(echo_path(reply.astype(np.float64)) + noise_floor(len(reply)))
    for i in range(0, SAMPLE_RATE - FRAME, FRAME):
        await phone._take(mic[i : i + FRAME], reply[i : i + FRAME])

    assert [(f is c.vad, w is c.words) for (f, w), c in zip(call.heard, made, strict=True)] == [
        (True, True)
    ] * len(made)
    assert any(not np.array_equal(c.vad, c.words) for c in made)  # two different streams


def test_the_linear_filter_takes_equal_whole_blocks_only() -> None:
    """speexdsp reads a whole block of each through raw pointers: a short buffer would let it
    read past the end, so the sizes are checked before any call."""
    from payphone.speech.linear_echo import LinearEchoFilter

    block = np.zeros(160, np.int16)
    linear = LinearEchoFilter(SAMPLE_RATE, 160, 64)
    assert len(linear.process(np.tile(block, 3), np.tile(block, 3))) == 480
    with pytest.raises(ValueError, match="whole 160-sample blocks"):
        linear.process(block[:100], block[:100])
    with pytest.raises(ValueError, match="need equal"):
        linear.process(block, np.tile(block, 2))
    linear.close()
    with pytest.raises(RuntimeError, match="closed"):
        linear.process(block, block)
    with pytest.raises(ValueError, match="tail_ms must be positive"):
        LinearEchoFilter(SAMPLE_RATE, 160, 0)


@pytest.mark.models
def test_a_new_call_starts_aec3_afresh_and_keeps_the_words_filter(
    canceller: EchoCanceller, reply: Pcm
) -> None:
    mic = pcm(echo_path(reply.astype(np.float64)) + noise_floor(len(reply)))
    canceller.reset()
    fresh_vad, fresh_words = cancel_both(canceller, mic, reply)
    again_vad, _ = cancel_both(canceller, mic, reply)
    blocks = canceller.blocks
    canceller.new_call()
    call_vad, call_words = cancel_both(canceller, mic, reply)

    assert not np.array_equal(again_vad, fresh_vad)
    assert np.array_equal(call_vad, fresh_vad)  # AEC3 as fresh as at the start
    assert canceller.blocks > blocks  # the meters run on
    # the words' filter learned on (it needs seconds): its first second leaves less echo
    second = SAMPLE_RATE
    assert np.sum(call_words[:second] ** 2) < 0.5 * np.sum(fresh_words[:second] ** 2)
