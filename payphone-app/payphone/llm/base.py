"""The chat backend contract: messages in, a stream of text pieces out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from payphone.llm.prompt_style import Declared


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ChatOptions:
    """Generation options every backend understands."""

    num_predict: int = 96
    temperature: float = 0.7
    num_ctx: int = 2048
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None  # sampling seed (benches); None: the backend's own sequence
    # Ollama's own default, made explicit for llama.cpp in-process (llama-cpp-python's default
    # is 1.0, none): without it the demo model looped ("I will NOT PLAY." ten times) in 27 % of
    # its replies, with it in 1 % (`python -m training bench-persona`)
    repeat_penalty: float = 1.1


class LlmError(Exception):
    """The backend failed; `cause` is a short machine-readable reason for logs and stats."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


class ChatBackend(ABC):
    """`stream` yields text pieces as the model writes them; cancelling it stops generation."""

    @abstractmethod
    def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]: ...

    @property
    def declared_prompt_style(self) -> Declared | None:
        """What the model says it was trained on (`payphone.prompt_style`); None until known."""
        return None

    async def warm_up(  # noqa: B027 - optional hook
        self, system_prompt: str, examples: Sequence[Message] = ()
    ) -> None:
        """Load the model and prime the prompt cache with the fixed prefix of a persona's
        requests: the system prompt, then its example exchanges (user/assistant messages)."""

    async def read_ahead(self, messages: list[Message]) -> None:  # noqa: B027 - optional hook
        """After a turn, while the caller speaks: evaluate the history as it now stands into
        the prompt cache, so the next request reads only the caller's new words. Only the
        in-process model does; a model host (Ollama) gets no requests a turn does not need."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model or connection."""
