"""Fixed lines (greetings, fillers, busy lines) rendered once and kept as PCM.

A fallback must play even when the model host is gone, and a greeting must start at once, so
every persona's fixed lines are synthesized at start-up and reused for every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from payphone.pcm import Pcm
from payphone.personas.loader import Persona
from payphone.speech.base import Synthesizer, VoiceSpec
from payphone.streams import closing

FIXED_LINES = (
    "greeting",
    "goodbye",
    "idle_prompt",
    "busy_line",
    "stall_line",
    "apology",
    "not_in_service",
)


async def render_line(synthesizer: Synthesizer, text: str, voice: VoiceSpec) -> Pcm:
    """A whole line as one clip (not kept: `LineBook` keeps the call's lines)."""
    async with closing(synthesizer.synthesize(text, voice)) as stream:
        parts = [pcm async for pcm in stream]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class LineBook:
    """Pre-rendered persona lines, kept by (text, voice): the one cache of whole lines."""

    def __init__(self, synthesizer: Synthesizer) -> None:
        self._synth = synthesizer
        self._cache: dict[tuple[str, VoiceSpec], Pcm] = {}
        self._lock = asyncio.Lock()

    async def render(self, persona: Persona, text: str, steady: bool = False) -> Pcm:
        """The line as PCM, synthesized on first use (one synthesis at a time); `steady`:
        without Piper's random variation (`VoiceSpec.steady`)."""
        voice = replace(persona.voice_spec, steady=steady)
        key = (text, voice)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        async with self._lock:
            if key not in self._cache:
                self._cache[key] = await render_line(self._synth, text, voice)
        return self._cache[key]

    async def line(self, persona: Persona, field: str) -> Pcm:
        """One of the persona's fixed lines by field name (e.g. "busy_line")."""
        return await self.render(persona, str(getattr(persona, field)))

    async def prerender(self, personas: Iterable[Persona]) -> int:
        """Render every fixed line and filler of every persona; returns how many."""
        count = 0
        for persona in personas:
            for field in FIXED_LINES:
                await self.line(persona, field)
                count += 1
            for filler in persona.fillers:
                await self.render(persona, filler)
                count += 1
        return count
