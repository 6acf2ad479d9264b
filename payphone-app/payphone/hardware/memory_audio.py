"""In-memory audio for tests and the simulator: a mic you push audio into, an earpiece that records.

Both keep real time like a device would: the mic yields silence at the frame rate when nothing is
queued, and the earpiece plays its buffers on a sample clock, so timers and hang-up latency
behave as on the phone. Pushed mic audio is delivered as fast as it is read (no pacing).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from payphone.hardware.base import AudioSink, AudioSource
from payphone.log import get_logger
from payphone.pcm import Pcm
from payphone.streams import closing

log = get_logger("earpiece")


class MemorySource(AudioSource):
    """A microphone fed by `push`; silence at real-time pace in between.

    `live=True`: a real microphone pushes the frames (interactive mode), so no silence is made
    up between them. A whole frame pushed with its `reference` (what a real earpiece played over
    the same span, e.g. a `PlayedTap`'s) hands that on to the echo canceller.
    """

    def __init__(self, sample_rate: int = 16000, frame_ms: int = 30, live: bool = False) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.live = live
        self._pending: collections.deque[tuple[Pcm, Pcm | None]] = collections.deque()
        self._partial = np.zeros(0, dtype=np.int16)
        self._wakeup = asyncio.Event()

    def push(self, pcm: Pcm, reference: Pcm | None = None) -> None:
        """Queue audio for the mic (any length; split into frames on the way out). `reference`
        is kept only for exactly one whole frame pushed on a frame boundary."""
        size = self.frame_samples
        if reference is not None and len(self._partial) == 0 and len(pcm) == len(reference) == size:
            self._pending.append((np.asarray(pcm, dtype=np.int16), reference))
            self._wakeup.set()
            return
        data = np.concatenate([self._partial, np.asarray(pcm, dtype=np.int16)])
        whole = len(data) - len(data) % size
        for start in range(0, whole, size):
            self._pending.append((data[start : start + size], None))
        self._partial = data[whole:]
        self._wakeup.set()

    @property
    def queued_frames(self) -> int:
        return len(self._pending)

    def take(self) -> Pcm | None:
        """The next pushed frame, or None: for a reader on its own clock (instead of `frames`)."""
        return self._pending.popleft()[0] if self._pending else None

    async def frames(self) -> AsyncIterator[Pcm]:
        async with closing(self.frames_with_reference()) as pairs:
            async for frame, _reference in pairs:
                yield frame

    async def frames_with_reference(self) -> AsyncIterator[tuple[Pcm, Pcm | None]]:
        frame_s = self.frame_samples / self.sample_rate
        silence = np.zeros(self.frame_samples, dtype=np.int16)
        next_due = time.monotonic()
        while True:
            if self._pending:
                yield self._pending.popleft()
                await asyncio.sleep(0)
                next_due = time.monotonic()
                continue
            self._wakeup.clear()
            if self.live:
                await self._wakeup.wait()
                continue
            next_due += frame_s
            delay = next_due - time.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                if self._pending:
                    continue
            yield silence, None


@dataclass(frozen=True)
class HeardBuffer:
    """One buffer the earpiece played: when its first sample sounded, and where on the clock."""

    at: float
    pcm: Pcm
    sample: int = 0

    @property
    def end(self) -> int:
        return self.sample + len(self.pcm)


@dataclass(frozen=True)
class Underrun:
    """The earpiece ran dry inside a stream: silent from `at` for `gap_s` until the next buffer."""

    at: float
    gap_s: float


class MemorySink(AudioSink):
    """An earpiece on a sample clock that plays in real time (or `speed` times faster) and records
    what was heard.

    Sample `n` of the earpiece sounds at `epoch + n / (sample_rate * speed)`. A buffer queued
    while earlier audio is still sounding (or queued) follows it end to end, whenever the player
    task gets round to it: event-loop jitter never opens gaps or overlaps in what is heard. A
    buffer queued after the earpiece fell silent starts when it arrives. A stream runs from a
    `play` until a `drain` returns or a `stop`; falling silent inside one means the producer
    could not keep up (a real device's underrun): it is kept in `underruns` and logged as
    `earpiece_underrun`. Silence between streams (nothing to say) is not an underrun.

    `stop` silences at once: queued buffers are dropped and the one sounding is cut at the
    current sample, so the record ends where the sound did.

    An echo canceller's reference: `played(start, n)` is what the earpiece played in samples
    `[start, start + n)` of its clock (zeros where it was silent), and `sample_at(t)` maps a
    `time.monotonic()` instant onto that clock. Only the past is final: ask for spans that end
    before `sample_at(time.monotonic())`, within the last `RECENT_S` seconds.

    `keep_heard=False` (long soaks): only the count, the time of the last buffer and the recent
    audio are kept.
    """

    RECENT_S = 2.0

    def __init__(
        self,
        sample_rate: int = 22050,
        buffer_ms: int = 20,
        max_queued_ms: int = 200,
        speed: float = 1.0,
        keep_heard: bool = True,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        self.sample_rate = sample_rate
        self.buffer_samples = sample_rate * buffer_ms // 1000
        self.max_queued = sample_rate * max_queued_ms // 1000
        self.speed = speed
        self.epoch = time.monotonic()
        self.heard: list[HeardBuffer] = []
        self.keep_heard = keep_heard
        self.buffers_played = 0
        self.underruns: list[Underrun] = []
        self._last_at: float | None = None
        self._queue: collections.deque[HeardBuffer] = collections.deque()
        self._recent: collections.deque[HeardBuffer] = collections.deque()
        self._queued = 0
        self._end = 0  # where the audio queued so far ends on the sample clock
        self._streaming = False
        self._muted = False
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._player: asyncio.Task[None] | None = None

    @property
    def playing(self) -> bool:
        return self._queued > 0

    def sample_at(self, t: float) -> int:
        """The earpiece's sample sounding at monotonic time `t`."""
        return round((t - self.epoch) * self.sample_rate * self.speed)

    def time_of(self, sample: int) -> float:
        """The monotonic time at which `sample` sounds."""
        return self.epoch + sample / (self.sample_rate * self.speed)

    def _ensure_player(self) -> None:
        if self._player is None or self._player.done():
            self._player = asyncio.get_running_loop().create_task(self._play_forever())

    async def play(self, pcm: Pcm) -> None:
        self._ensure_player()
        data = np.asarray(pcm, dtype=np.int16)
        for start in range(0, len(data), self.buffer_samples):
            while self._queued >= self.max_queued:
                self._space.clear()
                await self._space.wait()
            self._enqueue(data[start : start + self.buffer_samples])

    def _enqueue(self, piece: Pcm) -> None:
        """Place the piece on the sample clock: end to end, unless the earpiece already ran dry."""
        now = self.sample_at(time.monotonic())
        start = self._end
        if start < now:
            start = now
            if self._streaming:
                gap_s = (now - self._end) / (self.sample_rate * self.speed)
                self.underruns.append(Underrun(self.time_of(self._end), gap_s))
                log.info("earpiece_underrun", gap_ms=round(gap_s * 1000, 1))
        self._streaming = True
        self._queue.append(HeardBuffer(self.time_of(start), piece, start))
        self._queued += len(piece)
        self._end = start + len(piece)
        self._idle.clear()
        self._wake.set()

    async def drain(self) -> None:
        await self._idle.wait()
        self._streaming = False

    def mute(self, muted: bool) -> None:
        """Silence from this sample on (or sound again) without dropping what is queued: the
        clock runs on, and what plays while muted is heard, and referenced, as silence."""
        if muted == self._muted:
            return
        now = time.monotonic()
        self._commit(now)
        self._muted = muted
        if muted:
            self._silence_sounding(max(self.sample_at(now), 0))

    def _silence_sounding(self, cut: int) -> None:
        """The buffer sounding now is silent from `cut` on."""
        if not self._recent or self._recent[-1].end <= cut:
            return
        sounding = self._recent.pop()
        pcm = sounding.pcm.copy()
        pcm[max(0, cut - sounding.sample) :] = 0
        quiet = dataclasses.replace(sounding, pcm=pcm)
        self._recent.append(quiet)
        if self.keep_heard and self.heard and self.heard[-1] is sounding:
            self.heard[-1] = quiet

    def stop(self) -> None:
        now = time.monotonic()
        self._commit(now)
        self._muted = False
        self._queue.clear()
        self._queued = 0
        cut = max(self.sample_at(now), 0)
        if self._end > cut:
            self._cut_sounding(cut)
            self._end = cut
        self._streaming = False
        self._space.set()
        self._idle.set()
        self._wake.set()

    def _cut_sounding(self, cut: int) -> None:
        """The buffer sounding now ends at `cut` (what was not yet heard never will be)."""
        if not self._recent or self._recent[-1].end <= cut:
            return
        sounding = self._recent.pop()
        kept = dataclasses.replace(sounding, pcm=sounding.pcm[: max(0, cut - sounding.sample)])
        if len(kept.pcm):
            self._recent.append(kept)
        if self.keep_heard and self.heard and self.heard[-1] is sounding:
            if len(kept.pcm):
                self.heard[-1] = kept
            else:
                self.heard.pop()

    def _commit(self, now: float) -> None:
        """Buffers whose first sample has sounded by `now` are heard."""
        while self._queue and self._queue[0].at <= now:
            buffer = self._queue.popleft()
            self._queued -= len(buffer.pcm)
            if self._muted:
                buffer = dataclasses.replace(buffer, pcm=np.zeros_like(buffer.pcm))
            self._space.set()
            self._last_at = buffer.at
            self.buffers_played += 1
            if self.keep_heard:
                self.heard.append(buffer)
            self._recent.append(buffer)
        horizon = self.sample_at(now) - round(self.RECENT_S * self.sample_rate * self.speed)
        while self._recent and self._recent[0].end < horizon:
            self._recent.popleft()

    async def _play_forever(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            self._commit(now)
            due = self._queue[0].at if self._queue else self.time_of(self._end)
            if not self._queue and due <= now:
                self._idle.set()
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout(due - now):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def played(self, start: int, n: int) -> Pcm:
        """What the earpiece played in samples `[start, start + n)`; zeros where it was silent."""
        self._commit(time.monotonic())
        out = np.zeros(n, dtype=np.int16)
        for buffer in reversed(self._recent):
            if buffer.end <= start:
                break
            lo, hi = max(start, buffer.sample), min(start + n, buffer.end)
            if lo < hi:
                out[lo - start : hi - start] = buffer.pcm[lo - buffer.sample : hi - buffer.sample]
        return out

    def heard_pcm(self) -> Pcm:
        """Everything played so far, joined."""
        if not self.heard:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([b.pcm for b in self.heard])

    def last_heard_at(self) -> float | None:
        return self._last_at

    async def aclose(self) -> None:
        self.stop()
        if self._player is not None:
            self._player.cancel()
            await asyncio.gather(self._player, return_exceptions=True)
