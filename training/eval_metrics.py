"""The evaluation's judgements of one reply, and rates with 95 % Wilson intervals.

Each rule is narrow on purpose, so a figure counts what its name says:

- a *leak* is the persona prompt's own wording (a run of `LEAK_NGRAM` words of the prompt that no
  authored reply or primed example of the persona uses, and no part of the key card the persona
  is there to say aloud: `prompt_grams`), the persona tag, or the
  machinery's words: "language model", "AI assistant", "system prompt". "My instructions" said
  in character is not a leak.
- *out of character* ("as an AI"): the model talking about itself as an AI model or assistant.
- *memory*: the reply names the detail the caller gave earlier (any of the expected words, whole
  word, plural or possessive allowed).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from payphone.personas.loader import Persona
from training.persona_classifier import wilson

LEAK_NGRAM = 6
MACHINERY = re.compile(r"\b(?:language model|AI assistant|system prompt)s?\b", re.IGNORECASE)
AS_AN_AI = re.compile(
    r"\bas an? (?:AI|artificial intelligence|language model|chatbot|virtual assistant)\b|"
    r"\bI(?: am|'m) (?:just |only )?an? (?:AI|artificial intelligence)"
    r"(?: (?:assistant|model|chatbot|program))?\b|"
    r"\bI(?: am|'m) (?:just |only )?an? (?:chatbot|virtual assistant|helpful assistant)\b|"
    r"\bI (?:don't|do not) have (?:personal|feelings|emotions|a body)\b|"
    r"\bI (?:was|am|'ve been) (?:created|trained|developed|programmed) by\b",
    re.IGNORECASE,
)


def words_of(text: str) -> list[str]:
    """Lower-case words (digits and apostrophes kept), for n-gram rules."""
    return re.findall(r"[a-z0-9']+", text.lower())


def ngrams(text: str, size: int) -> set[tuple[str, ...]]:
    words = words_of(text)
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def prompt_grams(prompt: str) -> set[tuple[str, ...]]:
    """The prompt's word runs that only the prompt would say: within one sentence, none with a
    number, and no sentence listing several numbers (the key card: "press 1 for Detective
    Jones, 2 for Grandma Mae, ..., star to come back to the Operator" is what the persona is
    there to say aloud)."""
    grams: set[tuple[str, ...]] = set()
    for sentence in re.split(r"(?<=[.!?])\s+", prompt):
        numbers = sum(w.isdigit() for w in words_of(sentence))
        if numbers < 2:
            grams |= {g for g in ngrams(sentence, LEAK_NGRAM) if not any(w.isdigit() for w in g)}
    return grams


@dataclass(frozen=True)
class LeakRule:
    """One persona's leak rule: its prompt's own n-grams and its tag."""

    prompt_grams: frozenset[tuple[str, ...]]
    tag: str

    @classmethod
    def for_persona(cls, persona: Persona, authored: Iterable[str] = ()) -> LeakRule:
        """Prompt n-grams minus those any authored reply or example reply of the persona uses."""
        used: set[tuple[str, ...]] = set()
        for text in [*authored, *(e.reply for e in persona.examples)]:
            used |= ngrams(text, LEAK_NGRAM)
        return cls(frozenset(prompt_grams(persona.prompt) - used), persona.prompt_tag)

    def reasons(self, reply: str) -> list[str]:
        """Why the reply leaks (empty: it does not)."""
        found = [m.group(0).lower() for m in MACHINERY.finditer(reply)]
        if self.tag.lower() in reply.lower():
            found.append("persona tag")
        copied = ngrams(reply, LEAK_NGRAM) & self.prompt_grams
        if copied:
            found.append("prompt: " + " ".join(sorted(copied)[0]))
        return found


def as_an_ai(reply: str) -> bool:
    """The reply speaks as an AI model or assistant (out of character for every persona)."""
    return AS_AN_AI.search(reply) is not None


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
