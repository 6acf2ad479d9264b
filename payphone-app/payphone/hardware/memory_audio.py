"""In-memory audio for tests and the simulator: a mic you push audio into, an earpiece that records.

Both keep real time like a device would: the mic yields silence at the frame rate when nothing is
queued, and the earpiece consumes one buffer per buffer period, so timers and hang-up latency
behave as on the phone. Pushed mic audio is delivered as fast as it is read (no pacing).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from payphone.hardware.base import AudioSink, AudioSource
from payphone.pcm import Pcm


class MemorySource(AudioSource):
    """A microphone fed by `push`; silence at real-time pace in between.

    `live=True`: a real microphone pushes the frames (interactive mode), so no silence is made
    up between them.
    """

    def __init__(self, sample_rate: int = 16000, frame_ms: int = 30, live: bool = False) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.live = live
        self._pending: collections.deque[Pcm] = collections.deque()
        self._partial = np.zeros(0, dtype=np.int16)
        self._wakeup = asyncio.Event()

    def push(self, pcm: Pcm) -> None:
        """Queue audio for the mic (any length; split into frames on the way out)."""
        data = np.concatenate([self._partial, np.asarray(pcm, dtype=np.int16)])
        whole = len(data) - len(data) % self.frame_samples
        for start in range(0, whole, self.frame_samples):
            self._pending.append(data[start : start + self.frame_samples])
        self._partial = data[whole:]
        self._wakeup.set()

    @property
    def queued_frames(self) -> int:
        return len(self._pending)

    async def frames(self) -> AsyncIterator[Pcm]:
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
            yield silence


@dataclass(frozen=True)
class HeardBuffer:
    """One buffer the earpiece played, and when."""

    at: float
    pcm: Pcm


class MemorySink(AudioSink):
    """An earpiece that plays in real time (or `speed` times faster) and records what was heard.

    `keep_heard=False` (long soaks): only the count and the time of the last buffer are kept.
    """

    def __init__(
        self,
        sample_rate: int = 22050,
        buffer_ms: int = 20,
        max_queued_ms: int = 200,
        speed: float = 1.0,
        keep_heard: bool = True,
    ) -> None:
        self.sample_rate = sample_rate
        self.buffer_samples = sample_rate * buffer_ms // 1000
        self.max_queued = sample_rate * max_queued_ms // 1000
        self.speed = speed
        self.heard: list[HeardBuffer] = []
        self.keep_heard = keep_heard
        self.buffers_played = 0
        self._last_at: float | None = None
        self._queue: collections.deque[Pcm] = collections.deque()
        self._queued = 0
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._data = asyncio.Event()
        self._player: asyncio.Task[None] | None = None

    @property
    def playing(self) -> bool:
        return self._queued > 0

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
            piece = data[start : start + self.buffer_samples]
            self._queue.append(piece)
            self._queued += len(piece)
            self._idle.clear()
            self._data.set()

    async def drain(self) -> None:
        await self._idle.wait()

    def stop(self) -> None:
        self._queue.clear()
        self._queued = 0
        self._space.set()
        self._idle.set()

    async def _play_forever(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._data.clear()
                await self._data.wait()
                continue
            piece = self._queue.popleft()
            self._queued -= len(piece)
            self._space.set()
            self._last_at = time.monotonic()
            self.buffers_played += 1
            if self.keep_heard:
                self.heard.append(HeardBuffer(self._last_at, piece))
            if self.speed > 0:
                await asyncio.sleep(len(piece) / self.sample_rate / self.speed)
            if not self._queue:
                self._idle.set()

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
