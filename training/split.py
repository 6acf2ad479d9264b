"""A stable train/eval split by conversation id.

Each id hashes (sha256) to a fixed point in [0, 1); ids below `eval_share` are held out. The
side a conversation lands on depends on its id alone, so adding or editing other conversations
never moves it, and eval loss stays comparable between runs as the data grows.

Split before augmenting: an augmented copy must stay on its original's side, or the model would
be evaluated on a conversation it trained on.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from training.dataset import PERSONAS, Conversation

DEFAULT_EVAL_SHARE = 0.1
DEFAULT_MIN_EVAL_PER_PERSONA = 3


def bucket(conv_id: str) -> float:
    """The id's fixed position in [0, 1): the first 8 bytes of its sha256."""
    digest = hashlib.sha256(conv_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_eval(conv_id: str, eval_share: float = DEFAULT_EVAL_SHARE) -> bool:
    """Whether the id is held out at this share (depends on the id only)."""
    return bucket(conv_id) < eval_share


@dataclass(frozen=True)
class Split:
    """The two sides; `topped_up` lists ids moved to eval only to reach the per-persona minimum."""

    train: tuple[Conversation, ...]
    eval: tuple[Conversation, ...]
    topped_up: tuple[str, ...] = ()

    def eval_counts(self) -> dict[str, int]:
        """Held-out conversations per persona (every known persona listed, zero included)."""
        counts = Counter(c.persona for c in self.eval)
        return {slug: counts.get(slug, 0) for slug in PERSONAS}


def split(
    conversations: Sequence[Conversation],
    eval_share: float = DEFAULT_EVAL_SHARE,
    min_eval_per_persona: int = DEFAULT_MIN_EVAL_PER_PERSONA,
) -> Split:
    """Hold out ids whose bucket is below `eval_share`.

    A persona with fewer than `min_eval_per_persona` held out (only while it has little data)
    is topped up with its lowest-bucket training conversations, which keeps the choice stable
    too; those ids are reported in `topped_up`. Input order is kept on both sides.
    """
    if not 0.0 < eval_share < 1.0:
        raise ValueError(f"eval_share must be between 0 and 1, got {eval_share}")
    held = {c.id for c in conversations if is_eval(c.id, eval_share)}
    topped: list[str] = []
    for persona in _personas(conversations):
        mine = [c for c in conversations if c.persona == persona]
        short = min(min_eval_per_persona, len(mine) - 1) - sum(c.id in held for c in mine)
        if short > 0:
            extra = sorted((c for c in mine if c.id not in held), key=lambda c: bucket(c.id))
            topped += [c.id for c in extra[:short]]
    held.update(topped)
    return Split(
        train=tuple(c for c in conversations if c.id not in held),
        eval=tuple(c for c in conversations if c.id in held),
        topped_up=tuple(topped),
    )


def _personas(conversations: Iterable[Conversation]) -> list[str]:
    return list(dict.fromkeys(c.persona for c in conversations))
