"""The persona classifier (which persona said this?): trained on the authored replies, it labels
replies of conversations it never saw, so the evaluation and `bench persona` can trust it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.dataset import PERSONAS, load_dir
from training.persona_classifier import (
    PersonaClassifier,
    authored_replies,
    held_out_accuracy,
    wilson,
)

# measured: 88.7 % of 318 authored replies, 5-fold by conversation (`python -m training
# classify-eval`); the margin absorbs new data, a broken feature set falls far below it
MIN_HELD_OUT_ACCURACY = 0.80


@pytest.fixture(scope="module")
def conversations() -> list:
    return load_dir()


def test_held_out_authored_replies_are_labelled_with_their_persona(conversations: list) -> None:
    result = held_out_accuracy(conversations, folds=5)
    assert result.total == len(authored_replies(conversations))
    assert result.accuracy >= MIN_HELD_OUT_ACCURACY, result.as_dict()
    # every persona is recognised well above chance (25 %), not just the easy ones
    assert set(result.per_persona) == set(PERSONAS)
    assert min(result.per_persona.values()) >= 0.6, result.per_persona


def test_a_reply_is_judged_by_its_voice_not_its_topic(conversations: list) -> None:
    model = PersonaClassifier.from_conversations(conversations)
    assert sorted(model.personas) == sorted(PERSONAS)
    lines = {
        "comp_u_tron": "Beep boop. Processing your query, human. My circuits say yes.",
        "grandma_mae": "Oh sweetie, that reminds me of your grandpa. Have you eaten, dear?",
        "detective_jones": "Listen, pal, this city chews up folks like you. I've seen the case.",
        "operator": "One moment, caller. Press 2 for Grandma Mae or 1 for Detective Jones.",
    }
    assert model.predict(list(lines.values())) == list(lines)
    assert model.agreement([lines["operator"]], ["grandma_mae"]) == [False]
    assert model.predict([]) == []


def test_wilson_interval_brackets_the_rate() -> None:
    low, high = wilson(29, 32)
    assert low < 29 / 32 < high
    assert wilson(0, 10)[0] == 0.0
    assert wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_classify_eval_prints_the_figure_and_json_last() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training", "classify-eval", "--folds", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["folds"] == 2
    assert figures["accuracy"] >= MIN_HELD_OUT_ACCURACY - 0.05  # trained on half the data
    assert figures["ci95"][0] <= figures["accuracy"] <= figures["ci95"][1]
