"""A worker thread's output as an async iterator: the one bridge from blocking producers to asyncio.

Piper and llama.cpp hold the CPU for a whole sentence or token, so they run in a worker thread
and hand each result to the event loop as soon as it exists. The producer is an iterator made
and run in the worker thread; it is given the stream's `stop` event and should check it between
items. `stop` is set when the consumer closes the stream, is cancelled while waiting for an item,
or drops the stream; the worker then asks the producer for nothing more and closes it (a
generator's `finally` and `with` blocks run in the worker thread), and an item that arrives after
`stop` is dropped. An exception from the producer is raised in the consumer. If the event loop has
closed meanwhile (a cancelled call at shutdown), the worker's late hand-overs go nowhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
Producer = Callable[[threading.Event], Iterable[T]]


class _End:
    """The worker's last hand-over: the producer finished, or `error` is what it raised."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _work(
    produce: Producer[T],
    stop: threading.Event,
    finished: concurrent.futures.Future[None],
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[T | _End],
) -> None:
    """The worker thread (it holds no reference to the stream, so a dropped stream is freed)."""

    def hand_over(item: T | _End) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    end = _End()
    try:
        items = iter(produce(stop))
        try:
            for item in items:
                if stop.is_set():
                    break  # late: dropped
                hand_over(item)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
    except BaseException as exc:  # raised in the consumer
        end = _End(exc)
    finally:
        finished.set_result(None)
        hand_over(end)


class ThreadStream(Generic[T]):
    """The items of `produce(stop)`, run in a worker thread, as an async iterator.

    Make it in a running event loop: the worker starts at once, on `executor` when given (one
    long-lived thread, say), else on a new daemon thread called `name`. `finished` is done when
    the worker has returned: the producer is closed and whatever it held (a lock) is released.
    """

    def __init__(
        self,
        produce: Producer[T],
        *,
        executor: concurrent.futures.Executor | None = None,
        name: str = "thread-stream",
    ) -> None:
        self.stop = threading.Event()
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()
        self._closed = False
        work = functools.partial(
            _work, produce, self.stop, self.finished, asyncio.get_running_loop(), self._queue
        )
        if executor is not None:
            executor.submit(work)
        else:
            threading.Thread(target=work, name=name, daemon=True).start()

    def __aiter__(self) -> ThreadStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled: the consumer is gone
            self._close()
            raise
        if isinstance(item, _End):
            self._close()
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def _close(self) -> None:
        self._closed = True
        self.stop.set()

    async def aclose(self) -> None:
        """Stop the worker and, unless this task is being cancelled, wait until it has finished
        (the item in hand, one sentence or one token)."""
        self._close()
        task = asyncio.current_task()
        if not self.finished.done() and not (task is not None and task.cancelling()):
            await asyncio.shield(asyncio.wrap_future(self.finished))

    def __del__(self) -> None:
        self.stop.set()  # dropped without closing: the worker need not go on
