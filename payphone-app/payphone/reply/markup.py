"""Markup the voice must never speak, removed from a stream of model token pieces.

`MarkupStripper` is a sync core (`feed(piece)`, `flush()`) used by the output guard and by the
chunker. It removes markdown markers, list bullets, headings, code, emojis, *stage directions*,
(parenthetical asides) and [pause] from a stream whose constructs span token pieces. It is a small
state machine that holds back only an unfinished construct (an opened `*...` or `(...` on the
current line), so its output is the same however the text was cut into pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
