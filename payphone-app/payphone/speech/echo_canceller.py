"""Echo cancellation: the persona's own voice taken out of the mic before VAD and STT hear it.

In a handset the earpiece sits a few centimetres from the mouthpiece, so whatever the phone plays
comes back into the mic 5-40 ms later at roughly -6 to -20 dB. WebRTC's AEC3 (the echo canceller
in Chrome) subtracts it, given what was played as the reference: an adaptive filter that learns
the earpiece-to-mic path plus a suppressor for what the filter misses. It runs through
`pywebrtc-audio`, a direct C++ binding with aarch64 wheels, no threads of its own, and the GIL
released while it works.

Chosen by measurement against `livekit` (the same AEC3 behind an RTC runtime), `pyaec` and
speexdsp on real Piper replies through a simulated handset path (issue 14): AEC3 removes 26-41 dB
of echo at -6..-20 dB and 5..40 ms, is above 15 dB within 0.1 s of a fresh start and does not
lose it when the persona's voice changes, and costs about 0.07 ms per 10 ms frame on the 2-core
dev machine. `livekit` scored the same but aborted about 1 process exit in 20 under load (its
runtime thread panics at exit); speexdsp kept double-talk best but needs seconds to converge and
its binding has no wheels; `pyaec` fell below 20 dB at -20 dB and cut the caller's voice.

`EchoCanceller.process(mic, played)` takes one mic frame and what the earpiece played over the same
span of time (time-aligned: the sink's output, not what was queued) and returns the mic frame
without the echo twice (`Cleaned`): AEC3's output for the VAD, which must never take our own voice
for a caller, and speexdsp's linear filter's for the words (`linear_echo`: Whisper and the
end-of-turn model), which must not lose the first syllable of a caller who talks over the persona.
Without speexdsp both are AEC3's. Frames are 16-bit mono at the call's rate, whole multiples of 10
ms (the VAD's 10/20/30 ms frames are): AEC3 works in 10 ms blocks, and the binding would zero-pad a
partial block, which breaks the stream. `load_echo_canceller` returns None, with the reason logged,
when the library cannot load: the phone then runs with barge-in off.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

import numpy as np

from payphone.config import EchoSettings, Settings
from payphone.log import get_logger, ms
from payphone.pcm import Pcm
from payphone.speech import linear_echo
from payphone.speech.linear_echo import LinearEchoFilter, LinearEchoUnavailable

log = get_logger("payphone.speech.echo_canceller")

LIBRARY = "pywebrtc-audio"
BLOCK_S = 0.01  # AEC3's block: 10 ms


class EchoUnavailable(Exception):
    """The echo canceller cannot run here; the message says why."""


class Cleaned(NamedTuple):
    """One mic frame without the earpiece's echo, for each of its two listeners."""

    vad: Pcm  # AEC3 with its suppressor: our own voice is gone, a caller's onset may be dented
    words: Pcm  # the linear filter only: a little echo left, the caller's voice whole


class EchoCanceller:
    """One phone's echo canceller: mic frames in, the same frames without the earpiece's echo.

    `processor` is a `pywebrtc_audio.AudioProcessor` (or anything with its `process(near, far)`,
    `reset()` and `stream_delay_ms`); `words` the linear filter for the words (None: they get
    AEC3's output). Safe to call from a worker thread: a lock serialises `process` and `reset`
    (the native processors are not thread-safe), and both libraries release the GIL, so the
    event loop keeps running meanwhile. Per frame it allocates only the output arrays.
    """

    def __init__(
        self,
        processor: Any,
        sample_rate: int,
        delay_ms: int = 0,
        words: LinearEchoFilter | None = None,
    ) -> None:
        self._processor = processor
        self._words = words
        self._lock = threading.Lock()
        self.sample_rate = sample_rate
        self.block = round(sample_rate * BLOCK_S)
        self.delay_ms = delay_ms
        self._silence = np.zeros(0, np.int16)  # the reference while nothing plays; grown once
        self.blocks = 0  # 10 ms blocks processed since the last reset
        self.busy_s = 0.0  # CPU time spent inside the library since the last reset
        # energy (sum of squares) of the mic going in and of what comes out, since the last
        # reset: over a stretch where only the earpiece spoke, their ratio is the ERLE
        self.energy_in = 0.0
        self.energy_out = 0.0
        self.energy_words = 0.0  # ...and out of the words' filter

    @property
    def has_words_filter(self) -> bool:
        return self._words is not None

    @property
    def words_filter(self) -> str:
        """What cleans the words: the linear filter and its tail, or AEC3 alone."""
        if self._words is None:
            return "AEC3 (no linear filter)"
        return f"{linear_echo.LIBRARY} linear filter, {self._words.tail_ms} ms tail"

    @property
    def delay_ms(self) -> int:
        """The earpiece-to-mic delay hint given to AEC3 (0: it estimates the delay alone)."""
        return int(self._processor.stream_delay_ms)

    @delay_ms.setter
    def delay_ms(self, value: int) -> None:
        with self._lock:  # not while a frame is inside the library
            self._processor.stream_delay_ms = int(value)

    @property
    def ms_per_block(self) -> float:
        """Mean CPU cost of one 10 ms block since the last reset, in milliseconds (the calling
        thread's CPU time: the library has no threads, and a busy machine does not inflate it)."""
        return 1000.0 * self.busy_s / self.blocks if self.blocks else 0.0

    def process(self, mic: Pcm | bytes, played: Pcm | bytes | None) -> Cleaned:
        """The mic frame with the echo of `played` removed, for the VAD and for the words.

        `played`: what the earpiece played during this frame's span, as many samples as `mic`;
        None when it played nothing (silence is fed, so AEC3's reference keeps step with the mic).
        """
        near = _as_pcm(mic)
        n = len(near)
        if n == 0 or n % self.block:
            raise ValueError(
                f"mic frame of {n} samples: AEC3 needs whole 10 ms blocks "
                f"({self.block} samples at {self.sample_rate} Hz)"
            )
        if played is None:
            far = self._silent(n)
        else:
            far = _as_pcm(played)
            if len(far) != n:
                raise ValueError(f"played has {len(far)} samples, the mic frame {n}")
        with self._lock:
            started = time.thread_time()
            out: Pcm = self._processor.process(near, far)
            words = out if self._words is None else self._words.process(near, far)
            self.busy_s += time.thread_time() - started
            self.blocks += n // self.block
            self.energy_in += _energy(near)
            out_energy = _energy(out)
            self.energy_out += out_energy
            self.energy_words += out_energy if words is out else _energy(words)
        return Cleaned(out, words)

    def new_call(self) -> None:
        """Off-hook: AEC3 starts afresh; the linear filter keeps what it learned (it needs
        seconds to converge, and only the words hear it).

        AEC3 carried over from earlier calls let the next call's dial tone through for its
        first 90-120 ms, barely reduced (1450 RMS in, 1450 out), from the third call of a
        session on: enough for the VAD to take the phone's own dial tone for a caller's
        "hello?" and stop it. A fresh AEC3 removes it from the first frame (26 RMS left), as it
        does on the first call. The meters (`energy_*`, `blocks`) run on."""
        with self._lock:
            self._processor.reset()

    def reset(self) -> None:
        """Forget the learned echo path and filter state, both filters'; settings stay."""
        with self._lock:
            self._processor.reset()
            if self._words is not None:
                self._words.reset()
            self.blocks = 0
            self.busy_s = 0.0
            self.energy_in = self.energy_out = self.energy_words = 0.0

    def close(self) -> None:
        """Free the linear filter's native state (AEC3's goes with its Python object)."""
        with self._lock:  # not while a frame is inside it; a frame after it gets AEC3's words
            words, self._words = self._words, None
            if words is not None:
                words.close()

    def _silent(self, n: int) -> Pcm:
        if len(self._silence) < n:
            self._silence = np.zeros(n, np.int16)
        return self._silence[:n]


def _as_pcm(frame: Pcm | bytes) -> Pcm:
    """int16 samples without a copy (bytes are viewed, not converted)."""
    if isinstance(frame, bytes | bytearray | memoryview):
        return np.frombuffer(frame, dtype=np.int16)
    if frame.dtype != np.int16:
        raise ValueError(f"PCM must be int16, got {frame.dtype}")
    return frame


def _energy(pcm: Pcm) -> float:
    samples = pcm.astype(np.float64)
    return float(np.dot(samples, samples))


def open_echo_canceller(echo: EchoSettings, sample_rate: int) -> EchoCanceller:
    """Build the canceller; raises `EchoUnavailable` with the reason when it cannot run."""
    if not echo.enabled:
        raise EchoUnavailable("echo.enabled = false")
    try:
        from pywebrtc_audio import AudioProcessor

        processor = AudioProcessor(
            sample_rate=sample_rate,
            num_channels=1,
            echo_cancellation=True,
            high_pass_filter=True,
            noise_suppression=echo.noise_suppression,
            stream_delay_ms=echo.delay_ms,
        )
    except Exception as exc:  # ImportError (no wheel, native library fails), ValueError (rate)
        raise EchoUnavailable(f"{LIBRARY}: {type(exc).__name__}: {exc}") from exc
    words = open_words_filter(echo, sample_rate)
    return EchoCanceller(processor, sample_rate, echo.delay_ms, words)


def open_words_filter(echo: EchoSettings, sample_rate: int) -> LinearEchoFilter | None:
    """The linear filter for the words, or None (logged, with the reason): the words then come
    from AEC3, and a caller's first syllable over the persona may be lost."""
    if echo.words_tail_ms == 0:
        return None
    try:
        return LinearEchoFilter(sample_rate, round(sample_rate * BLOCK_S), echo.words_tail_ms)
    except LinearEchoUnavailable as exc:
        log.warning(
            "words_echo_filter_unavailable",
            reason=str(exc),
            consequence="the words come from AEC3: a first syllable over the persona may be lost",
        )
        return None


def load_echo_canceller(settings: Settings) -> EchoCanceller | None:
    """The phone's echo canceller at the VAD's rate, or None (logged once, with the reason)."""
    started = time.monotonic()
    try:
        canceller = open_echo_canceller(settings.echo, settings.vad.sample_rate)
    except EchoUnavailable as exc:
        log.warning("echo_canceller_unavailable", reason=str(exc), consequence="barge-in off")
        return None
    log.info(
        "echo_canceller_loaded",
        library=LIBRARY,
        sample_rate=canceller.sample_rate,
        delay_ms=canceller.delay_ms,
        noise_suppression=settings.echo.noise_suppression,
        words=canceller.words_filter,
        load_ms=ms(time.monotonic() - started),
    )
    return canceller
