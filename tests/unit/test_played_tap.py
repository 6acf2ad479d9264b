"""PlayedTap: device-rate buffers in, at their sounding time; mic-rate spans of time out.

Times are made-up monotonic instants (the tap never reads the clock), so every offset is exact.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from payphone.hardware.base import AudioSource
from payphone.hardware.played_tap import PlayedTap, StreamClock
from payphone.pcm import Pcm

MIC = 16000
T0 = 5000.25  # a monotonic instant, not on any sample grid's zero


def tone(rate: int, seconds: float, hz: float = 1000.0, amp: float = 10000.0) -> Pcm:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def play_blocks(
    tap: PlayedTap, pcm: Pcm, start: float, block_ms: int = 20, late_s: list[float] | None = None
) -> None:
    """Hand `pcm` over in blocks as the playback thread does, each stamped when it sounds."""
    block = tap.device_rate * block_ms // 1000
    for k, i in enumerate(range(0, len(pcm), block)):
        late = late_s[k] if late_s else 0.0
        tap.played(pcm[i : i + block], start + i / tap.device_rate + late)


def read_frames(tap: PlayedTap, start: float, seconds: float, frame_ms: int = 30) -> Pcm:
    """Consecutive mic-frame spans, joined, as the capture thread asks for them."""
    n = MIC * frame_ms // 1000
    frames = [tap.span(start + k * n / MIC, n) for k in range(round(seconds * MIC) // n)]
    return np.concatenate(frames)


def sine_residual(x: Pcm, hz: float) -> float:
    """Largest deviation from the best-fitting sine at `hz` (a click shows here)."""
    t = np.arange(len(x)) / MIC
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis.T, x.astype(np.float64), rcond=None)
    return float(np.abs(x - coef @ basis).max())


def purity_db(x: Pcm, hz: float) -> float:
    """Energy within ±50 Hz of `hz` over everything else, through a Blackman-Harris window."""
    from scipy.signal import windows

    spectrum = np.abs(np.fft.rfft(x * windows.blackmanharris(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / MIC)
    near = np.abs(freqs - hz) <= 50
    return float(10 * np.log10(spectrum[near].sum() / spectrum[~near].sum()))


@pytest.mark.parametrize("device_rate", [48000, 44100, 22050, 16000])
def test_a_tone_in_20ms_blocks_comes_out_as_a_clean_tone(device_rate: int) -> None:
    tap = PlayedTap(device_rate, MIC)
    play_blocks(tap, tone(device_rate, 1.5), T0)

    got = read_frames(tap, T0 + 0.1, 1.2)  # 40 frames, away from the run's two edges

    assert np.abs(got).max() > 9000  # the tone is there, at its level
    assert sine_residual(got, 1000.0) < 40  # no block-edge or frame-edge click (amplitude 10000)
    assert purity_db(got, 1000.0) > 60


def test_late_stamps_do_not_tear_a_run_apart() -> None:
    # the playback thread wakes late now and then: the estimates are late, never early
    rng = np.random.default_rng(1)
    late = [0.0, *rng.uniform(0.0, 0.02, 74).tolist()]  # up to a period, within `gap_ms`
    tap = PlayedTap(48000, MIC)
    play_blocks(tap, tone(48000, 1.5), T0, late_s=late)

    got = read_frames(tap, T0 + 0.1, 1.2)

    assert tap.runs == 1
    assert sine_residual(got, 1000.0) < 40
    # and it sits where the earliest (true) stamp put it: a zero crossing at T0, rising
    head = tap.span(T0 - 0.001, 32)
    assert np.abs(head[:14]).max() < 300 and head[17] > 1000


def test_a_span_lands_at_the_right_offset() -> None:
    tap = PlayedTap(48000, MIC)
    click = np.zeros(960, np.int16)
    click[480] = 30000  # 10 ms into the block
    tap.played(np.zeros(960, np.int16), T0)
    tap.played(click, T0 + 0.02)

    got = tap.span(T0, 800)  # 50 ms from T0: the click is at 30 ms = sample 480

    assert abs(int(np.argmax(got)) - 480) <= 1
    assert got.max() > 5000
    later = tap.span(T0 + 0.025, 160)  # starting 5 ms before it: sample 80
    assert abs(int(np.argmax(later)) - 80) <= 1


def test_gaps_the_future_and_the_forgotten_past_read_as_zeros() -> None:
    tap = PlayedTap(48000, MIC, keep_s=2.0)
    assert not tap.span(T0, 480).any()  # nothing played yet
    play_blocks(tap, tone(48000, 0.2), T0)
    play_blocks(tap, tone(48000, 0.2), T0 + 0.7)  # the sink idled for half a second

    assert tap.runs == 2
    assert np.abs(tap.span(T0 + 0.05, 480)).max() > 9000
    assert not tap.span(T0 + 0.25, 4800).any()  # the gap, clear of the resampler's edges
    assert np.abs(tap.span(T0 + 0.75, 480)).max() > 9000  # the second run, at its own time
    assert not tap.span(T0 + 0.95, 480).any()  # not yet known: zeros
    assert tap.heard_until == pytest.approx(T0 + 0.9, abs=1e-4)

    play_blocks(tap, tone(48000, 0.2), T0 + 2.5)  # the ring holds 2 s: the first run is gone
    assert not tap.span(T0 + 0.05, 480).any()
    assert np.abs(tap.span(T0 + 2.55, 480)).max() > 9000


def test_a_cut_silences_everything_after_it() -> None:
    # the device is lost or closed while 1 s is still buffered ahead: none of that sounds
    tap = PlayedTap(48000, MIC)
    play_blocks(tap, tone(48000, 1.0), T0)
    tap.cut(T0 + 0.4)

    assert np.abs(tap.span(T0 + 0.3, 480)).max() > 9000
    assert not tap.span(T0 + 0.41, 4800).any()
    # the next buffer starts a new run at its own time, not glued to the cut one
    tap.played(tone(48000, 0.02), T0 + 0.6)
    assert tap.runs == 2
    assert not tap.span(T0 + 0.41, 2800).any()
    assert np.abs(tap.span(T0 + 0.6, 320)).max() > 9000


def test_the_writer_and_the_reader_can_run_at_once() -> None:
    tap = PlayedTap(48000, MIC)
    signal = tone(48000, 2.0)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for k in range(300):
                assert len(tap.span(T0 + k * 0.005, 480)) == 480
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    play_blocks(tap, signal, T0)
    thread.join()

    assert errors == []
    assert sine_residual(read_frames(tap, T0 + 0.1, 1.5), 1000.0) < 40


def test_a_stream_clock_keeps_the_lowest_recent_estimate() -> None:
    clock = StreamClock(window=3)
    assert clock.start is None
    assert clock.update(10.02) == 10.02
    assert clock.update(10.0) == 10.0  # an earlier one wins at once
    assert clock.update(10.03) == 10.0
    assert clock.update(10.01) == 10.0
    assert clock.update(10.012) == 10.01  # the old low one left the window: a real shift shows
    endless = StreamClock()
    for estimate in (10.02, 10.0, 10.03, 10.01, 10.012):
        start = endless.update(estimate)
    assert start == 10.0  # without a window it only moves earlier


async def test_every_source_has_frames_with_reference() -> None:
    class Two(AudioSource):
        sample_rate = MIC
        frame_samples = 4

        async def frames(self) -> AsyncIterator[Pcm]:
            for value in (1, 2):
                yield np.full(4, value, np.int16)

    got = [(frame.tolist(), ref) async for frame, ref in Two().frames_with_reference()]

    assert got == [([1, 1, 1, 1], None), ([2, 2, 2, 2], None)]
