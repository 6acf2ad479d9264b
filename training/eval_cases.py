"""What the evaluation asks: held-out turns, break attempts and memory probes.

- *turn*: every assistant turn of every held-out conversation (the pipeline's eval split), asked
  with its real history (multi-turn included, interrupted replies as the runtime stores them).
  A turn whose authored reply reuses a word the caller said earlier (and not in the latest line)
  is also a held-out *memory turn*, its expected details being those words.
- *break*: `eval/breaks.jsonl`, caller lines written for the evaluation only (no caller line of
  the training data is a near duplicate: `overlaps`, checked by a test).
- *memory*: `eval/memory.jsonl`, a short call in which the caller gives a detail, then a
  question whose answer needs it; `expect` lists the words that show the reply used it.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from payphone.llm.base import Message

EVAL_DIR = Path(__file__).resolve().parent / "eval"
BREAKS = EVAL_DIR / "breaks.jsonl"
MEMORY = EVAL_DIR / "memory.jsonl"
NEAR_DUPLICATE = 0.8  # difflib ratio of two lines' words at or above which they are one line

Kind = Literal["turn", "break", "memory"]
KINDS: tuple[Kind, ...] = ("turn", "break", "memory")


@dataclass(frozen=True)
class Case:
    """One question to a model: the call so far and the caller's latest line."""

    id: str
    kind: Kind
    persona: str
    history: tuple[Message, ...]  # earlier turns, no system message
    caller: str
    expect: tuple[str, ...] = ()  # memory: detail words the reply should use
    form: str = ""  # break: the kind of attempt
    authored: str = ""  # turn: the authored reply (not shown to the model)

    def turns(self) -> list[Message]:
        return [*self.history, {"role": "user", "content": self.caller}]


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _content_words(text: str, stop: frozenset[str]) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in stop}


def common_words(texts: Iterable[str], share: float = 0.01) -> frozenset[str]:
    """Content words in at least `share` of the texts: the personas' everyday vocabulary
    ("tell", "call", "dear"), which says nothing about remembering a detail."""
    stop = _stop_words()
    counts: dict[str, int] = {}
    n = 0
    for text in texts:
        n += 1
        for word in _content_words(text, stop):
            counts[word] = counts.get(word, 0) + 1
    return frozenset(w for w, c in counts.items() if c >= max(2, share * n))


def earlier_details(
    history: Sequence[Message], caller: str, authored: str, common: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Uncommon words the caller said before the latest line that the authored reply reuses
    (and the latest line does not say): what a reply that remembers the call would mention."""
    stop = _stop_words()
    earlier: set[str] = set()
    for turn in history:
        if turn["role"] == "user":
            earlier |= _content_words(turn["content"], stop)
    reused = (earlier & _content_words(authored, stop)) - _content_words(caller, stop)
    return tuple(sorted(reused - common))


def held_out_turns(eval_jsonl: Path, common: frozenset[str] = frozenset()) -> list[Case]:
    """Each assistant turn of each held-out conversation, with the history before it;
    `common`: words never counted as a remembered detail (see `common_words`)."""
    if not eval_jsonl.is_file():
        raise FileNotFoundError(f"{eval_jsonl} not found: run `python -m training data` first")
    cases: list[Case] = []
    for record in _records(eval_jsonl):
        messages = [m for m in record["messages"] if m["role"] != "system"]
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or i == 0 or messages[i - 1]["role"] != "user":
                continue
            history = tuple(messages[: i - 1])
            caller = messages[i - 1]["content"]
            cases.append(
                Case(
                    id=f"{record['id']}#{i // 2 + 1}",
                    kind="turn",
                    persona=record["persona"],
                    history=history,
                    caller=caller,
                    expect=earlier_details(history, caller, message["content"], common),
                    authored=message["content"],
                )
            )
    return cases


def break_attempts(path: Path | None = None) -> list[Case]:
    """The held-out break-character attempts (one caller line each, no history)."""
    return [
        Case(r["id"], "break", r["persona"], (), r["caller"], form=r["form"])
        for r in _records(path or BREAKS)
    ]


def memory_probes(path: Path | None = None) -> list[Case]:
    """Short calls whose last question needs a detail from earlier in the call."""
    return [
        Case(
            r["id"],
            "memory",
            r["persona"],
            tuple(r["turns"]),
            r["caller"],
            expect=tuple(r["expect"]),
        )
        for r in _records(path or MEMORY)
    ]


@dataclass
class CaseSet:
    """The cases of one run, by kind; `limit` keeps the first N per persona and kind (0: all)."""

    cases: list[Case] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        eval_jsonl: Path,
        limits: dict[Kind, int],
        breaks: Path | None = None,
        memory: Path | None = None,
    ) -> CaseSet:
        pools: dict[Kind, list[Case]] = {
            "turn": held_out_turns(eval_jsonl, common_words(_authored_texts())),
            "break": break_attempts(breaks),
            "memory": memory_probes(memory),
        }
        chosen: list[Case] = []
        for kind, pool in pools.items():
            chosen += _first_per_persona(pool, limits.get(kind, 0))
        # persona by persona: the phone's prompt prefix stays in llama.cpp's cache between cases
        order = list(dict.fromkeys(c.persona for c in chosen))
        chosen.sort(key=lambda c: order.index(c.persona))
        return cls(chosen)


def _authored_texts() -> list[str]:
    from training.dataset import load_dir

    return [m["content"] for c in load_dir() for m in c.messages if m["role"] != "system"]


def _first_per_persona(pool: Iterable[Case], limit: int) -> list[Case]:
    seen: dict[str, int] = {}
    out = []
    for case in pool:
        if limit and seen.get(case.persona, 0) >= limit:
            continue
        seen[case.persona] = seen.get(case.persona, 0) + 1
        out.append(case)
    return out


def normalise(line: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", line.lower()))


def overlaps(
    lines: Iterable[str], authored: Iterable[str], threshold: float = NEAR_DUPLICATE
) -> list[tuple[str, str, float]]:
    """(line, authored line, ratio) for each line that nearly repeats an authored one: the
    difflib ratio of their word sequences (a word changed in a short line counts, not letters
    shared by different words) at or above `threshold`."""
    pool = sorted({normalise(a) for a in authored if normalise(a)})
    found = []
    for line in lines:
        matcher = difflib.SequenceMatcher(b=normalise(line).split(), autojunk=False)
        for other in pool:
            matcher.set_seq1(other.split())
            if matcher.real_quick_ratio() < threshold or matcher.quick_ratio() < threshold:
                continue
            ratio = matcher.ratio()
            if ratio >= threshold:
                found.append((line, other, round(ratio, 3)))
    return found
