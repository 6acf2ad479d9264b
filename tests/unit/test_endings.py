"""The words' half of the end-of-turn decision: does a transcript trail off?"""

from __future__ import annotations

import pytest

from payphone.call.endings import (
    is_backchannel,
    only_greets,
    only_opens,
    reads_complete,
    sounds_unfinished,
    takes_the_floor,
)


@pytest.mark.parametrize(
    "text",
    [
        "My name is",
        "My name is.",
        "I was calling about the",
        "Could you, um",
        "So...",
        "and,",
        "I was wondering if you could",
        "I was wondering.",
        "Could you tell me?",  # the voice rose, but it waits for what
        "Can you show us",
    ],
)
def test_trailing_transcripts_sound_unfinished(text: str) -> None:
    assert sounds_unfinished(text)


@pytest.mark.parametrize(
    "text",
    [
        *("What time is it?", "Thank you.", "My car broke down.", "Yes I can.", ""),
        *("Who is it for?", "Can you help me?", "Tell me more.", "Could you call me?"),
    ],
)
def test_finished_transcripts_do_not(text: str) -> None:
    assert not sounds_unfinished(text)


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("Is anybody there? I can barely hear you.", True),
        ("My car broke down and I need a tow truck!", True),
        ("I was wondering.", False),  # a fragment Whisper closed with a full stop
        ("So the thing is.", False),
        ("What time does the library close?", False),  # a question: the turn model's call
        ("I would like to speak to the.", False),
        ("Well, I was going to say...", False),
    ],
)
def test_a_complete_statement_reads_complete(text: str, complete: bool) -> None:
    assert reads_complete(text) is complete


@pytest.mark.parametrize(
    "text", ["Mm-hm.", "Yeah.", "Uh-huh.", "Okay, right.", "I see.", "", "Hmm?"]
)
def test_a_listeners_noises_are_a_backchannel(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", ["Stop.", "Wait!", "No.", "Yeah, but what time is it?", "Sorry?"])
def test_a_short_request_is_not(text: str) -> None:
    assert not is_backchannel(text)


@pytest.mark.parametrize(
    "text",
    ["Stop.", "Wait!", "No, no.", "Sorry?", "Hold on.", "Is it open?", "I need a taxi right now."],
)
def test_a_short_burst_that_asks_for_the_turn_takes_the_floor(text: str) -> None:
    assert takes_the_floor(text)


@pytest.mark.parametrize("text", ["and then make them", "Mm-hm.", "", "the one"])
def test_a_short_burst_of_stray_words_does_not(text: str) -> None:
    """'and then make them' is what Whisper tiny.en wrote for Piper's 'Mm-hm.' over an echo."""
    assert not takes_the_floor(text)


@pytest.mark.parametrize(
    ("text", "opens"),
    [
        ("Stop.", True),
        ("Actually", True),
        ("Hang on.", True),
        ("Wait, no", True),
        ("What?", False),  # a question is answered at once
        ("Stop, I need a taxi.", False),  # a whole request
        ("Sorry, can I ask you something?", False),
        ("Tell me a joke.", False),  # short, but the whole request
        ("", False),
    ],
)
def test_a_short_opening_waits_for_the_rest(text: str, opens: bool) -> None:
    assert only_opens(text) is opens


@pytest.mark.parametrize(
    ("text", "greets"),
    [
        ("Hello?", True),
        ("Hello.", True),
        ("Hi there.", True),
        ("Oh, hello operator.", True),
        ("Hello, who am I speaking with?", False),  # the whole request
        ("Hello, is anybody there?", False),
        ("Help!", False),
        ("There.", False),  # no greeting in it
        ("", False),
    ],
)
def test_a_lone_greeting_only_greets(text: str, greets: bool) -> None:
    assert only_greets(text) is greets
