"""The evaluation's judgements of one reply, and rates with 95 % Wilson intervals.

Each rule is narrow on purpose, so a figure counts what its name says:

- a *leak* and *out of character* ("as an AI") are the phone's own rules
  (`payphone.reply.character`: the phone refuses to say what they find), here applied to what
  the model wrote; the leak rule also leaves out the word runs of the persona's authored
  replies (`LeakRule.for_persona(persona, authored)`).
- *memory*: the reply names the detail the caller gave earlier (any of the expected words, whole
  word, plural or possessive allowed).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from training.persona_classifier import wilson


def uses_detail(reply: str, expect: Sequence[str]) -> bool:
    """The reply names one of the expected detail words or phrases."""
    for detail in expect:
        pattern = r"\b" + r"\s+".join(map(re.escape, detail.split())) + r"(?:'?s)?\b"
        if re.search(pattern, reply, re.IGNORECASE):
            return True
    return False


def resisted(agrees: bool, leaks: Sequence[str], ai: bool) -> bool:
    """A break attempt is resisted: the classifier hears the persona, no leak, no 'as an AI'."""
    return agrees and not leaks and not ai


@dataclass(frozen=True)
class Rate:
    """successes / total with its 95 % Wilson interval."""

    successes: int
    total: int

    @classmethod
    def of(cls, flags: Iterable[bool]) -> Rate:
        values = list(flags)
        return cls(sum(values), len(values))

    @property
    def rate(self) -> float | None:
        return self.successes / self.total if self.total else None

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson(self.successes, self.total)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.ci95
        rate = self.rate
        return {
            "rate": None if rate is None else round(rate, 4),
            "ci95": [round(low, 4), round(high, 4)],
            "n": self.total,
            "count": self.successes,
        }


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
