"""LLM token pieces -> speakable chunks for the synthesizer, streaming.

Two small stages, each a sync core (`feed(piece)`, `flush()`) wrapped by one async generator:

1. `MarkupStripper`: removes what must never be spoken (markdown markers, list bullets, headings,
   code, emojis, *stage directions*, (parenthetical asides), [pause]) from a stream whose
   constructs span token pieces. It is a small state machine that holds back only an unfinished
   construct (an opened `*...` or `(...` on the current line), so its output is the same however
   the text was cut into pieces.
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

from payphone.streams import closing

# --------------------------------------------------------------------------- markup stripping

MAX_SPAN = 120
"""Longest inline construct (stage direction, emphasis, link) waited for on one line."""

MAX_FENCE = 1000
"""Longest fenced code block dropped whole; a longer one loses only its fences."""

_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe00-\ufe0f\u200d\u20e3"
    "\U000e0020-\U000e007f]"
)
_SPECIAL = re.compile(r"[*_`(\[\n]")
_HR = re.compile(r"[ \t]*([-*_=])(?:[ \t]*\1){2,}[ \t]*(?=\n)")
_HR_FINAL = re.compile(r"[ \t]*([-*_=])(?:[ \t]*\1){2,}[ \t]*\Z")
_HR_PREFIX = re.compile(r"[ \t]*(?:([-*_=])(?:[ \t]*\1)*[ \t]*)?")
_MARKER = re.compile(r"[ \t]*(?:#{1,6}|[-*+•]|\d{1,3}[.)]|>)[ \t]+")
_MARKER_PREFIX = re.compile(r"[ \t]*(?:#{1,6}|[-*+•]|\d{1,3}[.)]?|>)?[ \t]*")


@dataclass(frozen=True)
class _Step:
    """What to do with the construct at the head of the pending text."""

    consume: int
    emit: str = ""
    reinject: str = ""


_WAIT = None


class MarkupStripper:
    """Streaming markdown / stage-direction remover: raw pieces in, clean text out.

    Rules (chosen for a voice on a public phone, where every aside is noise):
    `**bold**`, `__bold__`, `_em_`, `` `code` `` and `[link](url)` keep their words; `*single
    asterisks*` are stage directions and are dropped with their words, as are `[bracketed]` text and
    `(parentheticals)` without digits ("(laughs)"); a parenthetical with digits ("(555)") stays.
    Headings, bullets, numbered-list markers, block quotes and rules lose their markers at a line
    start; fenced code blocks are dropped; emojis are removed. A construct left open at the end of
    its line (or after `MAX_SPAN` characters) is not a construct: its marker is dropped or kept as
    text.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._line_start = True
        self._prev = ""

    def feed(self, piece: str) -> str:
        """Add a piece; return the clean text that can no longer change."""
        self._pending += piece
        return self._run(final=False)

    def flush(self) -> str:
        """The stream ended: resolve what is pending and reset for the next reply."""
        out = self._run(final=True)
        self._pending, self._line_start, self._prev = "", True, ""
        return out

    def _run(self, final: bool) -> str:
        out: list[str] = []
        while self._pending:
            text = self._pending
            if self._line_start:
                skip = _line_marker(text, final)
                if skip is _WAIT:
                    break
                self._pending = text[skip:]
                self._line_start = False
                continue
            head = text[0]
            if head == "\n":
                self._emit("\n", out)
                self._line_start = True
                self._pending = text[1:]
                continue
            if head in "*_`([":
                step = self._construct(text, final)
                if step is _WAIT:
                    break
                self._emit(step.emit, out)
                self._pending = step.reinject + text[step.consume :]
                continue
            special = _SPECIAL.search(text, 1)
            end = special.start() if special else len(text)
            self._emit(text[:end], out)
            self._pending = text[end:]
        return "".join(out)

    def _emit(self, text: str, out: list[str]) -> None:
        clean = _EMOJI.sub("", text).replace("\r", "")
        if clean:
            out.append(clean)
            self._prev = clean[-1]

    def _construct(self, text: str, final: bool) -> _Step | None:
        head = text[0]
        if head in "([":
            return _bracket(text, final)
        run = len(text) - len(text.lstrip(head))
        if run == len(text):
            if not final:
                return _WAIT
            return _stray(text, run)
        after = text[run]
        if head in "*_" and (after.isspace() or self._prev.isalnum()):
            return _stray(text, run)
        if head == "*" and run == 1:
            return _star_direction(text, final)
        if head == "`":
            return _code(text, run, final)
        return _emphasis(text, head * min(run, 3 if head == "*" else 2), final)


def _stray(text: str, run: int) -> _Step:
    """A marker that opens nothing: underscores stay as text, the rest is dropped."""
    return _Step(run, emit=text[:run] if text[0] == "_" else "")


def _line_marker(text: str, final: bool) -> int | None:
    """Length of a list/heading/quote marker or rule at a line start; None = wait."""
    if not final and (_HR_PREFIX.fullmatch(text) or _MARKER_PREFIX.fullmatch(text)):
        return _WAIT
    rule = _HR.match(text) or (_HR_FINAL.match(text) if final else None)
    if rule:
        return rule.end()
    marker = _MARKER.match(text)
    if marker:
        return marker.end()
    return 0


def _star_direction(text: str, final: bool) -> _Step | None:
    """`*sighs*`: dropped with its words, if it closes on this line."""
    window = text[:MAX_SPAN]
    for index in range(1, len(window)):
        if window[index] == "*":
            return _Step(index + 1)
        if window[index] == "\n":
            return _stray(text, 1)
    if final or len(text) >= MAX_SPAN:
        return _stray(text, 1)
    return _WAIT


def _emphasis(text: str, closer: str, final: bool) -> _Step | None:
    """`**bold**`, `__bold__`, `_em_`: markers dropped, words kept (and cleaned again)."""
    window = text[:MAX_SPAN]
    start = len(closer)
    index = start
    while index < len(window):
        if window[index] == "\n":
            return _stray(text, len(closer))
        if window.startswith(closer, index):
            end = index + len(closer)
            if closer[0] == "_":
                if end == len(text) and not final:
                    return _WAIT
                if end < len(text) and text[end].isalnum():
                    index += 1
                    continue
            return _Step(end, reinject=text[start:index])
        index += 1
    if final or len(text) >= MAX_SPAN:
        return _stray(text, len(closer))
    return _WAIT


def _code(text: str, run: int, final: bool) -> _Step | None:
    """Inline code keeps its words; a fenced block is dropped whole."""
    fence = run >= 3
    limit = MAX_FENCE if fence else MAX_SPAN
    closer = "`" * (3 if fence else run)
    window = text[:limit]
    index = window.find(closer, run)
    newline = -1 if fence else window.find("\n", run)
    if index >= 0 and (newline < 0 or index < newline):
        return _Step(index + len(closer), emit="" if fence else text[run:index])
    if newline >= 0 or final or len(text) >= limit:
        return _stray(text, run)
    return _WAIT


def _bracket(text: str, final: bool) -> _Step | None:
    """`(laughs)` and `[pause]` are dropped; `(555)` stays; `[words](url)` keeps the words."""
    opener, closer = text[0], ")" if text[0] == "(" else "]"
    if len(text) == 1:
        return _WAIT if not final else _Step(1, emit=opener)
    if text[1].isspace():
        return _Step(1, emit=opener)
    window = text[:MAX_SPAN]
    for index in range(1, len(window)):
        char = window[index]
        if char == closer:
            inner = text[1:index]
            if opener == "(":
                keep = any(c.isdigit() for c in inner)
                return _Step(index + 1, emit=text[: index + 1] if keep else "")
            return _link(text, index, final)
        if char in "\n([":
            return _Step(1, emit=opener)
    if final or len(text) >= MAX_SPAN:
        return _Step(1, emit=opener)
    return _WAIT


def _link(text: str, close: int, final: bool) -> _Step | None:
    """After `[...]`: a `(url)` makes it a link (words kept), otherwise it is dropped."""
    if close + 1 == len(text):
        return _WAIT if not final else _Step(close + 1)
    if text[close + 1] != "(":
        return _Step(close + 1)
    start = close + 2
    window = text[start : start + MAX_SPAN]
    for index, char in enumerate(window):
        if char == ")":
            return _Step(start + index + 1, reinject=text[1:close])
        if char == "\n":
            return _Step(close + 1)
    if final or len(text) >= start + MAX_SPAN:
        return _Step(close + 1)
    return _WAIT


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
    "mr. mrs. ms. dr. st. mt. prof. sgt. capt. gen. rev. hon. e.g. i.e. vs. v. cf. fig. "  # noqa: SIM905
    "approx.".split()
)
"""Abbreviations that are followed by more of the same sentence."""

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
    max_words: int = 40
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

    def flush(self) -> list[str]:
        """The stream ended: return the remaining chunks and reset."""
        if self._stripper:
            self._buf += self._stripper.flush()
        chunks = self._cut(final=True)
        rest = speakable(self._carry + " " + self._buf)
        if _ALNUM.search(rest):
            chunks.append(rest)
        self._buf, self._carry, self._emitted = "", "", 0
        return chunks

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
        forced = _nth_token_end(text, config.max_words)
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


def _nth_token_end(text: str, count: int) -> int | None:
    for index, token in enumerate(_TOKEN.finditer(text), start=1):
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
    async with closing(pieces):
        async for piece in pieces:
            for chunk in chunker.feed(piece):
                yield chunk
        for chunk in chunker.flush():
            yield chunk
