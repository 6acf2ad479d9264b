"""`bench latency`: the streaming turn against a naive one, side by side, with the real models.

Both run the same questions (spoken by Piper, heard by Whisper) through the same greedy model
settings, so they say the same words. Streaming speaks the first chunk while the model writes;
the naive pipeline waits for the whole reply, synthesizes all of it, then plays. Overhead is what
the pipeline adds on top of the stages themselves: first_audio - (first_chunk + TTS of the first
chunk), where first_chunk already contains the transcript and the model's time to that chunk.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from payphone.call.events import Heard
from payphone.call.lines import LineBook
from payphone.call.turn import Turn, TurnDeps, TurnRecord
from payphone.config import Settings
from payphone.hardware.memory_audio import MemorySink
from payphone.llm.history import Conversation
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.reply.speakable import Speakable
from payphone.sim.simulate import speak_as_caller
from payphone.speech.base import Synthesizer, VoiceSpec
from payphone.stages import Stages, load_stages, system_prompt

QUESTIONS = (
    "Hello operator, who can I talk to on this phone?",
    "What is the best way to bake bread at home?",
    "Can you tell me a short story about a lighthouse?",
    "Why is the sky blue during the day?",
    "What should I cook for dinner tonight?",
)
MARKS = ("transcript_ready", "first_token", "first_chunk", "first_audio", "reply_done")


@dataclass
class TimedSynthesizer(Synthesizer):
    """Wraps a synthesizer to time each chunk: call -> first PCM out."""

    inner: Synthesizer
    whole: bool = False  # the naive pipeline: all PCM of a chunk at once, after synthesis
    first_pcm_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sample_rate = self.inner.sample_rate

    def synthesize(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]:
        return self._timed(text, voice)

    async def _timed(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]:
        started = time.monotonic()
        parts: list[Pcm] = []
        async for pcm in self.inner.synthesize(text, voice):
            if self.whole:
                parts.append(pcm)
                continue
            if not parts:
                self.first_pcm_s.append(time.monotonic() - started)
                parts.append(pcm[:0])
            yield pcm
        if self.whole and parts:
            self.first_pcm_s.append(time.monotonic() - started)
            yield np.concatenate(parts)


def whole_reply(speakable: Speakable) -> Speakable:
    """The naive pipeline's text stage: one chunk, once the model has finished."""

    async def one_chunk(
        pieces: AsyncIterator[str], on_guard: Callable[[str], None] | None = None
    ) -> AsyncIterator[str]:
        chunks = [chunk async for chunk in speakable(pieces, on_guard)]
        if chunks:
            yield " ".join(chunks)

    return one_chunk


async def _ask(
    stages: Stages,
    settings: Settings,
    question: Pcm,
    streaming: bool,
) -> tuple[TurnRecord, float]:
    """One turn; returns its record and the TTS time of its first chunk (ms)."""
    book = load_personas(settings.personas.user_dir)
    persona = book.operator
    synth = TimedSynthesizer(stages.synthesizer, whole=not streaming)
    sink = MemorySink(synth.sample_rate, speed=50.0, max_queued_ms=60_000)
    deps = TurnDeps(
        transcriber=stages.transcriber,
        backend=stages.backend,
        synthesizer=synth,
        sink=sink,
        lines=LineBook(stages.synthesizer),
        speakable=stages.speakable if streaming else whole_reply(stages.speakable),
        options=stages.options.__class__(
            num_predict=stages.options.num_predict, temperature=0.0, num_ctx=stages.options.num_ctx
        ),
        filler_after_s=60.0,
    )
    prompt = system_prompt(settings, persona, stages.backend.declared_prompt_style)
    conversation = Conversation(prompt, settings.llm.history_tokens)
    record = await Turn(deps, persona, conversation, Heard(question, time.monotonic())).run()
    await sink.aclose()
    assert record is not None, "the bench question was not heard as speech"
    return record, (synth.first_pcm_s[0] * 1000 if synth.first_pcm_s else float("nan"))


async def _run(settings: Settings, trials: int) -> dict[str, float]:
    book = load_personas(settings.personas.user_dir)
    stages = await load_stages(settings, book.operator, [book.operator])
    try:
        questions = [await speak_as_caller(stages.synthesizer, t) for t in QUESTIONS[:trials]]
        await _ask(stages, settings, questions[0], True)  # warm every stage once
        rows: dict[str, list[dict[str, float]]] = {"streaming": [], "naive": []}
        overheads: list[float] = []
        for index, question in enumerate(questions, start=1):
            for mode in ("streaming", "naive"):
                record, tts_first_ms = await _ask(stages, settings, question, mode == "streaming")
                rows[mode].append(record.latency_ms)
                lat = record.latency_ms
                if mode == "streaming":
                    overheads.append(lat["first_audio"] - lat["first_chunk"] - tts_first_ms)
                print(
                    f"q{index} {mode:9s} "
                    + " ".join(f"{m}={lat.get(m, float('nan')):.0f}" for m in MARKS)
                    + f" tts_first_chunk={tts_first_ms:.0f} | {record.reply[:60]!r}"
                )
    finally:
        await stages.aclose()
    result: dict[str, float] = {"questions": len(questions)}
    for mode, records in rows.items():
        for mark in MARKS:
            values = [r[mark] for r in records if mark in r]
            result[f"{mode}_{mark}_ms"] = round(statistics.median(values), 1)
    result["first_audio_ratio"] = round(
        result["streaming_first_audio_ms"] / result["naive_first_audio_ms"], 3
    )
    result["pipeline_overhead_ms"] = round(statistics.median(overheads), 1)
    print(
        f"first audio: streaming {result['streaming_first_audio_ms']:.0f} ms, naive "
        f"{result['naive_first_audio_ms']:.0f} ms, ratio {result['first_audio_ratio']}; "
        f"pipeline overhead {result['pipeline_overhead_ms']} ms (medians)"
    )
    return result


def main(settings: Settings, trials: int = 5) -> dict[str, float]:
    return asyncio.run(_run(settings, min(trials, len(QUESTIONS))))
