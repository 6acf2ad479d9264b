"""Rewrite caller turns the way phone speech-to-text hears them.

At run time the model never reads typed text: it reads Whisper's transcript of a caller on a
narrow-band handset. Training on tidy user turns alone teaches the persona to expect prose it
will never get, so augmented copies lower-case the caller, drop punctuation, swap homophones,
lose short words and add "um"s and stutters. Only user turns change; the system tag and every
assistant reply stay byte-identical, because those are what the model learns to say.

Better than any rewrite is what Whisper really wrote: `training.hear` speaks every authored
caller line through Piper, the telephone band and the phone's Whisper, and keeps the
transcripts. Given those (`heard`), a caller turn becomes one of its heard variants (cased and
punctuated as Whisper writes, with Whisper's own mistakes); a line with none falls back to the
rewrite below, and `coverage` counts how many did.

Everything is deterministic by seed: each conversation gets its own `random.Random` seeded from
(seed, conversation id, copy number), so the result does not depend on order or on the rest of
the data set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from payphone.log import get_logger
from training.dataset import Conversation, Message

log = get_logger(__name__)

# Words Whisper swaps for a same-sounding word, both directions where it makes sense.
_HOMOPHONE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("their", "there", "they're"),
    ("to", "too", "two"),
    ("for", "four"),
    ("your", "you're"),
    ("its", "it's"),
    ("here", "hear"),
    ("know", "no"),
    ("right", "write"),
    ("by", "buy", "bye"),
    ("one", "won"),
    ("weather", "whether"),
    ("hour", "our"),
    ("new", "knew"),
    ("would", "wood"),
    ("wait", "weight"),
    ("see", "sea"),
    ("week", "weak"),
    ("eight", "ate"),
    ("meet", "meat"),
    ("through", "threw"),
    ("dear", "deer"),
    ("hi", "high"),
    ("peace", "piece"),
    ("whole", "hole"),
    ("mae", "may"),
    ("then", "than"),
    ("where", "wear"),
    ("which", "witch"),
)
HOMOPHONES: dict[str, tuple[str, ...]] = {}
for _group in _HOMOPHONE_GROUPS:
    for _word in _group:
        HOMOPHONES[_word] = tuple(w for w in _group if w != _word)

# How keypad words and persona names come out of a phone transcript.
_RESPELLINGS: dict[str, tuple[str, ...]] = {
    "comp-u-tron": ("computron", "comp you tron", "comp u tron"),
    "3000": ("three thousand",),
    "*": ("star",),
    "#": ("pound",),
    "1": ("one", "won"),
    "2": ("two", "to", "too"),
    "3": ("three",),
    "4": ("four", "for"),
}
FILLERS: tuple[str, ...] = ("um", "uh", "er", "hmm", "like", "you know", "so", "well")
# Short words STT loses on a noisy line; content words are kept so the meaning survives.
DROPPABLE = frozenset({
    "a", "an", "the", "is", "are", "was", "to", "of", "and", "do", "does", "did", "can",
    "could", "i", "just", "that", "it", "in", "on", "at", "be",
})  # fmt: skip


@dataclass(frozen=True)
class NoiseProfile:
    """How often each STT effect happens, per word (or per turn for the opening filler)."""

    homophone: float = 0.5
    drop: float = 0.08
    filler: float = 0.06
    opening_filler: float = 0.35
    repeat: float = 0.04
    keep_apostrophe: float = 0.7


DEFAULT_NOISE = NoiseProfile()


def _words(text: str) -> list[str]:
    """Lower-case words with inner apostrophes and dashes kept; everything else is dropped."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    return re.findall(r"[a-z0-9*#]+(?:['-][a-z0-9]+)*", text)


def stt_rewrite(text: str, rng: random.Random, noise: NoiseProfile = DEFAULT_NOISE) -> str:
    """One caller turn as a phone transcript: lower case, no punctuation, misheard and halting."""
    out: list[str] = []
    if rng.random() < noise.opening_filler:
        out.append(rng.choice(FILLERS[:4]))
    words = _words(text)
    for i, word in enumerate(words):
        if word in _RESPELLINGS:
            word = rng.choice(_RESPELLINGS[word])
        elif word in HOMOPHONES and rng.random() < noise.homophone:
            word = rng.choice(HOMOPHONES[word])
        if word in DROPPABLE and len(words) > 3 and rng.random() < noise.drop:
            continue
        if "'" in word and rng.random() >= noise.keep_apostrophe:
            word = word.replace("'", "")
        if rng.random() < noise.repeat:
            out.append(word)
        out.append(word)
        if i < len(words) - 1 and rng.random() < noise.filler:
            out.append(rng.choice(FILLERS))
    return " ".join(out) if out else text.lower()


HeardLines = Mapping[str, Sequence[str]]  # authored caller line -> what Whisper heard of it


def caller_turn(
    text: str,
    rng: random.Random,
    noise: NoiseProfile = DEFAULT_NOISE,
    heard: HeardLines | None = None,
) -> str:
    """One caller turn for training: a heard variant when there is one (one that differs from
    the authored text if Whisper wrote any), else the rewrite."""
    variants = heard.get(text) if heard is not None else None
    if variants:
        changed = [v for v in variants if v != text]
        return rng.choice(changed or list(variants))
    return stt_rewrite(text, rng, noise)


def augment_conversation(
    conv: Conversation,
    seed: int,
    copy: int = 1,
    noise: NoiseProfile = DEFAULT_NOISE,
    heard: HeardLines | None = None,
) -> Conversation:
    """A copy of `conv` whose user turns read like STT output; id gets `-stt{copy}` appended."""
    rng = random.Random(f"{seed}:{conv.id}:{copy}")
    messages = tuple(
        Message(role="user", content=caller_turn(m["content"], rng, noise, heard))
        if m["role"] == "user"
        else m
        for m in conv.messages
    )
    return replace(conv, id=f"{conv.id}-stt{copy}", messages=messages)


def augment(
    conversations: Iterable[Conversation],
    seed: int,
    copies: int = 1,
    noise: NoiseProfile = DEFAULT_NOISE,
    heard: HeardLines | None = None,
) -> list[Conversation]:
    """`copies` STT-style copies of every conversation (the originals are not included).

    Given `heard`, a copy whose caller turns all came out as authored (Whisper heard every one
    word for word) is left out: it would only train that conversation twice.
    """
    conversations = list(conversations)
    made = [
        (conv, augment_conversation(conv, seed, k, noise, heard))
        for conv in conversations
        for k in range(1, copies + 1)
    ]
    if heard is None:
        return [copy for _, copy in made]
    counted = coverage(conversations, heard)
    kept = [copy for conv, copy in made if copy.messages != conv.messages]
    log.info(
        "augment_caller_turns",
        heard=counted.heard,
        rewritten=counted.fallback,
        copies=len(kept),
        verbatim_copies_left_out=len(made) - len(kept),
    )
    return kept


@dataclass(frozen=True)
class Coverage:
    """How many caller turns have heard variants, and which lines fell back to the rewrite."""

    heard: int
    fallback: int
    missing: tuple[str, ...]

    def __str__(self) -> str:
        total = self.heard + self.fallback
        return (
            f"caller turns: {self.heard} of {total} from heard variants, {self.fallback} "
            "rewritten (no heard entry: run `python -m training hear`)"
            if self.fallback
            else f"caller turns: all {total} from heard variants"
        )


def coverage(conversations: Iterable[Conversation], heard: HeardLines) -> Coverage:
    """Count the caller turns `augment` takes from `heard` and those it has to rewrite."""
    users = [m["content"] for c in conversations for m in c.messages if m["role"] == "user"]
    missing = [u for u in users if not heard.get(u)]
    return Coverage(len(users) - len(missing), len(missing), tuple(dict.fromkeys(missing)))
