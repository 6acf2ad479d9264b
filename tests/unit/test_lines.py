"""Whole lines: `render_line` joins a synthesis into one clip; `LineBook` keeps each one once."""

from __future__ import annotations

import asyncio

import numpy as np

from payphone.call.lines import FIXED_LINES, LineBook, render_line
from payphone.personas.loader import load_personas
from payphone.sim.stand_ins import ToneSynthesizer
from payphone.speech.base import VoiceSpec


async def test_render_line_joins_the_chunks_of_one_synthesis() -> None:
    synth = ToneSynthesizer(delay_s=0.0)
    pcm = await render_line(synth, "one two three", VoiceSpec())
    assert pcm.dtype == np.int16
    assert len(pcm) == int(3 * 0.06 * synth.sample_rate)
    assert synth.spoken == ["one two three"]


async def test_each_line_in_each_voice_is_synthesized_once() -> None:
    synth = ToneSynthesizer(delay_s=0.0)
    lines = LineBook(synth)
    operator = load_personas().operator
    twin = operator.model_copy(update={"id": "twin", "key": "9"})  # same voice, other persona

    first, again, by_field, twins = await asyncio.gather(
        lines.render(operator, "Hold the line."),
        lines.render(operator, "Hold the line."),
        lines.line(operator, "greeting"),
        lines.render(twin, "Hold the line."),
    )
    assert first is again is twins
    assert by_field is await lines.render(operator, operator.greeting)
    assert synth.spoken == ["Hold the line.", operator.greeting]


async def test_prerender_fills_the_cache_the_call_reads() -> None:
    synth = ToneSynthesizer(delay_s=0.0)
    lines = LineBook(synth)
    personas = list(load_personas())
    count = await lines.prerender(personas)
    assert count == sum(len(FIXED_LINES) + len(p.fillers) for p in personas)
    spoken = len(synth.spoken)
    for persona in personas:
        await lines.line(persona, "busy_line")
        await lines.render(persona, persona.fillers[0])
    assert len(synth.spoken) == spoken  # all from the cache
