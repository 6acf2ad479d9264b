"""Load and validate the authored persona conversations (JSONL, chat `messages` format).

The data is the persona model's voice, so a bad line must stop training loudly: every rule is
checked on every line, every error names its `file:line`, and all of them are raised together in
one `DataValidationError` so an author fixes a file in one pass.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from payphone.llm.history import INTERRUPTED_MARKER
from payphone.personas.loader import Persona, load_personas

DATA_DIR = Path(__file__).resolve().parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]

MIN_WORDS = 10
MAX_WORDS = 40
MIN_EXCHANGES = 1
MAX_EXCHANGES = 6
# Conversations whose replies share more than this share of their word 3-grams (Jaccard) are
# near-duplicates: the model would learn one reply twice and the held-out set would leak.
NEAR_DUPLICATE_THRESHOLD = 0.5
# How the runtime stores a reply the caller cut off (`History.add_interrupted`): what was heard.
INTERRUPTED_SUFFIX = f" — {INTERRUPTED_MARKER}"

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat turn; the same shape as `payphone.llm.base.Message`."""

    role: Role
    content: str


def _shipped_personas() -> dict[str, Persona]:
    """The app's persona files (`payphone/personas/*.toml`), by file stem: the one persona list."""
    book = load_personas()
    if book.errors:
        raise RuntimeError("; ".join(book.errors))
    return {p.id: p for p in book}


PERSONAS: dict[str, Persona] = _shipped_personas()
ALLOWED_NUMBERS = frozenset(re.sub(r"\D", "", p.number) for p in PERSONAS.values())


@dataclass(frozen=True)
class Conversation:
    """One authored conversation and where it came from (for error messages downstream)."""

    id: str
    persona: str
    messages: tuple[Message, ...]
    source: str = ""
    line: int = 0

    @property
    def system(self) -> str:
        return self.messages[0]["content"]

    def to_record(self) -> dict[str, Any]:
        """The JSONL object: the same fields the authored files use."""
        return {
            "id": self.id,
            "persona": self.persona,
            "messages": [dict(m) for m in self.messages],
        }


@dataclass(frozen=True)
class DataError:
    """One problem at one line of one file."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class DataValidationError(ValueError):
    """Every problem found in the data, one per line of the message."""

    def __init__(self, errors: Sequence[DataError]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in the training data:"
        super().__init__("\n".join([head, *(f"  {e}" for e in self.errors)]))


def word_count(text: str) -> int:
    """Words as a listener hears them: whitespace-separated tokens."""
    return len(text.split())


def display_path(path: Path) -> str:
    """Repo-relative path for messages (`training/data/operator.jsonl`), else as given."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


# --- content rules --------------------------------------------------------------------------

# North American style numbers: optional +1, optional area code, 3 digits, 4 digits.
_PHONE_RE = re.compile(
    r"(?<![\w-])(?:\+?1[\s.-])?(?:\(?\d{3}\)?[\s.-]?)?\d{3}[\s.-]?\d{4}(?![\w-])"
    r"|(?<![\w-])\d{7,}(?![\w-])"
)
_SPOKEN_DIGITS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_STREET_RE = re.compile(
    r"\b\d+\s+(?:[A-Z][a-z]+\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl)\b"
)
_MARKUP_RE = re.compile(r"[*_`#\[\]{}()<>|~]|^\s*(?:-|\d+\.)\s", re.MULTILINE)


def find_phone_numbers(text: str) -> list[str]:
    """Phone-number-like digit patterns (written or spoken) other than the personas' 555 lines."""
    found = [m.group(0) for m in _PHONE_RE.finditer(text)]
    run: list[str] = []
    for word in [*re.findall(r"[A-Za-z]+|\d+", text), ""]:
        digit = _SPOKEN_DIGITS.get(word.lower())
        if digit is not None:
            run.append(digit)
            continue
        if len(run) >= 7:
            found.append("".join(run))
        run = []
    return [f for f in found if re.sub(r"\D", "", f)[-7:] not in ALLOWED_NUMBERS or _long(f)]


def _long(number: str) -> bool:
    """An area code in front of a 555 line makes it someone's real-looking number."""
    return len(re.sub(r"\D", "", number)) > 7


def _is_emoji(char: str) -> bool:
    return unicodedata.category(char) == "So" or 0x1F000 <= ord(char) <= 0x1FAFF


def interrupted_part(text: str) -> str | None:
    """The heard part of a reply in the runtime's interrupted form ("" when the caller cut in
    before a word was heard, which the runtime stores as the bare marker), else None."""
    if text == INTERRUPTED_MARKER:
        return ""
    return text[: -len(INTERRUPTED_SUFFIX)] if text.endswith(INTERRUPTED_SUFFIX) else None


def reply_problems(text: str) -> list[str]:
    """Why an assistant reply is not speakable on the phone (empty list: it is fine).

    A reply in the interrupted form is checked on its heard part, which may be short or empty:
    the caller can cut a reply off at any point, and the runtime writes it that way.
    """
    problems: list[str] = []
    heard = interrupted_part(text)
    least = MIN_WORDS if heard is None else 0
    text = text if heard is None else heard
    words = word_count(text)
    if not least <= words <= MAX_WORDS:
        problems.append(f"assistant reply has {words} words (allowed {least}-{MAX_WORDS})")
    if "\n" in text:
        problems.append("assistant reply has a line break (spoken text is one paragraph)")
    markup = _MARKUP_RE.search(text)
    if markup:
        problems.append(
            f"assistant reply has markdown, a list or a stage direction ({markup.group(0)!r})"
        )
    if any(_is_emoji(c) for c in text):
        problems.append("assistant reply has an emoji")
    return problems


def content_problems(text: str) -> list[str]:
    """Rules for every turn: no invented phone numbers, no street addresses."""
    problems = [
        f"invented phone number {number!r} (only the personas' 555-0100..0103 are allowed)"
        for number in find_phone_numbers(text)
    ]
    problems += [f"street address {m.group(0)!r}" for m in _STREET_RE.finditer(text)]
    return problems


# --- structure rules ------------------------------------------------------------------------

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _messages_problems(messages: Any, persona: Persona | None) -> list[str]:
    """Role order and turn shape; `persona` None means the tag cannot be checked."""
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    problems: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            problems.append(f"message {i} must be an object with exactly 'role' and 'content'")
        elif not isinstance(msg["content"], str) or not msg["content"].strip():
            problems.append(f"message {i} ({msg['role']}) has empty or non-string content")
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    if roles[0] != "system":
        problems.append(f"first message must be the system persona tag, got role {roles[0]!r}")
    elif persona is not None and messages[0]["content"] != persona.prompt_tag:
        problems.append(
            f"system tag {messages[0]['content']!r} does not match persona "
            f"{persona.id!r} (expected {persona.prompt_tag!r})"
        )
    body = roles[1:]
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    for i, (got, want) in enumerate(zip(body, expected, strict=False), start=1):
        if got != want:
            problems.append(f"message {i} has role {got!r}, expected {want!r}")
            break
    else:
        if not body or body[-1] != "assistant":
            problems.append("conversation must end with an assistant reply")
        elif interrupted_part(messages[-1]["content"]) is not None:
            problems.append("conversation must end with a full reply, not an interrupted one")
        exchanges = len(body) // 2
        if body and not MIN_EXCHANGES <= exchanges <= MAX_EXCHANGES:
            problems.append(
                f"conversation has {exchanges} exchanges (allowed {MIN_EXCHANGES}-{MAX_EXCHANGES})"
            )
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            problems += [f"{p} in message {i}" for p in reply_problems(msg["content"])]
        problems += [f"{p} in message {i}" for p in content_problems(msg["content"])]
    return problems


def _record_problems(record: Any, file_persona: Persona | None) -> list[str]:
    if not isinstance(record, dict):
        return ["line must be a JSON object"]
    problems: list[str] = []
    missing = {"id", "persona", "messages"} - set(record)
    extra = set(record) - {"id", "persona", "messages"}
    if missing:
        problems.append(f"missing field(s): {', '.join(sorted(missing))}")
    if extra:
        problems.append(f"unknown field(s): {', '.join(sorted(extra))}")
    conv_id = record.get("id")
    if "id" in record and (not isinstance(conv_id, str) or not _ID_RE.match(conv_id)):
        problems.append(f"id {conv_id!r} must be lower-case letters, digits and dashes")
    persona_slug = record.get("persona")
    persona = PERSONAS.get(persona_slug) if isinstance(persona_slug, str) else None
    if "persona" in record:
        if persona is None:
            problems.append(f"unknown persona {persona_slug!r} (known: {', '.join(PERSONAS)})")
        elif file_persona is not None and persona != file_persona:
            problems.append(f"persona {persona_slug!r} does not belong in {file_persona.id}.jsonl")
    if "messages" in record:
        problems += _messages_problems(record["messages"], persona or file_persona)
    return problems


def _normalised(messages: Iterable[Message]) -> str:
    """A conversation's words only, so punctuation or case changes still count as duplicates."""
    return "|".join(
        m["role"] + ":" + " ".join(re.findall(r"[a-z0-9]+", m["content"].lower())) for m in messages
    )


def _parse_file(path: Path) -> Iterator[tuple[int, Any, DataError | None]]:
    shown = display_path(path)
    with path.open(encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw), None
            except json.JSONDecodeError as exc:
                yield number, None, DataError(shown, number, f"invalid JSON: {exc.msg}")


def load(paths: Iterable[Path]) -> list[Conversation]:
    """Load and validate JSONL files; raise one `DataValidationError` with every problem.

    A file named after a persona (`operator.jsonl`) may only hold that persona. Ids and
    conversations must be unique across all files.
    """
    errors: list[DataError] = []
    conversations: list[Conversation] = []
    seen_ids: dict[str, str] = {}
    seen_texts: dict[str, str] = {}
    for path in paths:
        shown = display_path(path)
        file_persona = PERSONAS.get(path.stem)
        for number, record, parse_error in _parse_file(path):
            where = f"{shown}:{number}"
            if parse_error is not None:
                errors.append(parse_error)
                continue
            problems = _record_problems(record, file_persona)
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                conv_id = record["id"]
                if conv_id in seen_ids:
                    problems.append(f"duplicate id {conv_id!r} (first at {seen_ids[conv_id]})")
                else:
                    seen_ids[conv_id] = where
            if problems:
                errors += [DataError(shown, number, p) for p in problems]
                continue
            messages = tuple(
                Message(role=m["role"], content=m["content"]) for m in record["messages"]
            )
            text = _normalised(messages)
            if text in seen_texts:
                errors.append(
                    DataError(
                        shown, number, f"duplicate conversation (first at {seen_texts[text]})"
                    )
                )
                continue
            seen_texts[text] = where
            conversations.append(
                Conversation(record["id"], record["persona"], messages, shown, number)
            )
    errors += near_duplicate_errors(conversations)
    if errors:
        raise DataValidationError(errors)
    return conversations


def near_duplicate_errors(
    conversations: Sequence[Conversation], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[DataError]:
    """One error per near-duplicate pair, at the later conversation, naming the earlier one."""
    return [
        DataError(
            b.source,
            b.line,
            f"near-duplicate of {a.source}:{a.line} ({a.id}): their replies share {score:.0%} "
            f"of their 3-word runs (allowed {threshold:.0%})",
        )
        for a, b, score in near_duplicate_pairs(conversations, threshold)
    ]


def persona_files(data_dir: Path = DATA_DIR) -> list[Path]:
    """One file per persona, in key order; a missing one is an error."""
    paths = [data_dir / f"{p.id}.jsonl" for p in PERSONAS.values()]
    missing = [
        DataError(display_path(p), 0, "persona file is missing") for p in paths if not p.exists()
    ]
    if missing:
        raise DataValidationError(missing)
    return paths


def load_dir(data_dir: Path = DATA_DIR) -> list[Conversation]:
    """Every persona's conversations from `data_dir`, validated."""
    return load(persona_files(data_dir))


def write_jsonl(conversations: Iterable[Conversation], path: Path) -> int:
    """Write conversations as JSONL (atomically: a temp file renamed over); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for conv in conversations:
            fh.write(json.dumps(conv.to_record(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def shingles(conv: Conversation, size: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the assistant replies (an interrupted one without its marker)."""
    replies = (
        interrupted_part(m["content"]) or m["content"]
        for m in conv.messages
        if m["role"] == "assistant"
    )
    words = re.findall(r"[a-z0-9']+", " ".join(replies).lower())
    return frozenset(tuple(words[i : i + size]) for i in range(len(words) - size + 1))


def near_duplicate_pairs(
    conversations: Sequence[Conversation], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[tuple[Conversation, Conversation, float]]:
    """(earlier, later, Jaccard) for conversations whose replies share more than `threshold`.

    An inverted index from 3-gram to the conversations holding it counts only the overlaps that
    exist, so the check stays linear-ish in the data instead of comparing every pair.
    """
    grams = [shingles(c) for c in conversations]
    index: dict[tuple[str, ...], list[int]] = {}
    pairs: list[tuple[Conversation, Conversation, float]] = []
    for j, mine in enumerate(grams):
        shared: dict[int, int] = {}
        for gram in mine:
            for i in index.get(gram, ()):
                shared[i] = shared.get(i, 0) + 1
            index.setdefault(gram, []).append(j)
        for i, common in sorted(shared.items()):
            score = common / (len(grams[i]) + len(mine) - common)
            if score > threshold:
                pairs.append((conversations[i], conversations[j], round(score, 3)))
    return pairs


def near_duplicates(
    conversations: Sequence[Conversation], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[tuple[str, str, float]]:
    """Id pairs of conversations whose replies share more than `threshold` of their 3-grams."""
    return [(a.id, b.id, score) for a, b, score in near_duplicate_pairs(conversations, threshold)]
