"""Model text -> what the voice may say: the output guard, then the chunker, streaming.

Both stages close their source when they stop (a length cap, a blocked phrase, a hang-up), so
the model stops generating as soon as nothing more will be spoken.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from payphone.reply.chunker import ChunkerConfig, chunk_stream
from payphone.reply.guard import GuardConfig, guard_stream


class Speakable(Protocol):
    """Model pieces in, speakable chunks out; `on_guard` hears why the output guard ended a
    reply early (`guard_stream`)."""

    def __call__(
        self, pieces: AsyncIterator[str], on_guard: Callable[[str], None] | None = None
    ) -> AsyncIterator[str]: ...


def make_speakable(
    guard: GuardConfig | None = None, chunker: ChunkerConfig | None = None
) -> Speakable:
    """A stage for the turn pipeline: token pieces in, speakable chunks out."""

    def speakable(
        pieces: AsyncIterator[str], on_guard: Callable[[str], None] | None = None
    ) -> AsyncIterator[str]:
        return chunk_stream(guard_stream(pieces, guard, on_guard), chunker)

    return speakable
