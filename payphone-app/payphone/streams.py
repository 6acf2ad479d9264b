"""Closing async streams for sure: a hang-up must close the model stream, not leave it to GC.

And one mark a text stream can carry: `HIT_LIMIT`, an empty piece a chat backend yields last
when the model stopped because it reached its token limit (`num_predict`), not because it was
done. Empty, so every consumer that joins pieces is unaffected; the reply path (`payphone.reply`)
sees it and drops the unfinished sentence it ended in instead of speaking half of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TypeVar

T = TypeVar("T")


class _LimitMark(str):
    """The type of `HIT_LIMIT` (a `str`, so a stream of pieces stays `AsyncIterator[str]`)."""

    __slots__ = ()


HIT_LIMIT: Final[str] = _LimitMark()
"""Yielded last by a backend whose model stopped at its token limit (finish reason "length")."""


def hit_limit(piece: str) -> bool:
    """Whether `piece` is the `HIT_LIMIT` mark (any text made from it is a plain `str`)."""
    return isinstance(piece, _LimitMark)


@asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Like `contextlib.aclosing`, for any async iterator (generators have `aclose`)."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
