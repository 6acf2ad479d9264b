"""Putting sound in the earpiece, cancellably: a cancelled play silences the sink at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from payphone.hardware.base import AudioSink
from payphone.pcm import Pcm


async def play_and_wait(sink: AudioSink, pcm: Pcm) -> None:
    """Play a clip to the end; if cancelled (hang-up, key), the sink goes silent at once."""
    try:
        await sink.play(pcm)
        await sink.drain()
    except asyncio.CancelledError:
        sink.stop()
        raise


async def play_frames(sink: AudioSink, frames: Iterator[Pcm] | AsyncIterator[Pcm]) -> None:
    """Play a (possibly endless) tone or stream; the sink's back-pressure paces it."""
    try:
        if isinstance(frames, AsyncIterator):
            async for frame in frames:
                await sink.play(frame)
        else:
            for frame in frames:
                await sink.play(frame)
        await sink.drain()
    except asyncio.CancelledError:
        sink.stop()
        raise
