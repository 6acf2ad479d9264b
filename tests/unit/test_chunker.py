"""The chunker: cleaned, speakable chunks that do not depend on how the model cut its pieces."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payphone.reply.chunker import (
    ChunkerConfig,
    TextChunker,
    chunk_stream,
    clean_text,
    find_sentence_end,
    speakable,
)
from payphone.reply.markup import MarkupStripper

# --------------------------------------------------------------------------- helpers


def chunks_of(pieces: list[str], config: ChunkerConfig | None = None) -> list[str]:
    chunker = TextChunker(config)
    out: list[str] = []
    for piece in pieces:
        out += chunker.feed(piece)
    return out + chunker.flush()


def strip_of(pieces: list[str]) -> str:
    stripper = MarkupStripper()
    return "".join(stripper.feed(piece) for piece in pieces) + stripper.flush()


def no_space(text: str) -> str:
    return "".join(text.split())


def cut(text: str, points: list[int]) -> list[str]:
    edges = sorted({p % (len(text) + 1) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- examples


def test_first_chunk_at_first_sentence_end_before_stream_ends() -> None:
    chunker = TextChunker()
    assert chunker.feed("Hello there") == []
    assert chunker.feed("!") == []  # is it the end? only the next word can tell
    assert chunker.feed(" How") == ["Hello there!"]
    assert chunker.feed(" are you?") == []
    assert chunker.flush() == ["How are you?"]


def test_long_first_sentence_is_cut_at_a_clause_after_n_words() -> None:
    text = "I was thinking about going to the store later today, but then I remembered it closed."
    assert chunks_of(list(text)) == [
        "I was thinking about going to the store later today,",
        "but then I remembered it closed.",
    ]
    # a short clause is not worth a chunk of its own
    assert chunks_of(["Well, hello there. Bye."]) == ["Well, hello there.", "Bye."]


def test_a_sentence_ending_in_hon_goes_out_before_the_next_is_written() -> None:
    chunker = TextChunker()
    assert chunker.feed("I'm not sure, hon.") == []
    assert chunker.feed(" I'll") == ["I'm not sure, hon."]
    assert chunker.flush() == ["I'll"]
    assert find_sentence_end("Right away, hon. Hold the line.") == len("Right away, hon.")


def test_later_sentences_are_not_cut_at_short_clauses() -> None:
    text = "Hi. Sure, I can help with that, my friend, if you like, of course. Bye."
    assert chunks_of([text]) == [
        "Hi.",
        "Sure, I can help with that, my friend, if you like, of course.",
        "Bye.",
    ]


def test_run_on_text_is_cut_at_max_words() -> None:
    words = [f"word{i}" for i in range(100)]
    chunks = chunks_of([" ".join(words)], ChunkerConfig(max_words=40))
    assert [len(c.split()) for c in chunks] == [40, 40, 20]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Mr. Smith and Mrs. Jones met Dr. Who on St. James Street. Then they left.",
            ["Mr. Smith and Mrs. Jones met Dr. Who on St. James Street.", "Then they left."],
        ),
        (
            "Come at 10:30 a.m. tomorrow. Or at 5 p.m. Bring 3.14 pies.",
            ["Come at 10:30 a.m. tomorrow.", "Or at 5 p.m.", "Bring 3.14 pies."],
        ),
        (
            "Fruit e.g. Apples i.e. Red ones vs. Pears etc. and more. Yes.",
            ["Fruit e.g. Apples i.e. Red ones vs. Pears etc. and more.", "Yes."],
        ),
        ("J. R. R. Tolkien lived in the U.S. Army days. Really.", None),
        (
            "Hmm... let me think. Well... That is it.",
            ["Hmm... let me think.", "Well...", "That is it."],
        ),
        ("That costs 1,000 dollars: a lot. Okay.", ["That costs 1,000 dollars: a lot.", "Okay."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ],
)
def test_protected_forms_are_not_split(text: str, expected: list[str] | None) -> None:
    chunks = chunks_of(list(text))
    if expected is None:
        assert chunks == ["J. R. R. Tolkien lived in the U.S. Army days.", "Really."]
    else:
        assert chunks == expected


def test_phone_numbers_are_read_digit_by_digit_and_never_split() -> None:
    assert speakable("Call 555-0123.") == "Call 5 5 5, 0 1 2 3."
    assert speakable("Call (555) 123-4567 now") == "Call 5 5 5, 1 2 3, 4 5 6 7 now"
    assert speakable("Or 1-800-555-0199, or +1 555.123.4567") == (
        "Or 1, 8 0 0, 5 5 5, 0 1 9 9, or 1, 5 5 5, 1 2 3, 4 5 6 7"
    )
    # not phone numbers: a date, a year range, a decimal
    assert speakable("On 2024-01-15, 1990-2000, 3.14") == "On 2024-01-15, 1990-2000, 3.14"
    words = " ".join(f"w{i}" for i in range(ChunkerConfig().max_words - 2))  # at the cut
    chunks = chunks_of([f"{words} (555) 123-4567 and more words follow here for a while"])
    assert chunks[0].endswith("5 5 5, 1 2 3, 4 5 6 7")


def test_markdown_emojis_and_stage_directions_are_stripped() -> None:
    text = (
        "*sighs* **Sure thing!** 👋 Here's _my_ list (laughs):\n"
        "- eggs\n* milk\n1. `bread`\n## Done\n---\n"
        "> See [the shop](http://x.example/a) [pause] now.\n"
        "```python\nprint('hi')\n```\nBye 😀!"
    )
    assert chunks_of(list(text)) == [
        "Sure thing!",
        "Here's my list:",
        "eggs",
        "milk",
        "bread",
        "Done",
        "See the shop now.",
        "Bye!",
    ]


def test_unclosed_constructs_do_not_swallow_the_line() -> None:
    assert clean_text("I rate it 5 * 3 and (maybe more\nyes") == "I rate it 5 3 and (maybe more yes"
    assert clean_text("snake_case stays, :( sad") == "snake_case stays, :( sad"
    assert clean_text("*never closed") == "never closed"
    assert clean_text("(555) 123-4567") == "5 5 5, 1 2 3, 4 5 6 7"


def test_find_sentence_end_uses_the_same_abbreviation_rules() -> None:
    text = "Ask Mr. Smith. Then go."
    assert find_sentence_end(text) == len("Ask Mr. Smith.")
    assert find_sentence_end("Ask Mr. Smith.") is None
    assert find_sentence_end("Ask Mr. Smith.", final=True) == len("Ask Mr. Smith.")


async def test_chunk_stream_yields_first_chunk_while_the_model_still_writes() -> None:
    progress: list[str] = []
    closed: list[bool] = []

    async def tokens() -> AsyncIterator[str]:
        try:
            for piece in ["Hello", " there", ".", " How", " are", " you", "?"]:
                progress.append(piece)
                yield piece
        finally:
            closed.append(True)

    stream = chunk_stream(tokens())
    first = await anext(stream)
    assert first == "Hello there."
    assert progress == ["Hello", " there", ".", " How"]
    rest = [chunk async for chunk in stream]
    assert rest == ["How are you?"]
    assert closed == [True]


async def test_chunk_stream_closes_the_source_when_the_caller_hangs_up() -> None:
    closed: list[bool] = []

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "Again. "
        finally:
            closed.append(True)

    stream = chunk_stream(endless())
    assert await anext(stream) == "Again."
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed == [True]


# --------------------------------------------------------------------------- properties

WORDS = ["hello", "there", "the", "phone", "rings", "old", "friend", "coffee", "town", "night"]
PROTECTED = [
    ("Mr. Smith", "Mr. Smith"),
    ("Mrs. Jones", "Mrs. Jones"),
    ("Dr. Who", "Dr. Who"),
    ("St. Louis", "St. Louis"),
    ("Jr. said", "Jr. said"),
    ("10:30 a.m. sharp", "10:30 a.m. sharp"),
    ("5 p.m. today", "5 p.m. today"),
    ("e.g. Paris", "e.g. Paris"),
    ("i.e. Rome", "i.e. Rome"),
    ("etc. and", "etc. and"),
    ("vs. Them", "vs. Them"),
    ("3.14", "3.14"),
    ("1,000", "1,000"),
    ("555-0123", "5 5 5, 0 1 2 3"),
    ("(555) 123-4567", "5 5 5, 1 2 3, 4 5 6 7"),
    ("1-800-555-0199", "1, 8 0 0, 5 5 5, 0 1 9 9"),
    ("well... maybe", "well... maybe"),
]
MARKUP = ["*sighs*", "(laughs)", "[pause]", "**big**", "_soft_", "`code`", "😀", "👍🏽"]
ENDINGS = [".", "!", "?", "...", ".", "!"]


@st.composite
def sentences(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts: list[str] = []
    forms: list[str] = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["word", "word", "word", "form", "markup", "comma"]))
        if kind == "form":
            raw, spoken = draw(st.sampled_from(PROTECTED))
            parts.append(raw)
            forms.append(spoken)
        elif kind == "markup":
            parts.append(draw(st.sampled_from(MARKUP)))
        elif kind == "comma" and parts:
            parts[-1] += draw(st.sampled_from([",", ";", ":", " —"]))
        else:
            parts.append(draw(st.sampled_from(WORDS)))
    first = draw(st.sampled_from(WORDS)).capitalize()
    return " ".join([first, *parts]) + draw(st.sampled_from(ENDINGS)), forms


@st.composite
def replies(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = ""
    forms: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        sentence, used = draw(sentences())
        prefix = draw(st.sampled_from(["", "", "", "- ", "## ", "1. "]))
        joiner = draw(st.sampled_from([" ", " ", "\n", "\n\n"])) if text else ""
        text += joiner + (prefix if joiner.startswith("\n") or not text else "") + sentence
        forms += used
    return text, forms


CUTS = st.lists(st.integers(0, 10_000), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies(), points=CUTS)
def test_any_split_into_pieces_gives_the_same_chunks(
    reply: tuple[str, list[str]], points: list[int]
) -> None:
    text, _ = reply
    whole = chunks_of([text])
    assert chunks_of(cut(text, points)) == whole
    assert chunks_of(list(text)) == whole


@settings(max_examples=150, deadline=None)
@given(reply=replies())
def test_joined_chunks_equal_the_cleaned_text(reply: tuple[str, list[str]]) -> None:
    text, _ = reply
    chunks = chunks_of([text])  # any other split gives the same chunks (tested above)
    assert all(chunk == chunk.strip() and chunk for chunk in chunks)
    joined, clean = no_space("".join(chunks)), no_space(clean_text(text))
    assert clean.startswith(joined)
    assert not any(c.isalnum() for c in clean[len(joined) :])  # only a silent tail is dropped
    for marker in ("*", "_", "`", "[", "#", "😀", "👍", "laughs", "sighs", "pause"):
        assert marker not in "".join(chunks)


@settings(max_examples=150, deadline=None)
@given(reply=replies(), points=CUTS)
def test_protected_forms_stay_inside_one_chunk(
    reply: tuple[str, list[str]], points: list[int]
) -> None:
    text, forms = reply
    chunks = chunks_of(cut(text, points))
    spaced, separated = " ".join(chunks), "\x00".join(chunks)
    for form in set(forms):
        assert spaced.count(form) == separated.count(form) > 0, (form, chunks)


@settings(max_examples=100, deadline=None)
@given(first=sentences(), second=sentences(), points=CUTS)
def test_first_chunk_comes_out_before_the_stream_ends(
    first: tuple[str, list[str]], second: tuple[str, list[str]], points: list[int]
) -> None:
    head, tail = first[0], second[0]
    text = head + " " + tail
    chunker = TextChunker()
    seen_before_end: list[str] = []
    for piece in cut(text, points):
        seen_before_end += chunker.feed(piece)
    assert seen_before_end, text  # something was spoken before the stream ended
    assert no_space(seen_before_end[0]) in no_space(clean_text(head))


ODD = st.text(alphabet="ab Z.,!?:;-—*_`()[]\n#>1 👋", max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=ODD, points=CUTS)
def test_stripper_and_chunker_are_split_invariant_on_odd_text(text: str, points: list[int]) -> None:
    assert strip_of(cut(text, points)) == strip_of([text]) == strip_of(list(text))
    assert chunks_of(cut(text, points)) == chunks_of([text])
    joined = no_space("".join(chunks_of(list(text))))
    assert no_space(clean_text(text)).startswith(joined)
