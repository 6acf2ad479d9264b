"""The chat backend contract: messages in, a stream of text pieces out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
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

    async def warm_up(self, system_prompt: str) -> None:  # noqa: B027 - optional hook
        """Load the model and prime the prompt cache with a system prompt."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model or connection."""
