"""The output guard: length cap, blocklist and markup removal, streaming and split-invariant."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator

from hypothesis import example, given, settings
from hypothesis import strategies as st

from payphone.config import load_settings
from payphone.reply.chunker import chunk_stream, clean_text
from payphone.reply.guard import BLOCKED_LINE, GuardConfig, OutputGuard, guard_stream

BLOCKLIST = ("damn*", "go to hell", "hell")


def guarded(pieces: list[str], config: GuardConfig) -> tuple[str, str | None]:
    guard = OutputGuard(config)
    out: list[str] = []
    for piece in pieces:
        out += guard.feed(piece)
        if guard.done:
            break
    out += guard.flush()
    return "".join(out), guard.reason


def cut(text: str, points: list[int]) -> list[str]:
    edges = sorted({p % (len(text) + 1) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(edges)]


def words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------- examples


def test_settings_give_the_limits() -> None:
    llm = load_settings().llm.model_copy(update={"max_reply_words": 40, "blocklist": ["darn"]})
    config = GuardConfig.from_settings(llm)
    assert (config.max_words, config.grace_words, config.blocklist) == (40, 10, ("darn",))


def test_text_passes_at_once_when_nothing_is_blocked() -> None:
    guard = OutputGuard(GuardConfig(blocklist=BLOCKLIST))
    assert guard.feed("Hello there.") == ["Hello there."]
    assert guard.feed(" He") == [" "]  # "He" could still become "hell"
    assert guard.feed("llo") == ["Hello"]
    assert guard.flush() == []
    assert guard.reason is None


def test_reply_is_capped_at_the_next_sentence_end() -> None:
    config = GuardConfig(max_words=10, grace_words=6)
    text = "One two three four five. Six seven eight nine ten eleven twelve. Thirteen."
    assert guarded(list(text), config) == (
        "One two three four five. Six seven eight nine ten eleven twelve.",
        "length",
    )
    # a reply that ends by itself within the grace is not cut
    text = "One two three four five six seven eight nine ten eleven."
    assert guarded(list(text), config) == (text, None)
    # "Mr." is not a sentence end
    text = "One two three four five six seven eight nine Mr. Smith came. Then more."
    assert guarded([text], config)[0] == (
        "One two three four five six seven eight nine Mr. Smith came."
    )


def test_a_run_on_reply_trails_off_at_the_grace_limit() -> None:
    config = GuardConfig(max_words=10, grace_words=5)
    text = " ".join(f"w{i}" for i in range(40)) + "."
    out, reason = guarded(list(text), config)
    assert out == " ".join(f"w{i}" for i in range(15)) + "..."
    assert reason == "length"


def test_a_blocked_word_ends_the_reply_politely() -> None:
    config = GuardConfig(blocklist=BLOCKLIST)
    out, reason = guarded(list("Sure. You can go to hell and stay there."), config)
    assert out == f"Sure. You can ... {BLOCKED_LINE}"
    assert reason == "blocklist"
    out, _ = guarded(["Well, that's damned ", "good."], config)
    assert out == f"Well, that's ... {BLOCKED_LINE}"
    out, _ = guarded(["Hell", "o. Shell", "fish and hell", "o."], config)
    assert out == "Hello. Shellfish and hello."
    out, _ = guarded(["Darn it. HELL no."], config)
    assert out == f"Darn it. {BLOCKED_LINE}"


def test_markup_spanning_pieces_never_reaches_the_voice() -> None:
    pieces = [
        "*cl",
        "ears thr",
        "oat* **Sure",
        "!** Here",
        ":\n- e",
        "ggs\n- mi",
        "lk (la",
        "ughs)",
    ]
    out, _ = guarded(pieces, GuardConfig())
    assert out == " Sure! Here:\neggs\nmilk "
    # a blocked word inside a stage direction is never spoken, so it blocks nothing
    out, reason = guarded(["*damn* Hi."], GuardConfig(blocklist=BLOCKLIST))
    assert (out.strip(), reason) == ("Hi.", None)


async def test_guard_stream_closes_the_model_stream_when_it_ends_the_reply() -> None:
    produced: list[str] = []
    closed: list[bool] = []

    async def model() -> AsyncIterator[str]:
        try:
            for i in range(1000):
                produced.append(f"W{i}")
                yield f"W{i}. " if i % 5 == 4 else f"W{i} "
        finally:
            closed.append(True)

    config = GuardConfig(max_words=12, grace_words=5)
    chunks = [c async for c in chunk_stream(guard_stream(model(), config))]
    assert chunks == ["W0 W1 W2 W3 W4.", "W5 W6 W7 W8 W9.", "W10 W11 W12 W13 W14."]
    assert closed == [True]
    assert len(produced) < 20  # generation stopped soon after the cap


# --------------------------------------------------------------------------- properties

VOCAB = ["hello", "shell", "hellish", "go", "to", "the", "store", "damn", "damned", "Hell", "ok"]
TEXTS = st.lists(
    st.tuples(st.sampled_from(VOCAB), st.sampled_from([" ", " ", ", ", ". ", "! ", "\n"])),
    max_size=60,
).map(lambda pairs: "".join(word + sep for word, sep in pairs))
MARKED = st.lists(
    st.sampled_from([*VOCAB, "*sighs*", "(laughs)", "**big**", "- ", "\n", ". ", " "]), max_size=40
).map(" ".join)
CUTS = st.lists(st.integers(0, 10_000), max_size=30)
BANNED = re.compile(r"(?<!\w)(damn\w*|go\s+to\s+hell|hell)(?!\w)", re.IGNORECASE)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(TEXTS, MARKED), points=CUTS, cap=st.integers(5, 30))
@example(text="hello hello hello hello shell ", points=[], cap=5)  # "shell" past the cap
def test_guard_output_does_not_depend_on_the_pieces(text: str, points: list[int], cap: int) -> None:
    config = GuardConfig(max_words=cap, grace_words=4, blocklist=BLOCKLIST)
    assert (
        guarded(cut(text, points), config) == guarded([text], config) == guarded(list(text), config)
    )


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(TEXTS, MARKED), points=CUTS, cap=st.integers(5, 30))
def test_no_blocked_word_and_no_overlong_reply(text: str, points: list[int], cap: int) -> None:
    config = GuardConfig(max_words=cap, grace_words=4, blocklist=BLOCKLIST)
    out, reason = guarded(cut(text, points), config)
    assert not BANNED.search(out)
    spoken = out.removesuffix(BLOCKED_LINE)
    assert words(spoken) <= cap + config.grace_words
    for marker in ("*", "(", "sighs", "laughs"):
        assert marker not in out
    if reason is None:  # nothing cut: everything the model said, cleaned, was passed on
        assert "".join(out.split()) == "".join(clean_text(text).split())
    else:
        assert "".join(spoken.split()).removesuffix("...") in "".join(clean_text(text).split())
