"""A circuit breaker: stop calling a dead Pi #2, probe it in the background, resume on its return.

Closed: calls go to the backend. After `failure_threshold` consecutive failures it opens: calls
fail at once with `LlmError("circuit_open")` (the caller hears the fallback without waiting for
timeouts) and a background task probes the backend, with back-off. While a probe runs the state
is half-open. A probe that succeeds re-primes the model with the last system prompt and closes
the breaker; calls use the backend again, no restart. `start()` probes once, so the service can
start without Pi #2: degraded, with the reason logged and shown in `status` for `doctor`.
`start(background=True)` does not wait for that first probe and warm-up at all (Pi #2 may take
minutes to load a model, or hang): the breaker is *starting*, calls fail fast with the busy line
until it closes, and the phone is ready meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.llm.prompt_style import Declared
from payphone.log import get_logger, ms

log = get_logger("payphone.llm.breaker")

CIRCUIT_OPEN = "circuit_open"

Probe = Callable[[], Awaitable[None]]
# a prompt to prime, or how to make it once the probe has reached the model (which may say
# what prompt style it was trained on)
SystemPrompt = str | Callable[[], str]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"
    STARTING = "starting"


@dataclass(frozen=True)
class BreakerStatus:
    """What `doctor` and the logs show: the state, and why it is not closed."""

    state: BreakerState
    failures: int
    last_cause: str | None
    last_detail: str
    open_since_s: float | None  # seconds the breaker has been open, None when closed
    probes: int  # probes since it opened

    def explain(self) -> str:
        """One line for `doctor` and the start-up log."""
        if self.state is BreakerState.CLOSED:
            return "LLM backend: up"
        if self.state is BreakerState.STARTING:
            return (
                "LLM backend: starting (probe and warm-up in the background); callers hear "
                "the 'all circuits are busy' line until it is up"
            )
        since = f" for {self.open_since_s:.0f} s" if self.open_since_s is not None else ""
        return (
            f"LLM backend: down{since} ({self.last_cause}: {self.last_detail}); callers hear "
            f"the 'all circuits are busy' line; probing in the background ({self.probes} so far)"
        )


class CircuitBreaker(ChatBackend):
    """Wraps a backend; `probe` is a cheap health check that raises `LlmError` on failure."""

    def __init__(
        self,
        backend: ChatBackend,
        probe: Probe,
        *,
        failure_threshold: int = 3,
        probe_interval_s: float = 2.0,
        probe_max_interval_s: float = 30.0,
        backoff: float = 2.0,
        name: str | None = None,
    ) -> None:
        self.backend = backend
        self.name = name  # the host, in its log events, when a failover holds several breakers
        self._log = log.bind(host=name) if name else log
        self._probe = probe
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self.probe_max_interval_s = probe_max_interval_s
        self.backoff = backoff
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._last_cause: str | None = None
        self._last_detail = ""
        self._opened_at: float | None = None
        self._probes = 0
        self._system_prompt: SystemPrompt | None = None
        self._examples: tuple[Message, ...] = ()
        self._prober: asyncio.Task[None] | None = None
        self._closed_event = asyncio.Event()
        self._closed_event.set()

    @property
    def status(self) -> BreakerStatus:
        return BreakerStatus(
            state=self._state,
            failures=self._failures,
            last_cause=self._last_cause,
            last_detail=self._last_detail,
            open_since_s=None if self._opened_at is None else time.monotonic() - self._opened_at,
            probes=self._probes,
        )

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def declared_prompt_style(self) -> Declared | None:
        return self.backend.declared_prompt_style

    async def wait_closed(self) -> None:
        """Return once the breaker is closed (tests, and start-up code that wants to wait)."""
        await self._closed_event.wait()

    async def start(
        self, system_prompt: SystemPrompt | None = None, *, background: bool = False
    ) -> BreakerStatus:
        """Probe once and warm up; on failure start degraded (open) and keep probing.

        `background`: return at once (state starting) and do all that in a task.
        `system_prompt` may be a function: it is called after each successful probe, so the
        prompt can depend on what the probe learnt about the model (its prompt style).
        """
        if system_prompt is not None:
            self._system_prompt = system_prompt
            self._examples = ()  # a call primes its persona's examples at pick-up
        if background:
            self._state = BreakerState.STARTING
            self._closed_event.clear()
            self._prober = asyncio.get_running_loop().create_task(
                self._start_up(), name="llm-breaker-start"
            )
            return self.status
        try:
            await self._up()
        except LlmError as exc:
            self._open(exc, reason="start-up")
        return self.status

    async def _up(self) -> None:
        """The backend answers its probe and has the last system prompt primed."""
        await self._probe()
        prompt = self._system_prompt
        if callable(prompt):
            prompt = prompt()
        if prompt is not None:
            await self.backend.warm_up(prompt, self._examples)

    async def _start_up(self) -> None:
        try:
            await self._up()
        except LlmError as exc:
            self._mark_open(exc, reason="start-up")
            await self._probe_until_up()
            return
        self._close()

    def _check(self) -> None:
        if self._state is not BreakerState.CLOSED:
            raise LlmError(
                CIRCUIT_OPEN, f"backend down ({self._last_cause}: {self._last_detail})"[:300]
            )

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        self._check()
        inner = self.backend.stream(messages, options)
        answered = False
        try:
            async for piece in inner:
                answered = True
                yield piece
        except LlmError as exc:
            self._record_failure(exc)
            raise
        except GeneratorExit:
            if answered:  # the consumer had enough (e.g. a length cap): the backend works
                self._failures = 0
            raise
        else:
            self._failures = 0
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

    async def warm_up(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        """Remember the prefix (re-primed after recovery) and warm up now unless open."""
        self.remember(system_prompt, examples)
        if self._state is not BreakerState.CLOSED:
            return
        try:
            await self.backend.warm_up(system_prompt, examples)
        except LlmError as exc:
            self._record_failure(exc)
            raise

    async def read_ahead(self, messages: list[Message]) -> None:
        """Only while closed. Neither counted (the next turn finds out) nor remembered for a
        re-prime: the history holds the caller's words, which outlive no call."""
        if self._state is BreakerState.CLOSED:
            await self.backend.read_ahead(messages)

    def remember(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        """The prefix to prime when the backend comes back, without priming it now (a failover
        primes only the host the next turn goes to)."""
        self._system_prompt = system_prompt
        self._examples = tuple(examples)

    def record_failure(self, exc: LlmError) -> None:
        """A failure seen from outside the stream (a failover's turn deadline cut it short)."""
        self._record_failure(exc)

    def _record_failure(self, exc: LlmError) -> None:
        self._failures += 1
        self._last_cause = exc.cause
        self._last_detail = exc.detail
        if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(exc, reason=f"{self._failures} consecutive failures")

    def _open(self, exc: LlmError, reason: str) -> None:
        self._mark_open(exc, reason)
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_until_up(), name="llm-breaker-probe"
            )

    def _mark_open(self, exc: LlmError, reason: str) -> None:
        self._state = BreakerState.OPEN
        self._last_cause = exc.cause
        self._last_detail = exc.detail
        self._opened_at = time.monotonic()
        self._probes = 0
        self._closed_event.clear()
        self._log.warning("llm_breaker_open", reason=reason, cause=exc.cause, detail=exc.detail)

    def _close(self) -> None:
        down_s = 0.0 if self._opened_at is None else time.monotonic() - self._opened_at
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = None
        self._closed_event.set()
        self._log.info("llm_breaker_closed", down_ms=ms(down_s), probes=self._probes)

    async def _probe_until_up(self) -> None:
        interval = self.probe_interval_s
        while True:
            await asyncio.sleep(interval)
            self._state = BreakerState.HALF_OPEN
            self._probes += 1
            try:
                await self._up()
            except LlmError as exc:
                self._state = BreakerState.OPEN
                self._last_cause = exc.cause
                self._last_detail = exc.detail
                interval = min(interval * self.backoff, self.probe_max_interval_s)
                self._log.info(
                    "llm_probe_failed", cause=exc.cause, next_s=interval, probes=self._probes
                )
                continue
            self._close()
            return

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        await self.backend.aclose()
