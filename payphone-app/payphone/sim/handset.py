"""The mouthpiece as the simulated phone hears it: the caller's voice, plus the earpiece's echo
and the room behind the caller (`room`: other people talking, `sim/room.py`), if given.

Without an echo path the handset hands on the in-memory mic's frames untouched, as the rig
always did. With one it keeps a sample clock like a sound card: mic sample `m` sounds at
`epoch + m / sample_rate`, and each frame is delivered once its span is over and the earpiece
has played through it. A frame holds the caller's next pushed frame (silence when there is
none) plus the echo of what the earpiece played over the same span, `delay_ms` earlier. A live
mic (interactive mode, a real microphone pushing frames) paces the frames itself: their spans
follow each other from the first frame on.

For an echo canceller, `frames_with_reference()` (the `AudioSource` hook) yields each mic frame
with the reference frame for the same span: what the earpiece played then (the sink's
sample-clocked output, resampled to the mic's rate; no delay, no filter). That is the pair
`EchoCanceller.process(mic, played)` (`payphone.speech.echo_canceller`) takes, and the phone's
mic pump hands it over. Without an echo path the reference is None (nothing leaks back, and the
unclocked mic cannot say when a frame was).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import numpy as np

from payphone.hardware.base import AudioSource
from payphone.hardware.memory_audio import MemorySink, MemorySource
from payphone.pcm import Pcm
from payphone.sim.echo_path import EchoPath, HandsetEcho, Samples
from payphone.sim.room import RoomSound
from payphone.streams import closing

WAIT_S = 0.002  # how long to wait for the earpiece to play through a frame's span, per try


def _pcm(samples: Samples) -> Pcm:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


class Handset(AudioSource):
    """The phone's mic: `mic`'s frames, with the echo of `sink` when `echo` is given.

    `keep=True`: every delivered frame is kept in `delivered` (tests, measurements); with an
    echo path `epoch` is when the first delivered sample sounded.
    """

    def __init__(
        self,
        mic: MemorySource,
        sink: MemorySink,
        echo: HandsetEcho | None = None,
        keep: bool = False,
        room: RoomSound | None = None,
    ) -> None:
        if echo is not None and sink.speed != 1:
            raise ValueError(f"an echo path needs a real-time earpiece, not speed {sink.speed}")
        self.mic = mic
        self.sink = sink
        self.echo = echo
        self.keep = keep
        self.room = room
        self.sample_rate = mic.sample_rate
        self.frame_samples = mic.frame_samples
        self.delivered: list[Pcm] = []
        self.epoch: float | None = None

    async def frames(self) -> AsyncIterator[Pcm]:
        if self.echo is None:
            async for pushed in self.mic.frames():
                frame = self._in_the_room(pushed)
                if self.keep:
                    self.delivered.append(frame)
                yield frame
            return
        async for frame, _reference in self.frames_with_reference():
            yield frame

    async def frames_with_reference(self) -> AsyncIterator[tuple[Pcm, Pcm | None]]:
        """(mic frame, reference frame) pairs over the same span, both int16 at the mic's rate;
        without an echo path the mic keeps no clock, so the reference is None."""
        if self.echo is None:  # a live mic may bring its earpiece's reference (interactive)
            async with closing(self.mic.frames_with_reference()) as pairs:
                async for pushed, played in pairs:
                    heard = self._in_the_room(pushed)
                    if self.keep:
                        self.delivered.append(heard)
                    yield heard, played
            return
        size, rate = self.frame_samples, self.sample_rate
        path = EchoPath(self.echo, self.sink.sample_rate, rate)
        clock = None if self.mic.live else time.monotonic()
        async with closing(self._caller_frames(clock)) as callers:
            frame: Pcm | None = await anext(callers)
            start = clock if clock is not None else time.monotonic() - size / rate
            fed, skip = self._align(start, rate)
            while frame is not None:
                fed = await self._play_through(path, fed, skip + size)
                if skip:
                    path.take(skip)
                    skip = 0
                reference, echo = path.take(size)
                heard = self._in_the_room(_pcm(frame.astype(np.float32) + echo))
                if self.keep:
                    self.delivered.append(heard)
                yield heard, _pcm(reference)
                frame = await anext(callers, None)

    def _in_the_room(self, frame: Pcm) -> Pcm:
        """The frame with the room's next samples under it (the caller's silence too)."""
        if self.room is None:
            return frame
        return _pcm(frame.astype(np.float32) + self.room.take(len(frame)))

    def _align(self, start: float, rate: int) -> tuple[int, int]:
        """Start the echo path on an earpiece sample that falls on a mic sample, at or before
        `start`; returns (that earpiece sample, mic samples from it to the first frame)."""
        step = self.sink.sample_rate // math.gcd(self.sink.sample_rate, rate)
        first = self.sink.sample_at(start) // step * step
        origin = self.sink.time_of(first)
        skip = max(0, round((start - origin) * rate))
        self.epoch = origin + skip / rate
        return first, skip

    async def _play_through(self, path: EchoPath, fed: int, needed: int) -> int:
        """Feed the path what the earpiece has played until `needed` samples come out of it."""
        while path.available < needed:
            played_to = self.sink.sample_at(time.monotonic())
            if played_to > fed:
                path.feed(self.sink.played(fed, played_to - fed))
                fed = played_to
            if path.available < needed:
                await asyncio.sleep(WAIT_S)
        return fed

    async def _caller_frames(self, start: float | None) -> AsyncIterator[Pcm]:
        """The caller's frames on the mic's clock from `start`; None: a live mic's own pace."""
        if start is None:
            async for pushed in self.mic.frames():
                yield pushed
            return
        size, rate = self.frame_samples, self.sample_rate
        silence = np.zeros(size, dtype=np.int16)
        index = 0
        while True:
            index += 1
            await asyncio.sleep(max(0.0, start + index * size / rate - time.monotonic()))
            taken = self.mic.take()
            yield silence if taken is None else taken

    async def aclose(self) -> None:
        await self.mic.aclose()
