"""LLM token pieces -> speakable chunks for the synthesizer, streaming.

Two small stages, each a sync core (`feed(piece)`, `flush()`) wrapped by one async generator:

1. `MarkupStripper` (in `payphone.reply.markup`, which the output guard uses too): removes what
   must never be spoken (markdown markers, list bullets, headings, code, emojis, *stage
   directions*, (parenthetical asides), [pause]) from a stream whose constructs span token pieces,
   with the same output however the text was cut into pieces.
2. `TextChunker`: cuts the cleaned text where a chunk can be spoken well. The first chunk goes out
   at the first sentence end, or at a clause boundary (`,` `;` `:` dash) once it holds
   `first_clause_words` words; later chunks are sentences (split at a clause only when a sentence
   runs past `clause_words`, and forced at a word boundary past `max_words`). Each chunk reads phone
   numbers digit by digit.

Why not `sentence-stream` (what wyoming-piper uses): it was read and measured against our needs.
Its abbreviation rule holds back any capitalised 1-3 letter word before a period ("I'm Mae. How
are you?" waits for the next sentence, delaying the first chunk), it does not know lower-case
abbreviations (a.m., e.g., i.e., etc., vs.), it has no clause-level early cut, and it keeps the
words of `*stage directions*`. So the splitter is written here, in the same spirit (a boundary is
terminal punctuation followed by whitespace and a next character that starts a sentence), with
the phone rules on top: known abbreviations, initials and dotted acronyms never end a sentence;
decimals, times (10:30) and thousands (1,000) have no whitespace after their punctuation so they
are never cut; a phone number is never cut and is read digit by digit ("555-0123" ->
"5 5 5, 0 1 2 3"); an ellipsis ends a sentence only when the next word is capitalised.

Waiting for the character after a sentence end costs no time in practice: model tokenizers attach
the space to the next word (" How"), so the space and the next letter arrive in the same piece.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from payphone.log import get_logger
from payphone.reply.markup import MarkupStripper
from payphone.streams import closing, hit_limit

log = get_logger(__name__)

# --------------------------------------------------------------------------- speakable text

_PHONE = re.compile(
    r"""(?<![\w.-])(?:
        (?:\+?1[-.\s])?\(\d{3}\)\s?\d{3}[-.\s]\d{4}
      | (?:\+?1[-.\s])?\d{3}[-.]\d{3}[-.]\d{4}
      | \d{3}-\d{4}
    )(?![\w-]|\.\d)""",
    re.VERBOSE,
)
_ALNUM = re.compile(r"[^\W_]")


def _read_digits(match: re.Match[str]) -> str:
    return ", ".join(" ".join(group) for group in re.findall(r"\d+", match.group()))


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?…]+)(?=\s|\Z)")


def speakable(text: str) -> str:
    """Whitespace collapsed (also where a removed aside left it before a comma) and phone
    numbers read digit by digit."""
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    return _PHONE.sub(_read_digits, text)


def clean_text(text: str) -> str:
    """The whole reply as the chunker would speak it (markup stripped, numbers read out)."""
    stripper = MarkupStripper()
    return speakable(stripper.feed(text) + stripper.flush())


# --------------------------------------------------------------------------- boundaries

NEVER_END = frozenset(
    "mr. mrs. ms. dr. st. mt. prof. sgt. capt. gen. rev. e.g. i.e. vs. v. cf. fig. "  # noqa: SIM905
    "approx.".split()
)
"""Abbreviations that are followed by more of the same sentence. Not "hon.": on this phone it is
the Operator's and Grandma Mae's "honey" ("I'm not sure, hon. Let me check."), which ends a
sentence; as "the Hon." of a title it held every such first chunk until the next sentence was
written (~100 ms more of the model, and Piper rendering both)."""

MAYBE_END = frozenset(["a.m.", "p.m.", "etc.", "jr.", "sr.", "inc.", "ltd.", "co."])
"""Abbreviations that end a sentence only when a capitalised word follows."""

_CLOSERS = "\"')\\]}’”»"
_CANDIDATE = re.compile(
    rf"(?P<sent>[.!?…]+)[{_CLOSERS}]*(?=\s)"
    r"|(?P<clause>[,;:](?=\s)|(?<=\s)(?:--?|–)(?=\s)|—)"
    r"|(?P<nl>\n)"
)
_NEXT = re.compile(r"\s*(\S)")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)+")
_TOKEN = re.compile(r"\S+")
_OPENERS = "\"'([{‘“«"
FORCE_LOOKAHEAD = 24
"""Characters past a forced cut that must be known first, so no phone number is cut open."""


def _ends_sentence(text: str, match: re.Match[str], next_char: str) -> bool:
    """Is terminal punctuation `match` followed by `next_char` the end of a sentence?"""
    if next_char.islower():
        return False
    punct = match.group("sent")
    if punct != ".":
        return True
    start = match.start("sent")
    words = text[max(0, start - 40) : start + 1].split()
    token = words[-1].lstrip(_OPENERS).lower() if words else ""
    if token in MAYBE_END:
        return next_char.isupper()
    return not (token in NEVER_END or _INITIALS.fullmatch(token))


def _sentence_decision(text: str, match: re.Match[str], final: bool) -> bool | None:
    """True/False once decidable; None while the next character is still unknown."""
    following = _NEXT.match(text, match.end())
    if following is None:
        return True if final else None
    return _ends_sentence(text, match, following.group(1))


def find_sentence_end(text: str, final: bool = False, start: int = 0) -> int | None:
    """Index just past the first sentence end (or line end) in `text[start:]`; None if not known.

    Used by the output guard to stop a capped reply at a sentence end, with the same
    abbreviation rules as the chunker (the words before `start` are seen, so "Mr." stays whole).
    """
    for match in _CANDIDATE.finditer(text, start):
        if match.lastgroup == "nl":
            if _ALNUM.search(text, start, match.start()):
                return match.start()
            continue
        if match.lastgroup != "sent":
            continue
        decision = _sentence_decision(text, match, final)
        if decision is None:
            return None
        if decision:
            return match.end()
    return len(text) if final and _ALNUM.search(text, start) else None


def _inside_phone(text: str, index: int) -> bool:
    return any(m.start() < index < m.end() for m in _PHONE.finditer(text))


# --------------------------------------------------------------------------- chunker


@dataclass(frozen=True)
class ChunkerConfig:
    """Where chunks may be cut; counts are words (whitespace-separated tokens)."""

    first_clause_words: int = 8
    clause_words: int = 20
    # the most Piper renders at once: its memory peak grows with the sentence (~25 MB per
    # second of audio), and the voices are warmed up at this length
    max_words: int = 24
    strip_markup: bool = True


class TextChunker:
    """Sync core: `feed(piece) -> chunks`, `flush() -> chunks`; reusable after `flush`."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._stripper = MarkupStripper() if self.config.strip_markup else None
        self._buf = ""
        self._carry = ""
        self._emitted = 0

    def feed(self, piece: str) -> list[str]:
        """Add a token piece; return the chunks that are now complete."""
        self._buf += self._stripper.feed(piece) if self._stripper else piece
        return self._cut(final=False)

    def flush(self, *, drop_unfinished: bool = False) -> list[str]:
        """The stream ended: return the remaining chunks and reset.

        `drop_unfinished`: the model was stopped by its token limit, so text after the last
        sentence end is half a sentence and is dropped, unless it is all the reply would say.
        """
        if self._stripper:
            self._buf += self._stripper.flush()
        if drop_unfinished:
            self._drop_unfinished()
        chunks = self._cut(final=True)
        rest = speakable(self._carry + " " + self._buf)
        if _ALNUM.search(rest):
            chunks.append(rest)
        self._buf, self._carry, self._emitted = "", "", 0
        return chunks

    def _drop_unfinished(self) -> None:
        start = unfinished_tail(self._buf)
        if start is None:
            return
        if start == 0 and self._emitted == 0:
            log.info("reply_unfinished_kept", words=len(self._buf.split()))  # nothing else to say
            return
        log.info("reply_unfinished_dropped", words=len(self._buf[start:].split()))
        self._buf = self._buf[:start]

    def _cut(self, final: bool) -> list[str]:
        chunks: list[str] = []
        while (cut := self._find_cut(self._buf, final)) is not None:
            piece, self._buf = self._buf[:cut], self._buf[cut:]
            chunk = speakable(self._carry + " " + piece)
            if _ALNUM.search(chunk):
                chunks.append(chunk)
                self._carry = ""
                self._emitted += 1
            else:
                self._carry = chunk
        return chunks

    def _find_cut(self, text: str, final: bool) -> int | None:
        config = self.config
        clause_words = config.first_clause_words if self._emitted == 0 else config.clause_words
        forced = nth_token_end(text, config.max_words)
        for match in _CANDIDATE.finditer(text):
            if forced is not None and match.start() >= forced:
                break
            kind = match.lastgroup
            if kind == "nl":
                if _ALNUM.search(text, 0, match.start()):
                    return match.end()
            elif kind == "sent":
                decision = _sentence_decision(text, match, final)
                if decision is None or (decision and match.end() == len(text)):
                    return None
                if decision:
                    return match.end()
            elif len(_TOKEN.findall(text, 0, match.end())) >= clause_words:
                return match.end()
        return self._forced_cut(text, forced, final)

    def _forced_cut(self, text: str, forced: int | None, final: bool) -> int | None:
        """A run-on sentence: cut at a word boundary, never inside a number or after "Mr."."""
        while forced is not None:
            if len(text) - forced < FORCE_LOOKAHEAD and not final:
                return None
            if forced >= len(text):
                return None
            token = text[:forced].rsplit(None, 1)[-1].lstrip(_OPENERS).lower()
            if not _inside_phone(text, forced) and token not in NEVER_END:
                return forced
            following = _TOKEN.search(text, forced)
            forced = following.end() if following else None
        return None


_COMPLETE = re.compile(rf"[.!?…]+[{_CLOSERS}]*\s*\Z")


def unfinished_tail(text: str) -> int | None:
    """Where the unfinished last sentence of `text` begins (0: no sentence in it ends); None when
    the text ends with a complete sentence, or holds no words."""
    if _COMPLETE.search(text) or not _ALNUM.search(text):
        return None
    start = 0
    for match in _CANDIDATE.finditer(text):
        ends = (
            _sentence_decision(text, match, final=True)
            if match.lastgroup == "sent"
            else match.lastgroup == "nl" and _ALNUM.search(text, start, match.start())
        )
        if ends:
            start = match.end()
    return start if _ALNUM.search(text, start) else None


def nth_token_end(text: str, count: int, start: int = 0) -> int | None:
    """Where the `count`-th word from `start` ends (None: there are fewer words)."""
    for index, token in enumerate(_TOKEN.finditer(text, start), start=1):
        if index == count:
            return token.end()
    return None


async def chunk_stream(
    pieces: AsyncIterator[str], config: ChunkerConfig | None = None
) -> AsyncIterator[str]:
    """Speakable chunks from a stream of LLM token pieces, each as soon as it is complete.

    The work per piece is a few regex scans of one sentence, so it runs on the loop. When the
    consumer stops early (hang-up, barge-in), the source stream is closed too, so generation stops.
    """
    chunker = TextChunker(config)
    limited = False
    async with closing(pieces):
        async for piece in pieces:
            limited = limited or hit_limit(piece)
            for chunk in chunker.feed(piece):
                yield chunk
        for chunk in chunker.flush(drop_unfinished=limited):
            yield chunk
