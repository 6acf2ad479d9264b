"""What the earpiece really played, on the `time.monotonic()` clock: the echo canceller's reference.

The echo canceller needs, for each mic frame, what the earpiece sounded over the same instants (the
device's output, time-aligned), not what was queued: queued audio may be dropped by `stop()`, and
it sounds only after the device buffer ahead of it. So the playback thread hands the tap every
buffer right after PortAudio took it, with the moment it starts to sound, and the capture thread
asks for a span of time. Both threads share one lock; each side's work is a copy of a buffer, plus
one resampling of a ~50 ms window per mic frame on the capture side while something played.

Timing. Per buffer the playback thread estimates when it starts to sound (see
`payphone.hardware.audio._Device.output_starts_at`); the estimates are late, never early, by
however long a thread or the driver's pointer lagged (a late one would make the reference lag
the echo, which AEC3 cannot cancel). A contiguous run of buffers is one device stream: its start
is the lowest estimate since it began (`StreamClock`), and buffer k sits at start + samples before
it, so scheduling noise never tears the signal apart (the start moves only earlier, when an
earlier estimate comes). An estimate later than the run by more than `gap_ms` is a new run (the
device ran dry and started again: after the sink idled, or the device came back); the time in
between reads as silence. `gap_ms` must exceed
the estimates' noise (up to one device period); a real gap shorter than it is taken as no gap,
which puts the rest of the run that much early in the tap: its reference then leads the echo by
that much more, which AEC3 follows. (So does a device clock slower than the system's: ~6 ms a
minute at 100 ppm, until it is `gap_ms` off and a new run starts.)

Resampling. The tap keeps the device-rate samples (a ring of `keep_s` seconds) and converts a span
to the mic's rate when asked, with soxr in one shot on a window padded by `MARGIN_S` each side and
aligned to the two rates' common grid, so consecutive spans join seamlessly (measured: within 2
LSB of resampling the whole stream at once, for every allowed device rate). A streaming soxr
resampler in the playback thread was the first idea; it holds back 20-40 ms of output (HQ: up to
40 ms, measured with 20 ms buffers), so the newest reference would arrive after the mic frames
that need it.
"""

from __future__ import annotations

import collections
import math
import threading

import numpy as np
import soxr

from payphone.pcm import Pcm

MARGIN_S = 0.01  # soxr HQ's filter reaches ~2-5 ms; 10 ms of padding makes a span exact


class StreamClock:
    """When a continuous device stream started on the monotonic clock, from late-biased estimates.

    Each buffer gives one estimate (its own start minus the samples before it). A thread woken late
    or a driver that updates its pointer once per period makes an estimate late, never early, so
    the lowest estimate is the best one. With a `window` only the last that many count, so a real
    shift later (the device's crystal drifting from the system clock, an overrun that lost input)
    shows in an endless stream; without one the start only ever moves earlier.
    """

    def __init__(self, window: int | None = None) -> None:
        self._estimates: collections.deque[float] = collections.deque(maxlen=window)

    @property
    def start(self) -> float | None:
        return min(self._estimates) if self._estimates else None

    def update(self, estimate: float) -> float:
        """Add one estimate; the stream's start as now believed."""
        self._estimates.append(estimate)
        return min(self._estimates)

    def reset(self) -> None:
        self._estimates.clear()


class PlayedTap:
    """The earpiece's output for the last `keep_s` seconds, readable at `sample_rate` by time.

    Written by the playback thread (`played`, `cut`), read by the capture thread (`span`).
    Instants nothing played, older than `keep_s`, or not yet known read as zeros.
    """

    def __init__(
        self,
        device_rate: int,
        sample_rate: int = 16000,
        keep_s: float = 2.0,
        gap_ms: float = 40.0,
    ) -> None:
        self.device_rate = device_rate
        self.sample_rate = sample_rate
        self.gap_s = gap_ms / 1000.0
        self._ring = np.zeros(max(1, round(device_rate * keep_s)), np.int16)
        self._end: int | None = None  # device-rate position one past the newest known sample
        self._clock = StreamClock()
        self._run_samples = 0  # samples in the current contiguous run before the next buffer
        self._lock = threading.Lock()
        common = math.gcd(device_rate, sample_rate)
        self._dev_step = device_rate // common  # device samples per grid step
        self._mic_step = sample_rate // common  # mic samples per grid step
        margin = math.ceil(sample_rate * MARGIN_S)
        self._margin = -(-margin // self._mic_step) * self._mic_step
        self.runs = 0  # contiguous runs begun (a new one after each gap, cut or device change)

    # ---- playback thread --------------------------------------------------------------------

    def played(self, pcm: Pcm, sounds_at: float) -> None:
        """`pcm` (device rate) was handed to the device and starts to sound at `sounds_at`."""
        data = np.asarray(pcm, dtype=np.int16)
        if len(data) == 0:
            return
        with self._lock:
            estimate = sounds_at - self._run_samples / self.device_rate
            start = self._clock.start
            if start is None or estimate > start + self.gap_s:
                self._clock.reset()
                self._run_samples = 0
                estimate = sounds_at
                self.runs += 1
            start = self._clock.update(estimate)
            position = round(start * self.device_rate) + self._run_samples
            self._write(position, data)
            self._run_samples += len(data)

    def cut(self, at: float) -> None:
        """Nothing sounds from `at` on (the device closed or was lost): forget what was after it."""
        with self._lock:
            self._clock.reset()
            self._run_samples = 0
            if self._end is None:
                return
            begin = max(math.ceil(at * self.device_rate), self._end - len(self._ring))
            if begin < self._end:
                self._put(begin, np.zeros(self._end - begin, np.int16))

    def _write(self, position: int, data: Pcm) -> None:
        size = len(self._ring)
        end = self._end
        if end is None or position - end >= size:
            self._ring[:] = 0
        elif position > end:
            self._put(end, np.zeros(position - end, np.int16))
        new_end = position + len(data) if end is None else max(end, position + len(data))
        oldest = new_end - size  # what a write older than this would overwrite is newer audio
        if position < oldest:
            data = data[oldest - position :]
            position = oldest
        if len(data):
            self._put(position, data)
        self._end = new_end

    def _put(self, position: int, data: Pcm) -> None:
        size = len(self._ring)
        at = position % size
        first = min(len(data), size - at)
        self._ring[at : at + first] = data[:first]
        self._ring[: len(data) - first] = data[first:]

    # ---- capture thread ---------------------------------------------------------------------

    @property
    def heard_until(self) -> float | None:
        """The monotonic time the newest known sample ends (None before anything played)."""
        with self._lock:
            return None if self._end is None else self._end / self.device_rate

    def span(self, start_time: float, n: int) -> Pcm:
        """`n` samples at `sample_rate` of what sounded from `start_time` on (zeros: silence)."""
        if n <= 0:
            return np.zeros(0, np.int16)
        first = round(start_time * self.sample_rate)
        if self.device_rate == self.sample_rate:
            with self._lock:
                return self._take(first, first + n)
        step = self._mic_step
        low = (first // step) * step - self._margin
        high = -(-(first + n + self._margin) // step) * step
        with self._lock:
            window = self._take(low // step * self._dev_step, high // step * self._dev_step)
        if not window.any():
            return np.zeros(n, np.int16)
        converted = np.asarray(
            soxr.resample(window, self.device_rate, self.sample_rate), dtype=np.int16
        )
        out = converted[first - low : first - low + n]
        if len(out) < n:  # soxr's length rounding; never seen on the aligned grid
            out = np.concatenate([out, np.zeros(n - len(out), np.int16)])
        return out

    def _take(self, begin: int, stop: int) -> Pcm:
        """Device-rate samples for positions [begin, stop), zeros where none is known."""
        out = np.zeros(stop - begin, np.int16)
        if self._end is None:
            return out
        size = len(self._ring)
        lo, hi = max(begin, self._end - size), min(stop, self._end)
        if lo >= hi:
            return out
        at = lo % size
        count = hi - lo
        first = min(count, size - at)
        out[lo - begin : lo - begin + first] = self._ring[at : at + first]
        out[lo - begin + first : hi - begin] = self._ring[: count - first]
        return out
