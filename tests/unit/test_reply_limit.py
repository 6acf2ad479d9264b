"""A reply the model could not finish (it hit `num_predict`) ends at its last full sentence: the
backend's `HIT_LIMIT` mark travels through the guard to the chunker, which drops the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from payphone.call.events import CallState
from payphone.llm.base import ChatOptions, Message
from payphone.reply.chunker import TextChunker, chunk_stream, unfinished_tail
from payphone.reply.guard import GuardConfig
from payphone.reply.speakable import make_speakable
from payphone.sim.stand_ins import ScriptedBackend
from payphone.streams import HIT_LIMIT, hit_limit
from tests.unit.test_call_loop import make_rig, running, speak, switch_off


async def pieces(text: str, limited: bool) -> AsyncIterator[str]:
    for word in text.split(" "):
        yield word + " "
    if limited:
        yield HIT_LIMIT


async def spoken(text: str, limited: bool, guard: GuardConfig | None = None) -> list[str]:
    return [c async for c in make_speakable(guard)(pieces(text, limited))]


def test_the_mark_is_an_empty_piece_nothing_else_is() -> None:
    assert HIT_LIMIT == "" and hit_limit(HIT_LIMIT)
    assert not hit_limit("") and not hit_limit("Hello.")
    assert not hit_limit(HIT_LIMIT + "")  # text made from it is plain text
    assert "".join(["Hi.", HIT_LIMIT]) == "Hi."


@pytest.mark.parametrize(
    ("text", "tail"),
    [
        ("Hello there. How are", "How are"),
        ("I met Mr. Smith at noon. He said that", "He said that"),
        ("It costs 3.50 a day, dear. Or", "Or"),
        ("Wait... What was", "What was"),
        ("no sentence ends here", "no sentence ends here"),
        ("Done. All of it.", None),
        ('He said "go home." ', None),
        ("   ", None),
    ],
)
def test_the_unfinished_tail_starts_after_the_last_sentence_end(
    text: str, tail: str | None
) -> None:
    start = unfinished_tail(text)
    assert (None if start is None else text[start:].strip()) == tail


async def test_a_cut_off_reply_drops_its_half_sentence() -> None:
    text = "Oh, hello sweetie. Biscuit is asleep on my lap. Now, the best part of baking is the"
    assert await spoken(text, limited=False) == [
        "Oh, hello sweetie.",
        "Biscuit is asleep on my lap.",
        "Now, the best part of baking is the",
    ]
    cut = await spoken(text, limited=True)
    assert cut == ["Oh, hello sweetie.", "Biscuit is asleep on my lap."]


async def test_a_finished_reply_or_a_lone_fragment_is_spoken_whole() -> None:
    assert await spoken("Case closed. Go home, kid.", limited=True) == [
        "Case closed.",
        "Go home, kid.",
    ]
    # nothing else would be said: the fragment beats the apology for a "bad connection"
    assert await spoken("BEEP BOOP computing the answer to", limited=True) == [
        "BEEP BOOP computing the answer to"
    ]


async def test_markup_left_open_at_the_limit_is_not_spoken() -> None:
    chunks = await spoken("Hello, dear. *Pours the tea and", limited=True)
    assert chunks == ["Hello, dear."]


async def test_the_guard_passes_the_mark_on_past_its_word_cap() -> None:
    # past the guard's word cap, inside its grace: the model's limit still drops the fragment
    text = "One two three four five. Six seven eight nine ten eleven"
    assert await spoken(text, limited=True, guard=GuardConfig(max_words=3, grace_words=10)) == [
        "One two three four five."
    ]


async def test_the_chunker_alone_reads_the_mark() -> None:
    chunks = [c async for c in chunk_stream(pieces("Yes. And then", limited=True))]
    assert chunks == ["Yes."]
    chunker = TextChunker()
    assert chunker.feed("Yes. And then") == ["Yes."]
    assert chunker.flush() == ["And then"]  # no mark: the model finished, keep it
    chunker.feed("No. But")
    assert chunker.flush(drop_unfinished=True) == []


class CutBackend(ScriptedBackend):
    """A scripted reply that the model's token limit stopped mid-sentence."""

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        async for piece in super().stream(messages, options):
            yield piece
        yield HIT_LIMIT


async def test_a_call_speaks_and_remembers_only_the_whole_sentences() -> None:
    backend = CutBackend(reply="Hello there. How can I help you today? I was just about to")
    rig, _, _, synth = make_rig(["what time is it"], backend=backend)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.reply == "Hello there. How can I help you today?"
    assert not turn.fallback
    assert synth.spoken[-2:] == ["Hello there.", "How can I help you today?"]
    assert call.conversation.turns[-1] == {"role": "assistant", "content": turn.reply}
    await switch_off(rig, task)
