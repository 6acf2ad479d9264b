"""`payphone.bridge.ThreadStream`: a worker thread's items, in order, on the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from payphone.bridge import ThreadStream


async def test_items_arrive_in_order_and_the_worker_is_finished_at_the_end() -> None:
    stream = ThreadStream(lambda stop: iter(range(200)), name="counter")
    assert [item async for item in stream] == list(range(200))
    assert stream.finished.done()
    assert stream.stop.is_set()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_an_executor_runs_the_producer() -> None:
    names: list[str] = []

    def produce(stop: threading.Event) -> Iterator[int]:
        names.append(threading.current_thread().name)
        yield 1

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="synth") as executor:
        assert [x async for x in ThreadStream(produce, executor=executor)] == [1]
    assert names[0].startswith("synth")


async def test_the_producers_exception_is_raised_in_the_consumer() -> None:
    def produce(stop: threading.Event) -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("the model broke")

    stream = ThreadStream(produce)
    assert [await anext(stream), await anext(stream)] == [1, 2]
    with pytest.raises(ValueError, match="the model broke"):
        await anext(stream)
    assert stream.stop.is_set()


async def test_items_after_stop_are_dropped_and_the_producer_is_closed_in_its_thread() -> None:
    go = threading.Event()
    closed_in: list[str] = []

    def produce(stop: threading.Event) -> Iterator[str]:
        try:
            yield "first"
            go.wait(5)
            yield "late"  # a producer that did not check `stop`
            yield "later"
        finally:
            closed_in.append(threading.current_thread().name)

    stream = ThreadStream(produce, name="producer")
    assert await anext(stream) == "first"
    stream.stop.set()
    go.set()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert closed_in == ["producer"]


async def test_cancelling_the_consumer_sets_stop() -> None:
    seen_stop = threading.Event()

    def produce(stop: threading.Event) -> Iterator[str]:
        yield "first"
        if stop.wait(5):  # blocked, as in a long sentence, until the caller hangs up
            seen_stop.set()
        yield "late"

    stream = ThreadStream(produce)
    got: list[str] = []

    async def consume() -> None:
        async for item in stream:
            got.append(item)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.stop.is_set()
    await asyncio.wait_for(asyncio.wrap_future(stream.finished), 5)
    assert seen_stop.is_set()
    assert got == ["first"]


async def test_aclose_waits_for_the_worker_and_its_lock() -> None:
    lock = threading.Lock()  # like the embedded model's: one generation at a time

    def produce(stop: threading.Event) -> Iterator[int]:
        with lock:
            n = 0
            while not stop.wait(0.05):
                yield n
                n += 1

    stream = ThreadStream(produce)
    assert await anext(stream) == 0
    await stream.aclose()
    assert stream.finished.done()
    assert not lock.locked()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


def test_a_closed_loop_is_tolerated(monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    go = threading.Event()

    def produce(stop: threading.Event) -> Iterator[int]:
        yield 1
        go.wait(5)
        yield 2  # handed to a loop that is gone

    async def first() -> tuple[ThreadStream[int], int]:
        stream = ThreadStream(produce)
        return stream, await anext(stream)

    stream, item = asyncio.run(first())
    assert item == 1
    go.set()
    assert stream.finished.result(timeout=5) is None
    assert errors == []
