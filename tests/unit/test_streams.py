"""`payphone.streams.closing`, and the stream stages that close their source with it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import pytest

from payphone.bench.soak import FaultyBackend
from payphone.llm.base import ChatOptions
from payphone.reply.chunker import chunk_stream
from payphone.reply.guard import guard_stream
from payphone.sim.stand_ins import ScriptedBackend
from payphone.streams import closing

SENTENCES = ["One more sentence. "] * 50


class Source:
    """A reply source; with `aclose` like a generator, or a bare async iterator without it."""

    def __init__(self, can_close: bool = True) -> None:
        self.pieces = iter(SENTENCES)
        self.closed = False
        if can_close:
            self.aclose = self._aclose

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> str:
        try:
            return next(self.pieces)
        except StopIteration:
            raise StopAsyncIteration from None

    async def _aclose(self) -> None:
        self.closed = True


async def test_closing_closes_on_the_way_out_even_after_an_error() -> None:
    source = Source()

    async def hang_up() -> None:
        async with closing(source) as stream:
            assert await anext(stream) == SENTENCES[0]
            raise RuntimeError("hang-up")

    with pytest.raises(RuntimeError):
        await hang_up()
    assert source.closed
    async with closing(Source(can_close=False)) as bare:  # nothing to close: no error
        assert await anext(bare) == SENTENCES[0]


def _faulty(source: AsyncIterator[str]) -> AsyncIterator[str]:
    inner = ScriptedBackend()
    inner.stream = lambda messages, options: source  # type: ignore[method-assign]
    return FaultyBackend(inner, random.Random(0), fault_share=0.0).stream([], ChatOptions())


STAGES: dict[str, Callable[[AsyncIterator[str]], AsyncIterator[str]]] = {
    "chunk_stream": chunk_stream,
    "guard_stream": guard_stream,
    "bench soak FaultyBackend": _faulty,
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("can_close", [True, False])
async def test_a_stage_closed_early_closes_its_source(stage: str, can_close: bool) -> None:
    source = Source(can_close)
    stream = STAGES[stage](source)
    assert (await anext(stream)).strip() == SENTENCES[0].strip()
    await stream.aclose()  # type: ignore[attr-defined]
    assert source.closed is can_close
