"""Which persona said this? A small text classifier trained on the authored replies.

Keyword lists could not tell the personas apart (35 % of other personas' authored replies passed
a persona's own list), so persona consistency is judged by a classifier instead: TF-IDF over word
uni- and bigrams plus character 2-5-grams (within words: it catches "hon", "beep", "sweetie" and
"boop" in any spelling), into a logistic regression. It trains in about a second on a CPU, is
deterministic, and answers with the persona id whose authored replies the text reads most like.

Its own accuracy is measured honestly: cross-validation grouped by conversation, so no reply is
judged by a model that saw another reply of the same conversation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.dataset import Conversation

DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class Reply:
    """One authored reply: what was said, who said it, and in which conversation."""

    text: str
    persona: str
    conversation: str


def authored_replies(conversations: Sequence[Conversation]) -> list[Reply]:
    """Every assistant turn of the authored conversations, in order."""
    return [
        Reply(m["content"], conv.persona, conv.id)
        for conv in conversations
        for m in conv.messages
        if m["role"] == "assistant"
    ]


def _pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    return make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))


class PersonaClassifier:
    """`predict(texts)` -> persona ids; train with `fit` on authored replies."""

    def __init__(self) -> None:
        self._model: Any = None

    @classmethod
    def fit(cls, replies: Sequence[Reply]) -> PersonaClassifier:
        """Train on replies (needs at least two personas)."""
        classifier = cls()
        classifier._model = _pipeline().fit([r.text for r in replies], [r.persona for r in replies])
        return classifier

    @classmethod
    def from_conversations(cls, conversations: Sequence[Conversation]) -> PersonaClassifier:
        return cls.fit(authored_replies(conversations))

    @property
    def personas(self) -> list[str]:
        return [str(c) for c in self._model.classes_]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The persona each text reads most like (an empty text still gets a label)."""
        if not texts:
            return []
        return [str(p) for p in self._model.predict(list(texts))]

    def agreement(self, texts: Sequence[str], personas: Sequence[str]) -> list[bool]:
        """For each text, whether it is classified as the persona that said it."""
        return [got == want for got, want in zip(self.predict(texts), personas, strict=True)]


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate (sound at 0 %, 100 % and small counts)."""
    if total == 0:
        return (0.0, 1.0)
    rate = successes / total
    denom = 1 + z * z / total
    centre = (rate + z * z / (2 * total)) / denom
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class HeldOutAccuracy:
    """Cross-validated accuracy on authored replies, split by conversation."""

    correct: int
    total: int
    folds: int
    per_persona: dict[str, float]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        low, high = wilson(self.correct, self.total)
        return {
            "accuracy": round(self.accuracy, 4),
            "ci95": [round(low, 4), round(high, 4)],
            "replies": self.total,
            "folds": self.folds,
            "per_persona": {k: round(v, 4) for k, v in self.per_persona.items()},
        }


def held_out_accuracy(
    conversations: Sequence[Conversation], folds: int = DEFAULT_FOLDS
) -> HeldOutAccuracy:
    """Each reply labelled by a classifier trained without its conversation (k-fold by group)."""
    from sklearn.model_selection import GroupKFold

    replies = authored_replies(conversations)
    groups = [r.conversation for r in replies]
    right: dict[str, list[bool]] = {}
    for train_idx, test_idx in GroupKFold(n_splits=folds).split(replies, groups=groups):
        model = PersonaClassifier.fit([replies[i] for i in train_idx])
        held = [replies[i] for i in test_idx]
        for reply, ok in zip(
            held, model.agreement([r.text for r in held], [r.persona for r in held]), strict=True
        ):
            right.setdefault(reply.persona, []).append(ok)
    correct = sum(sum(v) for v in right.values())
    total = sum(len(v) for v in right.values())
    per_persona = {p: sum(v) / len(v) for p, v in sorted(right.items())}
    return HeldOutAccuracy(correct, total, folds, per_persona)
