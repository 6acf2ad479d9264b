"""Conversation memory for one call and one persona, trimmed to a token budget.

The model sees the system prompt, the persona's example exchanges (if any), then as many of the
latest turns as fit the budget. Old turns go first; the system prompt, the examples and the
caller's latest words are never dropped, so a long call forgets its beginning instead of failing,
and the fixed prefix (system + examples) stays the same all call long: the backend evaluates it
once, while the line rings (`ChatBackend.warm_up`), and reuses it from its prompt cache. A
reply the caller cut into is remembered as what was actually spoken plus a marker, so the
persona does not believe it finished a sentence it never said. A new persona starts a new
history (`reset`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from payphone.llm.base import Message

TokenCounter = Callable[[str], int]

INTERRUPTED_MARKER = "[the caller interrupted]"
# role markers a chat template adds around each message (<|im_start|>user\n ... <|im_end|>)
MESSAGE_OVERHEAD_TOKENS = 4


# room kept for the caller's next line when the history is read ahead (a long sentence)
READ_AHEAD_RESERVE_TOKENS = 64


def estimate_tokens(text: str) -> int:
    """About four characters per token for English: good enough for a budget, no tokenizer."""
    return math.ceil(len(text) / 4)


def choose_system_prompt(style: Literal["tag", "full"], tag: str, prompt: str) -> str:
    """A fine-tuned persona model needs only its short tag; a base model needs the whole prompt."""
    return tag if style == "tag" else prompt


class Conversation:
    """The turns of one call with one persona; `messages()` is what goes to the model."""

    def __init__(
        self,
        system_prompt: str,
        budget_tokens: int,
        count_tokens: TokenCounter = estimate_tokens,
        examples: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`examples`: (caller, reply) pairs shown after the system prompt. A base model given
        the full prompt needs them to hear the voice; a model tuned on the persona tag gets none
        (it learned the voice, and the examples were not in its training prompts)."""
        self._system = system_prompt
        self._budget = budget_tokens
        self._count = count_tokens
        self._examples = _example_messages(examples)
        self._turns: list[Message] = []

    @property
    def system_prompt(self) -> str:
        return self._system

    @property
    def examples(self) -> list[Message]:
        """The example exchanges as user/assistant messages (part of the fixed prefix)."""
        return list(self._examples)

    def prefix(self) -> list[Message]:
        """What every request starts with: the system prompt and the examples."""
        return [{"role": "system", "content": self._system}, *self._examples]

    @property
    def turns(self) -> list[Message]:
        """Every stored turn (untrimmed), oldest first."""
        return list(self._turns)

    def reset(self, system_prompt: str, examples: Sequence[tuple[str, str]] = ()) -> None:
        """A new persona: a new system prompt, its examples, and an empty memory."""
        self._system = system_prompt
        self._examples = _example_messages(examples)
        self._turns.clear()

    def add_user(self, text: str) -> None:
        self._turns.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self._turns.append({"role": "assistant", "content": text})

    def add_interrupted(self, spoken_text: str) -> None:
        """Store only what the caller heard, marked as cut off by the caller."""
        spoken = spoken_text.strip()
        content = f"{spoken} — {INTERRUPTED_MARKER}" if spoken else INTERRUPTED_MARKER
        self.add_assistant(content)

    def discard_unanswered(self) -> None:
        """Forget a trailing user turn whose reply never happened (the turn was cancelled)."""
        while self._turns and self._turns[-1]["role"] == "user":
            self._turns.pop()

    def tokens(self, message: Message) -> int:
        return self._count(message["content"]) + MESSAGE_OVERHEAD_TOKENS

    def read_ahead(self) -> list[Message] | None:
        """What the next request will start with, once the history ends with a reply and a
        caller line of up to `READ_AHEAD_RESERVE_TOKENS` leaves it as it is; None with no reply
        yet (the warm-up read the prefix), or when the next request will drop old turns
        (reading them now would be wasted)."""
        if not self._turns or self._turns[-1]["role"] != "assistant":
            return None
        messages = self.messages()
        if len(messages) - len(self.prefix()) < len(self._turns):
            return None  # already trimmed
        if sum(self.tokens(m) for m in messages) + READ_AHEAD_RESERVE_TOKENS > self._budget:
            return None
        return messages

    def messages(self) -> list[Message]:
        """System prompt + examples + the newest turns that fit the budget, oldest dropped first.

        Trimming drops whole leading turns and never leaves an assistant turn first, so the
        model always sees a user turn right after the fixed prefix.
        """
        prefix = self.prefix()
        used = sum(self.tokens(m) for m in prefix)
        kept: list[Message] = []
        for index, turn in enumerate(reversed(self._turns)):
            cost = self.tokens(turn)
            is_latest_user = index == 0 and turn["role"] == "user"
            if used + cost > self._budget and not is_latest_user:
                break
            kept.append(turn)
            used += cost
        kept.reverse()
        while len(kept) > 1 and kept[0]["role"] == "assistant":
            kept.pop(0)
        return [*prefix, *kept]


def _example_messages(examples: Sequence[tuple[str, str]]) -> list[Message]:
    messages: list[Message] = []
    for caller, reply in examples:
        messages.append({"role": "user", "content": caller})
        messages.append({"role": "assistant", "content": reply})
    return messages
