"""`payphone bench tts`: how soon the caller hears each persona's voice, and how fast Piper runs.

Time to first audio is from handing a text chunk to the synthesizer to its first PCM chunk, for a
10-word first sentence followed by a second one (the shape of a real answer), in every persona's
own voice (speed, pitch, effect) as the persona files give it. Real-time factor is synthesis time
over audio length for the whole text. The voices are loaded and warmed as the service does it.
Figures, never pass/fail.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from typing import Any

import numpy as np

from payphone.config import Settings
from payphone.models import resolve_voice
from payphone.personas.loader import load_personas
from payphone.reply.chunker import ChunkerConfig
from payphone.speech.base import VoiceSpec
from payphone.speech.effects import Leveler, build_chain
from payphone.speech.tts import PiperSynthesizer

FIRST_SENTENCE = "Thank you for calling, how may I direct your call today?"
FIRST_CLAUSE = "Thank you for calling,"
SECOND_SENTENCE = "The detective is out in the rain, but Grandma Mae is baking cookies."
TRIALS = 5


def _effect_cost_ms_per_s(effect: str, pitch: float, rate: int) -> float:
    """DSP time for one second of audio through a persona's chain and the leveler (no Piper)."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(rate * 3)).astype(np.float32)
    chain, leveler = build_chain(effect, rate, pitch, telephone=True), Leveler(rate)
    started = time.perf_counter()
    for second in range(3):
        leveler.process(chain.process(audio[second * rate : (second + 1) * rate]))
    return (time.perf_counter() - started) * 1000.0 / 3


async def _one_run(
    tts: PiperSynthesizer, voice: VoiceSpec, text: str = f"{FIRST_SENTENCE} {SECOND_SENTENCE}"
) -> tuple[float, float, float]:
    """(first audio ms, total synthesis ms, audio seconds) for one answer."""
    started = time.perf_counter()
    first: float | None = None
    samples = 0
    async for pcm in tts.synthesize(text, voice):
        if first is None:
            first = time.perf_counter() - started
        samples += len(pcm)
    total = time.perf_counter() - started
    return (first or total) * 1000.0, total * 1000.0, samples / tts.sample_rate


async def _bench(settings: Settings, trials: int) -> dict[str, Any]:
    tts = PiperSynthesizer(settings.tts, functools.partial(resolve_voice, settings))
    voices = {p.id: p.voice_spec for p in load_personas(settings.personas.user_dir)}
    loaded = time.perf_counter()
    await tts.load(voices.values(), ChunkerConfig().max_words)
    load_ms = (time.perf_counter() - loaded) * 1000.0
    print(
        f"voices {sorted({v.model for v in voices.values()})} loaded and warmed in {load_ms:.0f} ms"
    )
    print(f"output {tts.sample_rate} Hz, telephone filter {'on' if tts.telephone else 'off'}")
    plain_voice = VoiceSpec(model=settings.tts.voice)
    await _one_run(tts, plain_voice)  # a full answer once more, so every cache is warm
    per_effect: dict[str, dict[str, Any]] = {}
    for name, voice in {"plain": plain_voice, **voices}.items():
        results = [await _one_run(tts, voice) for _ in range(trials)]
        first = statistics.median(r[0] for r in results)
        rtf = statistics.median(r[1] / 1000.0 / r[2] for r in results)
        dsp = _effect_cost_ms_per_s(voice.effect, voice.pitch_semitones, tts.sample_rate)
        per_effect[name] = {
            "first_audio_ms": round(first, 1),
            "rtf": round(rtf, 3),
            "effect_ms_per_audio_s": round(dsp, 2),
            "effect": voice.effect,
        }
        print(
            f"  {name:16s} first audio {first:6.0f} ms (median of {trials})   RTF {rtf:.3f}"
            f"   effects {dsp:.1f} ms per audio second"
        )
    plain = per_effect["plain"]
    clause = [await _one_run(tts, plain_voice, FIRST_CLAUSE) for _ in range(trials)]
    clause_ms = statistics.median(r[0] for r in clause)
    print(f"first audio for a 4-word first clause: {clause_ms:.0f} ms")
    slowest_ms = max(v["first_audio_ms"] for v in per_effect.values())
    print(
        f"first audio for a 10-word first sentence: {plain['first_audio_ms']:.0f} ms (target 170);"
        f" slowest persona voice {slowest_ms:.0f} ms (target 250)"
    )
    return {
        "voice": settings.tts.voice,
        "sample_rate": tts.sample_rate,
        "telephone_filter": tts.telephone,
        "load_ms": round(load_ms, 1),
        "trials": trials,
        "first_audio_ms": plain["first_audio_ms"],
        "first_clause_audio_ms": round(clause_ms, 1),
        "rtf": plain["rtf"],
        "voices": per_effect,
    }


def main(settings: Settings, trials: int = TRIALS) -> dict[str, Any]:
    """Run the benchmark, print readable lines, return the figures (the CLI prints them as JSON)."""
    return asyncio.run(_bench(settings, trials))
