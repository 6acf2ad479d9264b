"""The speech round trip for training data: authored caller lines through real Piper, the
telephone band and the phone's real Whisper, stored once and reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from payphone.bench.stt import word_error_rate
from payphone.config import Settings
from training.dataset import Conversation, Message
from training.hear import VOICES, CallerSpeech, caller_lines, hear, heard_variants, read_heard

pytestmark = pytest.mark.models

LINES = ("Hello, is anyone there?", "Can you put me through to Grandma Mae?")


def conversation(conv_id: str, *callers: str) -> Conversation:
    reply = "Operator here, dear, how may I direct your call this fine evening?"
    turns = [m for c in callers for m in (Message(role="user", content=c),
                                          Message(role="assistant", content=reply))]  # fmt: skip
    system = Message(role="system", content="persona: Operator")
    return Conversation(conv_id, "operator", (system, *turns))


def test_caller_lines_are_heard_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "callers.jsonl"
    # the same line twice in the data is heard once
    data = [conversation("operator-901", LINES[0]), conversation("operator-902", *LINES)]
    assert caller_lines(data) == list(LINES)

    first = hear(data, path)
    assert (first.lines, first.done, first.reused) == (2, 2 * len(VOICES), 0)
    book = read_heard(path)
    assert sorted(book) == sorted(LINES)
    for line, voices in book.items():
        assert [v.name for v in VOICES] == list(voices)
        heard = [h.text for h in voices.values()]
        # what Whisper wrote resembles the line (cased, punctuated; not necessarily word-perfect)
        assert word_error_rate([line] * len(heard), heard) < 35.0, heard
        assert any(h[:1].isupper() for h in heard), heard
    assert all(voices["plain"].params["length_scale"] == 1.0 for voices in book.values())
    written = path.read_text(encoding="utf-8")
    assert [json.loads(raw)["line"] for raw in written.splitlines()] == sorted(LINES)

    again = hear(data, path)  # nothing new: no model is even loaded
    assert (again.done, again.reused) == (0, 2 * len(VOICES))
    assert path.read_text(encoding="utf-8") == written
    assert set(heard_variants(path)) == set(LINES)

    only_first = hear(data[:1], path)  # a line gone from the data leaves the file
    assert (only_first.done, only_first.dropped) == (0, 1)
    assert list(read_heard(path)) == [LINES[0]]


def test_a_caller_voice_sounds_the_same_every_time() -> None:
    speech = CallerSpeech(Settings())
    for voice in VOICES[:2]:
        a, b = speech.speak(LINES[0], voice), speech.speak(LINES[0], voice)
        assert a.dtype == np.int16 and len(a) > 16000 // 2
        assert np.array_equal(a, b)
    plain, quick = (speech.speak(LINES[0], v) for v in VOICES[:2])
    assert len(quick) < len(plain)  # length_scale 0.85 speaks faster
