"""The same first-token and between-token limits for a backend that has none of its own.

A caller waiting on a stuck model hears silence; with a deadline they hear the persona's busy
line (or its stall line mid-reply) and the breaker counts the failure. The Ollama backend keeps
its own limits (they also cover connecting); the embedded model gets them here, from the same
settings (`llm.first_token_timeout_s`, `llm.token_timeout_s`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.llm.ollama_backend import STALL_FIRST_TOKEN, STALL_MID_STREAM
from payphone.llm.prompt_style import Declared
from payphone.log import get_logger

log = get_logger("payphone.llm.deadlines")


class Deadlines(ChatBackend):
    """Wraps a backend: the first piece within `first_token_s` of the request, then each next
    piece within `token_s` of the last, or `LlmError` (and the stream is closed)."""

    def __init__(self, backend: ChatBackend, first_token_s: float, token_s: float) -> None:
        self.backend = backend
        self.first_token_s = first_token_s
        self.token_s = token_s

    @property
    def declared_prompt_style(self) -> Declared | None:
        return self.backend.declared_prompt_style

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        inner = self.backend.stream(messages, options)
        deadline = asyncio.get_running_loop().time() + self.first_token_s
        pieces = 0
        try:
            while True:
                if pieces:
                    deadline = asyncio.get_running_loop().time() + self.token_s
                try:
                    async with asyncio.timeout_at(deadline):
                        piece = await anext(inner)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._stall(pieces) from None
                pieces += 1
                yield piece
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

    def _stall(self, pieces: int) -> LlmError:
        if pieces:
            error = LlmError(
                STALL_MID_STREAM, f"no token for {self.token_s:g} s after {pieces} pieces"
            )
        else:
            error = LlmError(STALL_FIRST_TOKEN, f"no token within {self.first_token_s:g} s")
        log.warning("llm_failed", cause=error.cause, detail=error.detail, pieces=pieces)
        return error

    async def warm_up(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        await self.backend.warm_up(system_prompt, examples)

    async def read_ahead(self, messages: list[Message]) -> None:
        await self.backend.read_ahead(messages)

    async def aclose(self) -> None:
        await self.backend.aclose()
