"""Putting sound in the earpiece. Cancelling a play stops feeding the sink; silencing what is
already queued is the interrupter's job (`Call.interrupt`), so there is one place that does it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from payphone.hardware.base import AudioSink
from payphone.pcm import Pcm


async def play_and_wait(sink: AudioSink, pcm: Pcm) -> None:
    """Play a clip to the end."""
    await sink.play(pcm)
    await sink.drain()


async def play_frames(sink: AudioSink, frames: Iterator[Pcm] | AsyncIterator[Pcm]) -> None:
    """Play a (possibly endless) tone or stream; the sink's back-pressure paces it."""
    if isinstance(frames, AsyncIterator):
        async for frame in frames:
            await sink.play(frame)
    else:
        for frame in frames:
            await sink.play(frame)
    await sink.drain()
