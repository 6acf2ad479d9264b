"""The handset's echo path: delay, level and band of the earpiece leaking into the mic."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from payphone.hardware.memory_audio import MemorySink, MemorySource
from payphone.sim.echo_path import EchoPath, EchoSettingError, HandsetEcho, echo_settings
from payphone.sim.handset import Handset

EAR = 22050
MIC = 16000


def tone(hz: float, seconds: float = 1.0, dbfs: float = -20.0) -> np.ndarray:
    t = np.arange(int(seconds * EAR)) / EAR
    return (np.sin(2 * np.pi * hz * t) * 32768 * 10 ** (dbfs / 20)).astype(np.int16)


def noise(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * EAR)) * 3000).astype(np.int16)


def through(path: EchoPath, played: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed in earpiece-sized pieces; everything that came out as (reference, echo)."""
    for start in range(0, len(played), 441):
        path.feed(played[start : start + 441])
    return path.take(path.available)


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x.astype(np.float64))))))


def lag_of(echo: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    """The lag (samples) at which `echo` best matches `reference`."""
    span = len(reference) - max_lag
    scores = [float(np.dot(echo[lag : lag + span], reference[:span])) for lag in range(max_lag)]
    return int(np.argmax(scores))


def test_the_echo_comes_back_the_configured_delay_later() -> None:
    for delay_ms in (0.0, 5.0, 20.0, 37.5):
        path = EchoPath(HandsetEcho(-10, delay_ms), EAR, MIC)
        assert path.delay_samples == round(delay_ms * 16)
        reference, echo = through(path, noise(1.0))
        lag = lag_of(echo, reference, 800)
        assert 0 <= lag - path.delay_samples <= 8  # + the band filter's group delay (< 0.5 ms)


@pytest.mark.parametrize("db", [-6.0, -10.0, -20.0, -40.0])
@pytest.mark.parametrize("hz", [500.0, 1000.0, 2000.0])
def test_an_in_band_tone_comes_back_at_the_configured_level(db: float, hz: float) -> None:
    reference, echo = through(EchoPath(HandsetEcho(db, 20), EAR, MIC), tone(hz))
    settled = slice(4000, len(echo))  # past the delay and the filter's start
    assert rms_db(echo[settled]) - rms_db(reference[settled]) == pytest.approx(db, abs=1.0)


def test_the_band_limit_takes_out_a_100_hz_hum() -> None:
    reference, echo = through(EchoPath(HandsetEcho(0, 0), EAR, MIC), tone(100.0))
    settled = slice(4000, len(echo))
    assert rms_db(echo[settled]) - rms_db(reference[settled]) < -30


def test_a_loud_earpiece_is_softly_clipped() -> None:
    loud = tone(1000.0, dbfs=-1.0)
    _, echo = through(EchoPath(HandsetEcho(0, 0), EAR, MIC), loud)
    peak = np.abs(echo[4000:]).max()
    assert 0.6 * 32768 < peak < 0.95 * np.abs(loud).max()  # squashed, not cut flat


@pytest.mark.parametrize(
    ("db", "delay", "named"),
    [(5.0, 20.0, "--echo-db"), (-61.0, None, "--echo-db"), (float("nan"), None, "--echo-db"),
     (-10.0, 250.0, "--echo-delay-ms"), (-10.0, -1.0, "--echo-delay-ms"),
     (None, 20.0, "--echo-delay-ms")],
)  # fmt: skip
def test_echo_settings_out_of_range_name_the_setting(
    db: float | None, delay: float | None, named: str
) -> None:
    with pytest.raises(EchoSettingError, match=f"^{named}: "):
        echo_settings(db, delay)


def test_echo_settings_from_the_command_line() -> None:
    assert echo_settings(None, None) is None
    assert echo_settings(-10, None) == HandsetEcho(-10, 20)
    assert echo_settings(-60, 0) == HandsetEcho(-60, 0)
    assert echo_settings(0, 200) == HandsetEcho(0, 200)


async def test_each_mic_frame_comes_with_the_reference_for_its_span() -> None:
    sink = MemorySink(EAR)
    mic = MemorySource(MIC, 30)
    handset = Handset(mic, sink, HandsetEcho(-6, 20), keep=True)
    voice = noise(0.6)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []

    async def listen() -> None:
        async for pair in handset.frames_with_reference():
            pairs.append(pair)

    listening = asyncio.create_task(listen())
    await asyncio.sleep(0.1)
    await sink.play(voice)
    await sink.drain()
    await asyncio.sleep(0.15)
    listening.cancel()
    await asyncio.gather(listening, return_exceptions=True)
    heard = np.concatenate([m for m, _ in pairs]).astype(np.float64)
    reference = np.concatenate([r for _, r in pairs]).astype(np.float64)
    assert all(len(m) == len(r) == 480 for m, r in pairs)
    assert np.array_equal(heard, np.concatenate(handset.delivered))
    assert 320 <= lag_of(heard, reference, 600) <= 328
    # the reference is the earpiece's own sound, on the mic's clock
    assert handset.epoch is not None
    first = sink.heard[0]
    onset = int(np.argmax(np.abs(reference) > 1000))
    assert handset.epoch + onset / MIC == pytest.approx(first.at, abs=0.002)
    assert rms_db(reference[onset : onset + 8000]) == pytest.approx(rms_db(voice), abs=1.5)


async def test_the_handset_delivers_on_its_clock_without_drift() -> None:
    sink = MemorySink(EAR)
    handset = Handset(MemorySource(MIC, 30), sink, HandsetEcho(-10, 20))
    frames = 0
    started = time.monotonic()
    async for _frame in handset.frames():
        frames += 1
        if frames == 40:
            break
    assert time.monotonic() - started == pytest.approx(40 * 0.03, abs=0.03)


def test_an_echo_needs_a_real_time_earpiece() -> None:
    with pytest.raises(ValueError, match="real-time"):
        Handset(MemorySource(MIC), MemorySink(EAR, speed=4.0), HandsetEcho())


async def test_a_live_microphone_paces_the_handset_and_no_frame_is_made_up() -> None:
    mic = MemorySource(MIC, 30, live=True)
    handset = Handset(mic, MemorySink(EAR), HandsetEcho(-10, 20))

    async def talk() -> None:
        for index in range(1, 21):
            mic.push(np.full(480, index, dtype=np.int16))
            await asyncio.sleep(0.03 + (0.004 if index % 3 else -0.004))  # a device's jitter

    talking = asyncio.create_task(talk())
    got: list[int] = []
    async for frame in handset.frames():
        got.append(int(frame[0]))
        if len(got) == 20:
            break
    await talking
    assert got == list(range(1, 21))  # the earpiece was silent: the frames pass as they came


async def test_without_an_echo_path_frames_pass_untouched_with_no_reference() -> None:
    mic = MemorySource(MIC, 30)
    handset = Handset(mic, MemorySink(EAR), None, keep=True)
    spoken = np.arange(480, dtype=np.int16)
    mic.push(spoken)
    async for frame, reference in handset.frames_with_reference():
        assert np.array_equal(frame, spoken) and reference is None
        break
    assert len(handset.delivered) == 1


async def test_a_live_mic_hands_on_the_real_earpieces_reference_with_each_frame() -> None:
    """Interactive mode: the computer's mic frames come with what its speakers really played
    (their `PlayedTap`), and the handset hands both to the echo canceller untouched."""
    mic = MemorySource(MIC, 30, live=True)
    handset = Handset(mic, MemorySink(EAR), None)
    spoken, played = np.full(480, 7, dtype=np.int16), np.full(480, 9, dtype=np.int16)
    mic.push(spoken, played)
    mic.push(spoken[:100], played[:100])  # not a whole frame: no reference can go with it
    mic.push(spoken[100:])
    pairs = []
    async for pair in handset.frames_with_reference():
        pairs.append(pair)
        if len(pairs) == 2:
            break
    (first, first_ref), (second, second_ref) = pairs
    assert np.array_equal(first, spoken) and first_ref is not None
    assert np.array_equal(first_ref, played)
    assert np.array_equal(second, spoken) and second_ref is None


@pytest.mark.parametrize("echo", [None, HandsetEcho(-10, 20)])
async def test_the_room_talks_under_every_mic_frame_the_callers_silence_too(
    echo: HandsetEcho | None,
) -> None:
    from payphone.sim.room import RoomSound

    room = np.arange(1, 1001, dtype=np.float32)  # a ramp: each sample says where it came from
    mic = MemorySource(MIC, 30)
    handset = Handset(mic, MemorySink(EAR), echo, room=RoomSound(room))
    mic.push(np.full(480, 5000, dtype=np.int16))  # the caller's one frame, then silence
    got = []
    async for frame in handset.frames():
        got.append(frame.astype(np.int32))
        if len(got) == 3:
            break
    looped = np.concatenate([room, room])[: 3 * 480].astype(np.int32)
    assert np.array_equal(got[0], 5000 + looped[:480])  # nothing played: no echo under it
    assert np.array_equal(np.concatenate(got[1:]), looped[480:])  # the room after the caller
