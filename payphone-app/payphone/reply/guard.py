"""The output guard: what a persona may say on a public phone, applied to the reply stream.

It sits between the chat backend and the chunker and stays streaming (piece in, pieces out): text
is held back only while it could still be the start of a blocked phrase, so the first chunk is not
delayed. Three jobs:

- Markup: markdown, lists and stage directions are removed with the `MarkupStripper` the chunker
  uses, which copes with constructs spanning pieces, so blocklist and word counts see spoken words
  only.
- Blocklist (case-insensitive, whole words; `word*` also matches its endings): the reply *ends* at
  a blocked phrase with a neutral closing line. Replacing the word was rejected: what follows a
  blocked word is rarely better, and a bleep in the middle of a sentence invites more prodding.
- Length: after `max_words` words the reply stops at the next sentence end; if none comes within
  `grace_words`, it is cut at a word and trails off ("..."). The source stream is closed then, so
  the model stops generating.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from payphone.config import LlmSettings
from payphone.log import get_logger
from payphone.reply.chunker import find_sentence_end, nth_token_end
from payphone.reply.markup import MarkupStripper
from payphone.streams import HIT_LIMIT, closing, hit_limit

log = get_logger(__name__)

BLOCKED_LINE = "Let's keep this line friendly."
"""Said after a reply is ended at a blocked phrase; neutral enough for every persona."""

TRAIL_OFF = "..."
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class GuardConfig:
    """Limits for one reply; `grace_words` lets the last sentence finish past `max_words`."""

    max_words: int = 60
    grace_words: int = 15
    blocklist: tuple[str, ...] = ()
    blocked_line: str = BLOCKED_LINE

    @classmethod
    def from_settings(cls, llm: LlmSettings, blocked_line: str = BLOCKED_LINE) -> GuardConfig:
        """Limits from `[llm]` settings; a persona may bring its own `blocked_line`."""
        return cls(
            max_words=llm.max_reply_words,
            grace_words=max(5, llm.max_reply_words // 4),
            blocklist=tuple(llm.blocklist),
            blocked_line=blocked_line,
        )


@dataclass(frozen=True)
class _Entry:
    """One blocklist entry: its regex, plus its normalised words for the hold-back check."""

    text: str
    pattern: re.Pattern[str]
    words: str
    wildcard: bool


def _compile(entry: str) -> _Entry | None:
    text = " ".join(entry.lower().split())
    wildcard = text.endswith("*")
    words = text.rstrip("*").strip()
    if not words:
        return None
    body = r"\s+".join(re.escape(word) for word in words.split())
    tail = r"\w*" if wildcard else ""
    pattern = re.compile(rf"(?<!\w){body}{tail}(?!\w)", re.IGNORECASE)
    return _Entry(text, pattern, words, wildcard)


class OutputGuard:
    """Sync core: `feed(piece) -> pieces`, `flush() -> pieces`; `done` once the reply is over.

    `reason` says why it ended early: "length", "blocklist" or None.
    """

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._entries = [e for e in map(_compile, self.config.blocklist) if e is not None]
        self._stripper = MarkupStripper()
        self._held = ""
        self._released = ""
        self._words = 0
        self._cap_start: int | None = None
        self._tail = ""
        self.done = False
        self.reason: str | None = None

    def feed(self, piece: str) -> list[str]:
        """Add a raw piece from the model; return the text that may be spoken."""
        if self.done:
            return []
        return self._process(self._stripper.feed(piece), final=False)

    def flush(self) -> list[str]:
        """The model finished: release what is held."""
        if self.done:
            return []
        out = self._process(self._stripper.flush(), final=True)
        self.done = True
        return out

    def _process(self, text: str, final: bool) -> list[str]:
        window = self._held + text
        self._held = ""
        blocked = self._blocked_at(window, final)
        if blocked is not None:
            index, entry = blocked
            out = self._release(window[:index], final=False)
            if self.done:
                return out
            out += self._out(self._tail)
            return out + self._end_blocked(entry)
        hold = len(window) if final else self._hold_start(window)
        self._held = window[hold:]
        return self._release(window[:hold], final)

    # ----------------------------------------------------------------- blocklist

    def _blocked_at(self, window: str, final: bool) -> tuple[int, _Entry] | None:
        """Earliest blocked phrase in `window` that no further text can change."""
        context = self._previous()
        text = context + window
        found: tuple[int, _Entry] | None = None
        for entry in self._entries:
            for match in entry.pattern.finditer(text, len(context)):
                if match.end() == len(text) and not final:
                    continue
                if found is None or match.start() - len(context) < found[0]:
                    found = (match.start() - len(context), entry)
                break
        return found

    def _hold_start(self, window: str) -> int:
        """Where the text that might still become a blocked phrase begins (len = nothing)."""
        if not self._entries:
            return len(window)
        previous = self._previous()
        for start, char in enumerate(window):
            before = window[start - 1] if start else previous
            if not char.isalnum() or before.isalnum():
                continue
            tail = " ".join(window[start:].lower().split())
            if window[-1].isspace():
                tail += " "
            if any(self._could_become(entry, tail) for entry in self._entries):
                return start
        return len(window)

    def _previous(self) -> str:
        """The character before the window: a blocked word must start a word."""
        return self._tail[-1:] or self._released[-1:]

    @staticmethod
    def _could_become(entry: _Entry, tail: str) -> bool:
        if entry.words.startswith(tail):
            return True
        rest = tail[len(entry.words) :]
        return entry.wildcard and tail.startswith(entry.words) and rest.isalnum()

    def _end_blocked(self, entry: _Entry) -> list[str]:
        self.done = True
        self.reason = "blocklist"
        spoken = self._released.rstrip()
        log.info("reply_guarded", action="blocked", entry=entry.text, words=_count(spoken))
        space = "" if not self._released or self._released[-1].isspace() else " "
        trail = "" if not spoken or spoken[-1] in ".!?…" else TRAIL_OFF + " "
        return [space + trail + self.config.blocked_line]

    # ----------------------------------------------------------------- length

    def _release(self, text: str, final: bool) -> list[str]:
        """Pass blocklist-cleared text through the word cap."""
        if self._cap_start is None:
            cut = self._cap_word(text)
            if cut is None:
                return self._out(text)
            self._cap_start = len(self._released) + cut
            out = self._out(text[:cut])
            self._tail = text[cut:]
            return out + self._finish_tail(final)
        self._tail += text
        return self._finish_tail(final)

    def _cap_word(self, text: str) -> int | None:
        """Index in `text` where word number `max_words` of the reply starts, if it does."""
        previous = self._released[-1:]
        for token in _TOKEN.finditer(text):
            if token.start() == 0 and previous and not previous.isspace():
                continue  # the rest of a word counted already
            self._words += 1
            if self._words == self.config.max_words:
                return token.start()
        return None

    def _finish_tail(self, final: bool) -> list[str]:
        """Past the cap: hold the last sentence until it ends, or cut it at the grace limit."""
        assert self._cap_start is not None
        full = self._released + self._tail
        spoken = len(self._released)
        end = find_sentence_end(full, final, start=self._cap_start)
        grace_end = nth_token_end(full, self.config.grace_words + 1, self._cap_start)
        if end is not None and (grace_end is None or end <= grace_end):
            cut = not final or bool(full[end:].strip())
            return self._stop(full[spoken : max(end, spoken)], "", cut)
        if grace_end is not None and (grace_end < len(full) or final):
            text = full[spoken:grace_end].rstrip(",;:-–— ")
            return self._stop(text, TRAIL_OFF, cut=True)
        if final:
            return self._stop(full[spoken:], "", cut=False)
        return []

    def _stop(self, text: str, ending: str, cut: bool) -> list[str]:
        """The reply is over; `cut` says whether the guard (not the model) ended it."""
        self.done = True
        self._tail = ""
        out = self._out(text + ending)
        if cut:
            self.reason = "length"
            log.info("reply_guarded", action="capped", words=_count(self._released))
        return out

    def _out(self, text: str) -> list[str]:
        if not text:
            return []
        self._released += text
        return [text]


def _count(text: str) -> int:
    return len(_TOKEN.findall(text))


async def guard_stream(
    pieces: AsyncIterator[str],
    config: GuardConfig | None = None,
    on_end: Callable[[str], None] | None = None,
) -> AsyncIterator[str]:
    """The reply stream with the guard applied; closes the source when the guard ends the reply
    (or the consumer stops), so the model stops generating. The model's `HIT_LIMIT` mark is
    passed on after the text (the chunker drops the unfinished sentence). `on_end` hears why
    the guard ended a reply early ("blocklist", "length"): what the caller hears then is not
    what the model wrote."""
    guard = OutputGuard(config)
    limited = False
    async with closing(pieces):
        async for piece in pieces:
            if hit_limit(piece):
                limited = True
                continue
            for out in guard.feed(piece):
                yield out
            if guard.done:
                break
        if guard.reason is not None and on_end is not None:
            on_end(guard.reason)
        for out in guard.flush():
            yield out
        if limited and guard.reason is None:
            yield HIT_LIMIT
