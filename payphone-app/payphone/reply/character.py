"""Out of character: what a persona never says aloud, checked on each chunk before it is spoken.

A small model now and then recites its instructions ("Speak in one to three short sentences"),
names the machinery ("I'm a language model") or talks as an AI ("As an AI, I cannot..."). On a
public phone that ends the illusion the installation is for, and hands a caller who set out to
break the persona their trophy. So the phone checks each speakable chunk before Piper gets it:
a chunk that breaks character is not spoken; the persona's own `deflection` line is, and the
reply ends there (closing the stream stops the model).

The rules are narrow on purpose (none of the 2221 authored replies breaks them). The evaluation
judges the model with the same ones, a little wider (`training/eval_metrics.py`):

- a *leak* is a run of `LEAK_NGRAM` words (the phone: `SPOKEN_NGRAM`) of the persona's prompt
  that its example replies do not use and that is not the key card the persona is there to say
  aloud (`prompt_grams`), the persona tag, or the machinery's words: "AI assistant", "system
  prompt" (and, for the evaluation only, "language model": a persona may echo a caller's "A
  language model?").
  "My instructions" said in character is not a leak.
- *as an AI*: the model talking about itself as an AI, a language model or an assistant, or as
  trained by a lab ("trained by my mother with a wooden spoon" is Grandma Mae); the phone
  refuses only a modern assistant's claims (`AI_CLAIM`), so a 1983 computer may still be one.

A run that spans two chunks is caught in the second: the end of what was already passed is
checked again with it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from payphone.streams import closing

LEAK_NGRAM = 6  # the evaluation's prompt runs
# the phone's: "if you do not know something" (6 words of the Operator's prompt) is also how
# people talk ("If you do not know something, kid, ask the rain."); 8 words rarely are
SPOKEN_NGRAM = 8
# the evaluation's leak words; the phone says "language model" when a caller asked about one
# ("A language model? Sweetie, ...") and refuses it only as a claim (`AI_CLAIM`)
MACHINERY = re.compile(r"\b(?:language model|AI assistant|system prompt)s?\b", re.IGNORECASE)
SPOKEN_MACHINERY = re.compile(r"\b(?:AI assistant|system prompt)s?\b", re.IGNORECASE)
# The evaluation's "as an AI": broad, since it judges the model. The phone refuses only the
# unmistakable claims of a modern assistant (`AI_CLAIM`): COMP-U-TRON may say "I AM AN
# ARTIFICIAL INTELLIGENCE", "I DO NOT HAVE FEELINGS" or "I WAS BUILT BY ENGINEERS IN 1983", and
# Detective Jones "I don't have feelings for her".
AS_AN_AI = re.compile(
    r"\bas an? (?:AI|artificial intelligence|language model|chatbot|virtual assistant)\b|"
    r"\bI(?: am|'m) (?:just |only )?an? (?:AI|artificial intelligence|(?:large )?language model)"
    r"(?: (?:assistant|model|chatbot|program))?\b|"
    r"\bI(?: am|'m) (?:just |only )?an? (?:chatbot|virtual assistant|helpful assistant)\b|"
    r"\bI (?:don't|do not) have (?:personal|feelings|emotions|a body)\b|"
    # "trained by my mother with a wooden spoon" is Grandma Mae; "trained by OpenAI" is not
    r"\bI (?:was|am|'ve been|have been) (?:created|trained|developed|programmed|built) by "
    r"(?:OpenAI|Hugging ?Face|Google|Meta|Microsoft|Anthropic|Mistral|a team of|"
    r"(?:the )?(?:researchers|engineers|developers|programmers))\b",
    re.IGNORECASE,
)
AI_CLAIM = re.compile(
    r"\b(?:as|I(?: am|'m)(?: just| only)?) an? (?:AI |artificial intelligence )?"
    r"(?:(?:large )?language model|AI assistant|chatbot|virtual assistant|helpful assistant)\b|"
    r"\bas an AI(?: model)?, I (?:can't|cannot|don't|do not|am not able|am unable)\b|"
    r"\bI (?:was|am|'ve been|have been) (?:created|trained|developed|programmed|built) by "
    r"(?:OpenAI|Hugging ?Face|Google|Meta|Microsoft|Anthropic|Mistral)\b",
    re.IGNORECASE,
)
AS_AN_AI_REASON = "as an AI"


def words_of(text: str) -> list[str]:
    """Lower-case words (digits and apostrophes kept), for n-gram rules."""
    return re.findall(r"[a-z0-9']+", text.lower())


def ngrams(text: str, size: int = LEAK_NGRAM) -> set[tuple[str, ...]]:
    words = words_of(text)
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def prompt_grams(prompt: str, size: int = LEAK_NGRAM) -> set[tuple[str, ...]]:
    """The prompt's word runs that only the prompt would say: within one sentence, none with a
    number, and no sentence listing several numbers (the key card: "press 1 for Detective
    Jones, 2 for Grandma Mae, ..., star to come back to the Operator" is what the persona is
    there to say aloud)."""
    grams: set[tuple[str, ...]] = set()
    for sentence in re.split(r"(?<=[.!?])\s+", prompt):
        numbers = sum(w.isdigit() for w in words_of(sentence))
        if numbers < 2:
            grams |= {g for g in ngrams(sentence, size) if not any(w.isdigit() for w in g)}
    return grams


class _Example(Protocol):
    @property
    def reply(self) -> str: ...


class PromptedPersona(Protocol):
    """What the rule reads of a persona (`payphone.personas.loader.Persona`, which validates its
    own lines with this module: the dependency goes one way)."""

    @property
    def prompt(self) -> str: ...
    @property
    def prompt_tag(self) -> str: ...
    @property
    def examples(self) -> Sequence[_Example]: ...
    @property
    def deflection(self) -> str: ...


def as_an_ai(reply: str) -> bool:
    """The reply speaks as an AI model or assistant (out of character for every persona)."""
    return AS_AN_AI.search(reply) is not None


@dataclass(frozen=True)
class LeakRule:
    """One persona's leak rule: its prompt's own runs of `size` words, and its tag."""

    prompt_grams: frozenset[tuple[str, ...]]
    tag: str
    size: int = LEAK_NGRAM

    @classmethod
    def for_persona(cls, persona: PromptedPersona, authored: Iterable[str] = ()) -> LeakRule:
        """Prompt n-grams minus those any authored reply or example reply of the persona uses."""
        replies = (*authored, *(e.reply for e in persona.examples))
        return cls.of(persona.prompt, persona.prompt_tag, replies)

    @classmethod
    def of(cls, prompt: str, tag: str, replies: Iterable[str], size: int = LEAK_NGRAM) -> LeakRule:
        """The prompt's own `size`-word runs that none of `replies` (the persona's voice) uses."""
        used: set[tuple[str, ...]] = set()
        for text in replies:
            used |= ngrams(text, size)
        return cls(frozenset(prompt_grams(prompt, size) - used), tag, size)

    def reasons(self, reply: str) -> list[str]:
        """Why the reply leaks (empty: it does not): the evaluation's rule."""
        return [*_found(MACHINERY, reply), *self._recited(reply)]

    def out_of_character(self, text: str) -> list[str]:
        """Why the phone will not say `text`: the prompt or tag recited, the machinery named, or
        a modern assistant's claim (`AI_CLAIM`; "language model" counts only as one)."""
        ai = [AS_AN_AI_REASON] if AI_CLAIM.search(text) else []
        return [*_found(SPOKEN_MACHINERY, text), *self._recited(text), *ai]

    def _recited(self, text: str) -> list[str]:
        tag = re.search(rf"(?<!\w){re.escape(self.tag)}(?!\w)", text, re.IGNORECASE)
        found = ["persona tag"] if tag else []
        copied = ngrams(text, self.size) & self.prompt_grams
        if copied:
            found.append("prompt: " + " ".join(sorted(copied)[0]))
        return found


def _found(pattern: re.Pattern[str], text: str) -> list[str]:
    return [m.group(0).lower() for m in pattern.finditer(text)]


_cached_rule = lru_cache(maxsize=32)(LeakRule.of)


def rule_for(persona: PromptedPersona) -> LeakRule:
    """The persona's rule as the phone applies it: runs of `SPOKEN_NGRAM` words, and its
    examples are its voice (built once per prompt, not per turn)."""
    examples = tuple(e.reply for e in persona.examples)
    return _cached_rule(persona.prompt, persona.prompt_tag, examples, SPOKEN_NGRAM)


async def in_character(
    chunks: AsyncIterator[str],
    persona: PromptedPersona,
    on_break: Callable[[list[str]], None] = lambda reasons: None,
) -> AsyncIterator[str]:
    """Pass speakable chunks on until one breaks the persona's character (`rule_for`); then
    close the source (the model stops at once, not when the deflection finds room downstream),
    tell `on_break` why, and say the persona's `deflection` to end the reply."""
    rule = rule_for(persona)
    tail = ""  # the end of what was already passed: a run may span two chunks
    reasons: list[str] = []
    async with closing(chunks):
        async for chunk in chunks:
            reasons = rule.out_of_character(f"{tail} {chunk}")
            if reasons:
                break
            yield chunk
            # whitespace tokens, twice the run: a dash or an ellipsis is a token but no word
            tail = " ".join(f"{tail} {chunk}".split()[-2 * rule.size :])
    if reasons:
        on_break(reasons)
        yield persona.deflection
