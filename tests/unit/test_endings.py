"""The words' half of the end-of-turn decision: does a transcript trail off?"""

from __future__ import annotations

import pytest

from payphone.call.endings import sounds_unfinished


@pytest.mark.parametrize(
    "text",
    ["My name is", "My name is.", "I was calling about the", "Could you, um", "So...", "and,"],
)
def test_trailing_transcripts_sound_unfinished(text: str) -> None:
    assert sounds_unfinished(text)


@pytest.mark.parametrize(
    "text",
    ["What time is it?", "Thank you.", "My car broke down.", "Yes I can.", "", "Who is it for?"],
)
def test_finished_transcripts_do_not(text: str) -> None:
    assert not sounds_unfinished(text)
