"""The echo reference's timing, end to end through PyAudioSink, its tap and PyAudioSource.

ALSA's null device cannot check this (it reports an empty buffer always; see
tests/integration/test_pyaudio_alsa.py), so here PyAudio's class is replaced by a card that keeps
real time and reports its buffers the way a sound card does: the hardware pointer moves a period
at a time, writes block while the buffer is full, reads block until a period is in. Its mic hears
the earpiece through an echo path (converters plus a few ms of air). The real threads, resamplers,
tap and echo canceller run on it; only PortAudio is replaced.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from scipy import signal

from payphone.config import AudioSettings, EchoSettings
from payphone.hardware import audio
from payphone.hardware.audio import REFERENCE_LEAD_MS, PyAudioSink, PyAudioSource
from payphone.speech.echo_canceller import EchoUnavailable, open_echo_canceller

RATE = 48000
PERIOD = 960  # 20 ms
MIC = 16000
DAC_S, AIR_S, ADC_S = 0.002, 0.004, 0.003  # the echo path PortAudio cannot see: 9 ms
ECHO_GAIN = 0.3


class Card:
    """One device clock for both directions, from `time.monotonic()` (see module doc)."""

    def __init__(self, seconds: float = 12.0) -> None:
        self.t0 = time.monotonic()
        self.sound = np.zeros(int(RATE * seconds), np.int16)  # what the DAC takes, by position
        self.lock = threading.Lock()

    def now(self) -> int:
        """Where the device really is."""
        return int((time.monotonic() - self.t0) * RATE)

    def position(self) -> int:
        """The hardware pointer as the driver reports it: a period at a time."""
        return self.now() // PERIOD * PERIOD

    def heard(self, start: int, n: int) -> np.ndarray:
        """The mic's samples for positions [start, start+n): the earpiece through the echo path."""
        shift = round((DAC_S + AIR_S + ADC_S) * RATE)
        at = np.arange(start, start + n) - shift
        with self.lock:
            out = np.where(at >= 0, self.sound[np.clip(at, 0, None)], 0)
        return np.round(out * ECHO_GAIN).astype(np.int16)


class Stream:
    """One blocking PortAudio stream on the card: what `_Device` calls, nothing more."""

    def __init__(self, card: Card, output: bool, frames_per_buffer: int) -> None:
        self.card = card
        self.output = output
        self.size = 2 * frames_per_buffer  # two periods, as PortAudio asks ALSA for
        self.appl = card.position()  # the application's pointer: an empty buffer

    def _wait_until(self, ready: Any) -> None:
        while not ready():
            time.sleep(0.002)

    def write(self, data: bytes, exception_on_underflow: bool = False) -> None:
        pcm = np.frombuffer(data, np.int16)
        if self.appl < self.card.now():  # ran dry: the new audio starts where the device is
            self.appl = self.card.now()
        self._wait_until(lambda: self.appl + len(pcm) - self.card.position() <= self.size)
        with self.card.lock:
            self.card.sound[self.appl : self.appl + len(pcm)] = pcm
        self.appl += len(pcm)

    def get_write_available(self) -> int:
        return max(0, self.size - max(0, self.appl - self.card.position()))

    def read(self, n: int, exception_on_overflow: bool = False) -> bytes:
        self._wait_until(lambda: self.card.position() >= self.appl + n)
        pcm = self.card.heard(self.appl, n)
        self.appl += n
        return pcm.tobytes()

    def get_read_available(self) -> int:
        return max(0, self.card.position() - self.appl)

    def get_output_latency(self) -> float:
        return (self.size - PERIOD) / RATE

    def get_input_latency(self) -> float:
        return (self.size - PERIOD) / RATE

    def close(self) -> None:
        pass


def trail(mic: np.ndarray, ref: np.ndarray, at: int, n: int, most: int) -> int:
    """How many samples the echo in `mic[at:at+n]` trails `ref` (negative: it comes first)."""
    piece = mic[at : at + n].astype(np.float64)
    lo = max(0, at - most)
    around = ref[lo : at + n + most].astype(np.float64)
    corr = signal.correlate(around, piece, mode="valid")
    energy = np.convolve(around**2, np.ones(n), mode="valid")[: len(corr)]
    k = int(np.argmax(np.abs(corr) / np.sqrt(np.maximum(energy, 1.0))))
    return at - (lo + k)


def speechlike(seconds: float) -> np.ndarray:
    """Bursts of telephone-band noise, 3 a second, over a quiet 1 kHz tone."""
    rng = np.random.default_rng(5)
    t = np.arange(int(MIC * seconds)) / MIC
    noise = signal.sosfilt(
        signal.butter(4, [300, 3400], btype="band", fs=MIC, output="sos"),
        rng.standard_normal(len(t)),
    )
    bursts = signal.sosfilt(
        signal.butter(2, 30, fs=MIC, output="sos"), (np.sin(2 * np.pi * 3 * t) > 0) * 1.0
    )
    return np.round(3750 * noise * bursts + 1500 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)


async def test_the_reference_leads_the_echo_on_a_card_that_reports_its_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    card = Card()

    class FakePyAudio:
        def open(self, *, frames_per_buffer: int, **kwargs: Any) -> Stream:
            return Stream(card, bool(kwargs.get("output")), frames_per_buffer)

        def terminate(self) -> None:
            pass

    monkeypatch.setattr(audio.pyaudio, "PyAudio", FakePyAudio)
    settings = AudioSettings(device_rate=RATE, buffer_ms=20)
    sink = PyAudioSink(settings, sample_rate=MIC, reference_rate=MIC)
    source = PyAudioSource(settings, MIC, 30, tap=sink.tap)
    mics: list[np.ndarray] = []
    refs: list[np.ndarray] = []

    async def listen() -> None:
        async for frame, reference in source.frames_with_reference():
            assert reference is not None
            mics.append(frame)
            refs.append(reference)

    listener = asyncio.create_task(listen())
    try:
        await asyncio.sleep(0.5)
        await sink.play(speechlike(2.5))
        await sink.drain()
        await asyncio.sleep(0.5)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await source.aclose()
        await sink.aclose()

    mic, ref = np.concatenate(mics), np.concatenate(refs)
    heard = np.flatnonzero(ref)
    first, last = int(heard[0]), int(heard[-1])
    assert (last - first) / MIC == pytest.approx(2.5, abs=0.1)
    # the echo trails its reference in every 400 ms piece (each holds a burst) by the path
    # PortAudio cannot see (9 ms) plus the lead, give or take a period of late estimates. (From
    # 100 ms in: the onset's piece can match a tone period elsewhere.)
    pieces = range(first + MIC // 10, last - 6400, 3200)
    lags_ms = [trail(mic, ref, i, 6400, MIC // 5) * 1000 / MIC for i in pieces]
    path_ms = (DAC_S + AIR_S + ADC_S) * 1000
    assert min(lags_ms) > 0, lags_ms
    assert path_ms + REFERENCE_LEAD_MS - 21 <= np.median(lags_ms), lags_ms
    assert np.median(lags_ms) <= path_ms + REFERENCE_LEAD_MS + 21, lags_ms
    # and the real echo canceller takes the echo out of these very pairs
    try:
        canceller = open_echo_canceller(EchoSettings(), MIC)
    except EchoUnavailable as exc:
        pytest.skip(str(exc))
    frame = MIC * 30 // 1000
    out = np.concatenate(
        [
            canceller.process(mic[i : i + frame], ref[i : i + frame]).vad
            for i in range(0, len(mic), frame)
        ]
    )
    # ERLE per 100 ms, median over the echo: ~54 dB here; with the same pairs shifted so the
    # reference lags by 16-56 ms, 27-31 dB (AEC3's dips, alike either way, sink the mean)
    erles = [
        10
        * np.log10(
            np.mean(mic[i : i + 1600].astype(np.float64) ** 2)
            / max(np.mean(out[i : i + 1600].astype(np.float64) ** 2), 1e-9)
        )
        for i in range(first + MIC // 5, last - 1600, 1600)
    ]
    erle = float(np.median(erles))
    print(f"pyaudio_timing: lags {[round(x, 1) for x in lags_ms]} ms, ERLE {erle:.1f} dB")
    assert erle > 40
