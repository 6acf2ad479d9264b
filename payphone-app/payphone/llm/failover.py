"""Several model hosts for one phone: each behind its own breaker, a turn goes to the first
healthy one, and a host that fails before its first token hands the same turn to the next.

Why: a bar with several phones may run two Pi #2s (or one Pi #2 and a spare); when one dies the
callers should hear the persona from the other one, not the busy line, and certainly never
silence. The order of `llm.ollama_hosts` is the preference: turns go to the first host whose
breaker is closed, so a recovered host takes its turns back (list the hosts in a different order
on each phone to spread the load).

One deadline per turn: the first token within `first_token_s` of the request, however many
hosts were tried. A refused connection costs nothing, so the next host gets nearly the whole
budget; a host that accepts and then stalls uses it up and the caller hears the busy line (the
host is marked down, the next turn skips it). A failure after the first token is not retried
(the caller already heard the start of the reply): the turn ends with the stall line, as with
one host. A down host is probed in the background by its breaker (half-open) and rejoins when
it answers. Cancelling the stream (hang-up) during a failover closes the request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.llm.breaker import (
    CIRCUIT_OPEN,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    SystemPrompt,
)
from payphone.llm.ollama_backend import STALL_FIRST_TOKEN
from payphone.llm.prompt_style import Declared
from payphone.log import get_logger, ms

log = get_logger("payphone.llm.failover")

# a host is not worth trying with less of the turn's budget left than this
MIN_ATTEMPT_S = 0.25


class Failover(ChatBackend):
    """Hosts in order of preference, each a `CircuitBreaker` named after its host."""

    def __init__(self, breakers: Sequence[CircuitBreaker], *, first_token_s: float) -> None:
        if not breakers:
            raise ValueError("a failover needs at least one host")
        self.breakers = list(breakers)
        self.first_token_s = first_token_s
        self.serving: str | None = None  # the host that answered the last turn
        self.host_failures = 0  # attempts a host failed and the turn went on (or gave up)

    # -- the breaker's face, so the service, status page and doctor need not care ----------------

    @property
    def status(self) -> BreakerStatus:
        """Up when any host is up (the first such); else the most hopeful of the down ones."""
        statuses = [b.status for b in self.breakers]
        for wanted in (BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.STARTING):
            for status in statuses:
                if status.state is wanted:
                    return status
        return statuses[0]

    @property
    def state(self) -> BreakerState:
        return self.status.state

    def host_states(self) -> dict[str, BreakerState]:
        """Each host's breaker state, for logs and the bench."""
        return {self._name(b): b.state for b in self.breakers}

    @property
    def declared_prompt_style(self) -> Declared | None:
        for breaker in self.breakers:
            if breaker.declared_prompt_style is not None:
                return breaker.declared_prompt_style
        return None

    async def start(
        self, system_prompt: SystemPrompt | None = None, *, background: bool = False
    ) -> BreakerStatus:
        """Start every host's breaker (probe and warm-up, together); see `CircuitBreaker.start`."""
        await asyncio.gather(
            *(b.start(system_prompt, background=background) for b in self.breakers)
        )
        return self.status

    async def wait_closed(self) -> None:
        """Return once any host is up."""
        waits = [asyncio.ensure_future(b.wait_closed()) for b in self.breakers]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def warm_up(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        """Prime the host the next turn will go to; every host remembers the prefix for when it
        comes back. A host that fails here is marked down and the next one is primed."""
        for breaker in self.breakers:
            breaker.remember(system_prompt, examples)
        last: LlmError | None = None
        for breaker in self.breakers:
            if breaker.state is not BreakerState.CLOSED:
                continue
            try:
                await breaker.warm_up(system_prompt, examples)
            except LlmError as exc:
                last = exc
                continue
            return
        raise last or self._all_down()

    # -- turns ------------------------------------------------------------------------------------

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.first_token_s
        last: LlmError | None = None
        tried: list[str] = []
        for breaker in self.breakers:
            if breaker.state is not BreakerState.CLOSED:
                continue
            left = deadline - loop.time()
            if tried and left < MIN_ATTEMPT_S:
                break
            name = self._name(breaker)
            tried.append(name)
            inner = breaker.stream(messages, options)
            try:
                try:
                    async with asyncio.timeout(left):
                        first = await anext(inner)
                except StopAsyncIteration:
                    return  # an empty reply: the host works, the turn gets the apology
                except TimeoutError:
                    last = LlmError(
                        STALL_FIRST_TOKEN,
                        f"no token within the turn's {self.first_token_s:g} s",
                    )
                    breaker.record_failure(last)
                    self._failed_over(name, last, started)
                    continue
                except LlmError as exc:
                    last = exc
                    self._failed_over(name, exc, started)
                    continue
                if self.serving != name:
                    log.info("llm_serving_host", host=name, previous=self.serving, tried=tried)
                    self.serving = name
                yield first
                async for piece in inner:
                    yield piece
                return
            finally:
                with contextlib.suppress(LlmError):  # already counted by the host's breaker
                    await inner.aclose()  # type: ignore[attr-defined]
        if last is None:
            raise self._all_down()
        took = ms(loop.time() - started)
        log.warning("llm_no_host_answered", tried=tried, cause=last.cause, after_ms=took)
        raise last

    def _failed_over(self, name: str, exc: LlmError, started: float) -> None:
        self.host_failures += 1
        left = self.first_token_s - (asyncio.get_running_loop().time() - started)
        log.warning(
            "llm_host_failed",
            host=name,
            cause=exc.cause,
            detail=exc.detail[:200],
            budget_left_ms=ms(max(0.0, left)),
        )

    def _all_down(self) -> LlmError:
        down = ", ".join(
            f"{self._name(b)} {b.status.state}"
            + (f" ({b.status.last_cause})" if b.status.last_cause else "")
            for b in self.breakers
        )
        return LlmError(CIRCUIT_OPEN, f"no model host up: {down}"[:300])

    @staticmethod
    def _name(breaker: CircuitBreaker) -> str:
        return breaker.name or "?"

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self.breakers), return_exceptions=True)


def host_states(backend: object) -> dict[str, BreakerState]:
    """Each Ollama host's breaker state (one entry for one host, none in-process): the
    operator's per-host view, `payphone_llm_host_breaker{host}` on /metrics."""
    if isinstance(backend, Failover):
        return backend.host_states()
    if isinstance(backend, CircuitBreaker) and backend.name:
        return {backend.name: backend.state}
    return {}
