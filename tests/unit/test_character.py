"""Out of character: the phone never speaks a chunk that recites the prompt or talks as an AI;
the persona's deflection takes its place and the reply ends there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from payphone.call.events import CallState
from payphone.personas.loader import Persona, load_persona, load_personas
from payphone.reply.character import in_character, rule_for
from payphone.sim.stand_ins import ScriptedBackend
from tests.unit.test_call_core import PATIENT, on_the_line
from tests.unit.test_call_loop import make_rig, speak, switch_off
from training.dataset import load_dir

PERSONAS = {p.id: p for p in load_personas()}
OPERATOR = PERSONAS["operator"]


class Source:
    """Scripted chunks that notes when it was closed (the model stops when it is)."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.closed = False

    async def stream(self) -> AsyncIterator[str]:
        try:
            for chunk in self.chunks:
                yield chunk
        finally:
            self.closed = True


async def spoken(chunks: list[str], persona: Persona = OPERATOR) -> tuple[list[str], list[str]]:
    """What the caller hears of `chunks`, and why it broke character (empty: it did not)."""
    source, why = Source(chunks), list[str]()
    stream = in_character(source.stream(), persona, why.extend)
    heard = []
    async for chunk in stream:
        if chunk == persona.deflection:
            assert source.closed  # the model stopped before the deflection is even queued
        heard.append(chunk)
    assert source.closed
    return heard, why


async def test_talking_as_an_ai_ends_the_reply_in_the_personas_deflection() -> None:
    heard, why = await spoken(
        ["Well, hon.", "As an AI language model, I can't do that.", "Anything else?"]
    )
    assert heard == ["Well, hon.", OPERATOR.deflection]
    assert why == ["as an AI"]


@pytest.mark.parametrize("cut", ["Speak in one to -", "Speak in one to"])
async def test_the_prompt_recited_across_two_chunks_is_not_spoken(cut: str) -> None:
    # the Operator's prompt: "Speak in one to three short sentences, as if on the phone."
    first = f"Sure. {cut}"
    heard, why = await spoken([first, "three short sentences, as if on the phone.", "Bye."])
    assert heard == [first, OPERATOR.deflection]
    assert why and why[0].startswith("prompt: ")


async def test_the_persona_tag_and_the_machinerys_words_are_not_spoken() -> None:
    for said in (f"I am {OPERATOR.prompt_tag}.", "My system prompt says to be nice."):
        heard, why = await spoken(["Right.", said])
        assert heard == ["Right.", OPERATOR.deflection], said
        assert why


@pytest.mark.parametrize(
    ("persona", "said"),
    [
        ("grandma_mae", "A language model? Sweetie, the only model I ever was is for my knitting."),
        ("grandma_mae", "I was trained by my mother in a hot kitchen with a wooden spoon."),
        ("operator", "Press 1 for Detective Jones, 2 for Grandma Mae, 3 for COMP-U-TRON 3000."),
        ("operator", "I'm not an AI, dear, I'm the Operator."),
        ("operator", "If you do not know something, hon, ask the library."),  # 6 words of prompt
        ("operator", "Operator here, persona of the night shift."),  # tag: "persona: Operator"
        ("comp_u_tron", "I AM AN ARTIFICIAL INTELLIGENCE. BEEP BOOP."),
        ("comp_u_tron", "I DO NOT HAVE FEELINGS, HUMAN. I WAS BUILT BY ENGINEERS IN 1983."),
        ("detective_jones", "I don't have feelings for her, pal. Not anymore."),
    ],
)
async def test_in_character_lines_pass_whole(persona: str, said: str) -> None:
    chunks = [said, "Anything else?"]
    assert await spoken(chunks, PERSONAS[persona]) == (chunks, [])


def test_no_authored_reply_and_no_deflection_breaks_character() -> None:
    """The rule is narrow: every reply in the training data would be spoken as written."""
    broken = [
        (c.persona, m["content"])
        for c in load_dir()
        for m in c.messages
        if m["role"] == "assistant" and rule_for(PERSONAS[c.persona]).out_of_character(m["content"])
    ]
    assert broken == []
    for persona in PERSONAS.values():
        assert rule_for(persona).out_of_character(persona.deflection) == [], persona.id


def test_a_deflection_that_breaks_character_is_refused_naming_the_field(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "payphone-app/payphone/personas/operator.toml"
    text = shipped.read_text("utf-8").replace(
        OPERATOR.deflection, "As an AI, I cannot discuss that."
    )
    (tmp_path / "operator.toml").write_text(text, "utf-8")
    with pytest.raises(ValueError, match=r"field deflection: .*breaks character itself"):
        load_persona(tmp_path / "operator.toml")


async def test_the_caller_hears_the_deflection_and_the_history_keeps_what_was_said() -> None:
    backend = ScriptedBackend(
        reply="Good evening, caller. I'm an AI assistant, so I can't connect you. Bye now.",
        token_delay_s=0.005,
    )
    rig, _, _, synth = make_rig(["Who are you really?"], backend=backend, settings=PATIENT)
    task = await on_the_line(rig)
    await speak(rig)
    await rig.wait_state(CallState.THINKING)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    await asyncio.sleep(0.1)
    call = rig.calls[0]
    [turn] = call.log.turns
    deflection = call.persona.deflection
    assert turn.deflected and not turn.fallback
    assert deflection in synth.spoken
    assert not any("AI assistant" in text for text in synth.spoken)
    assert turn.reply == f"Good evening, caller. {deflection}"
    assert call.conversation.turns[-1] == {"role": "assistant", "content": turn.reply}
    assert backend.active == 0  # the model was stopped at the break
    await switch_off(rig, task)
