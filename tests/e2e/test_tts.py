"""Real Piper (the demo voice en_US-joe-medium) through PiperSynthesizer and the persona effects."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from functools import partial

import numpy as np
import pytest
import structlog
from scipy import signal

from payphone.call.lines import render_line
from payphone.config import Settings, load_settings
from payphone.models import resolve_voice
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.speech.base import VoiceSpec
from payphone.speech.effects import EFFECTS, build_chain, dbfs
from payphone.speech.tts import PiperSynthesizer, load_voice, slowest, warm_up_text
from tests.voice_fixtures import stage_production_voices

pytestmark = pytest.mark.models

SENTENCE = "Operator. How may I direct your call this evening?"
THREE = (
    "Hello there, caller. The rain has stopped over the harbour tonight. "
    "Please hold the line while I connect you to the detective."
)
OPERATOR = VoiceSpec(effect="none")
GRANDMA = VoiceSpec(length_scale=1.25, effect="elderly", pitch_semitones=3.0)
ROBOT = VoiceSpec(length_scale=0.95, effect="robot")
NOIR = VoiceSpec(length_scale=1.1, effect="noir")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def tts(settings: Settings) -> PiperSynthesizer:
    """One synthesizer (and one loaded voice) for the whole module, without the phone line colour,
    so the persona effects are measured on their own."""
    return PiperSynthesizer(settings.tts, partial(resolve_voice, settings), telephone_filter=False)


@pytest.fixture(scope="module")
def spoken(tts: PiperSynthesizer) -> dict[str, Pcm]:
    """The same sentence in each persona's voice, synthesized once."""

    async def all_voices() -> dict[str, Pcm]:
        voices = {
            "operator": OPERATOR,
            "grandma": GRANDMA,
            "robot": ROBOT,
            "noir": NOIR,
            "grandma_unshifted": VoiceSpec(length_scale=GRANDMA.length_scale, effect="elderly"),
        }
        return {name: await render_line(tts, SENTENCE, spec) for name, spec in voices.items()}

    return asyncio.run(all_voices())


async def collect(stream: AsyncIterator[Pcm]) -> list[Pcm]:
    return [pcm async for pcm in stream]


def voiced(pcm: Pcm, rate: int) -> np.ndarray:
    """The loud 20 ms frames of a clip, as floats (pauses left out of the measurements)."""
    frame = rate // 50
    n = len(pcm) // frame
    frames = pcm[: n * frame].astype(np.float64).reshape(n, frame) / 32768.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return np.asarray(frames[rms > rms.max() * 0.1].ravel())


def low_share(pcm: Pcm, rate: int, below_hz: float = 300.0) -> float:
    """Share of the voice's power below `below_hz` (the chest of the voice a radio band cuts)."""
    freqs, power = signal.welch(voiced(pcm, rate), fs=rate, nperseg=1024)
    return float(power[freqs < below_hz].sum() / power.sum())


def pitch_hz(pcm: Pcm, rate: int) -> float:
    """Median fundamental over voiced 40 ms windows, by autocorrelation (60-400 Hz)."""
    audio = voiced(pcm, rate)
    win = int(rate * 0.04)
    lo, hi = rate // 400, rate // 60
    found = []
    for start in range(0, len(audio) - win, win):
        x = audio[start : start + win] - audio[start : start + win].mean()
        ac = np.correlate(x, x, mode="full")[win - 1 :]
        if ac[0] <= 0:
            continue
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / ac[0] > 0.5:
            found.append(rate / lag)
    return float(np.median(found))


def envelope_modulation(pcm: Pcm, rate: int, low_hz: float, high_hz: float) -> float:
    """Share of the amplitude envelope's fluctuation that lies in a band (ring-mod signature)."""
    env = np.abs(signal.hilbert(voiced(pcm, rate)))
    freqs, power = signal.welch(env - env.mean(), fs=rate, nperseg=4096)
    band = (freqs >= low_hz) & (freqs <= high_hz)
    return float(power[band].sum() / power[(freqs > 2) & (freqs < 200)].sum())


def test_a_sentence_is_speech_at_the_output_rate(
    tts: PiperSynthesizer, spoken: dict[str, Pcm]
) -> None:
    pcm = spoken["operator"]
    assert tts.sample_rate == 22050
    assert pcm.dtype == np.int16
    seconds = len(pcm) / tts.sample_rate
    assert 1.5 < seconds < 6.0  # ten words
    assert -30.0 < dbfs(pcm) < -12.0  # near the -18 dBFS target, not silent
    assert np.abs(pcm).max() <= 32767 * 10 ** (-1 / 20) + 2  # the limiter's -1 dBFS ceiling


def test_voices_run_on_the_onnx_arena_and_give_it_back_after_each_sentence(
    settings: Settings,
) -> None:
    """The arena keeps Piper fast; shrinking it after each run keeps RSS flat (`load_voice`)."""
    voice = load_voice(resolve_voice(settings))
    assert voice.session.get_session_options().enable_cpu_mem_arena is True
    shrink = voice.session._shrink.get_run_config_entry("memory.enable_memory_arena_shrinkage")
    options = voice.session.get_session_options()  # its threads sleep between runs: no spinning
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert shrink == "cpu:0"
    assert voice.config.sample_rate == 22050


def test_load_warms_each_model_on_the_longest_chunk_at_its_slowest_voice(
    settings: Settings,
) -> None:
    """Grandma Mae's slow, pitched voice makes the most audio per word: the warm-up must use it,
    with as many words as the chunker's longest chunk, or a long reply grows the arena later."""
    phone = PiperSynthesizer(settings.tts, partial(resolve_voice, settings))
    with structlog.testing.capture_logs() as logs:
        asyncio.run(phone.load([OPERATOR, GRANDMA, ROBOT, NOIR], longest_words=12))
    warmed = [e for e in logs if e["event"] == "voice_warmed"]
    assert [e["voice"] for e in warmed] == ["en_US-joe-medium"]  # one model, warmed once
    assert warmed[0]["length_scale"] == pytest.approx(1.25 * 2 ** (3 / 12), abs=0.01)
    assert warmed[0]["audio_s"] > 12 * 0.6  # twelve long words, slowly: seconds of audio


def test_load_warms_every_voice_that_really_speaks_production_or_fallback() -> None:
    """Mae's production voice is here (a stand-in copy), Jones's is not: both the production
    voice and the fallback that speaks for Jones are loaded and warmed at start."""
    settings = load_settings()
    stage_production_voices(settings, ["en_US-kathleen-low"])
    book = load_personas()
    mae, jones = book.personas["2"].voice_spec, book.personas["1"].voice_spec
    phone = PiperSynthesizer(settings.tts, partial(resolve_voice, settings))
    with structlog.testing.capture_logs() as logs:
        asyncio.run(phone.load([mae, jones], longest_words=6))
    warmed = {e["voice"]: e for e in logs if e["event"] == "voice_warmed"}
    assert sorted(warmed) == ["en_US-joe-medium", "en_US-kathleen-low"]
    assert warmed["en_US-kathleen-low"]["length_scale"] == pytest.approx(1.15)
    assert warmed["en_US-joe-medium"]["length_scale"] == pytest.approx(1.1)  # Jones's fallback
    assert [e["voice"] for e in logs if e["event"] == "voice_fallback"] == ["en_US-ryan-medium"]


def test_the_warm_up_text_has_the_longest_chunks_word_count() -> None:
    assert len(warm_up_text(40).split()) == 40
    assert slowest([OPERATOR, GRANDMA, VoiceSpec(model="other", length_scale=0.8)]) == {
        "en_US-joe-medium": pytest.approx(1.25 * 2 ** (3 / 12)),
        "other": pytest.approx(0.8),
    }


def test_output_rate_is_converted(settings: Settings) -> None:
    phone = PiperSynthesizer(
        settings.tts, partial(resolve_voice, settings), output_rate=8000, telephone_filter=True
    )
    pcm = asyncio.run(render_line(phone, "One two three.", OPERATOR))
    assert phone.sample_rate == 8000
    assert 0.5 < len(pcm) / 8000 < 3.0
    freqs, power = signal.welch(pcm.astype(np.float64), fs=8000, nperseg=512)
    share = power / power.sum()
    # the telephone band-pass: the voice's low fundamental and the top octave are gone
    assert share[freqs < 150].sum() < 0.005
    assert share[freqs > 3700].sum() < 0.005


def test_chunks_stream_before_the_whole_text_is_done(tts: PiperSynthesizer) -> None:
    async def timed() -> tuple[list[tuple[float, Pcm]], bool]:
        started = time.monotonic()
        chunks = []
        still_working = False
        async for pcm in tts.synthesize(THREE, OPERATOR):
            if not chunks:  # the first sentence is here: the others are still being made
                still_working = tts.busy
            chunks.append((time.monotonic() - started, pcm))
        return chunks, still_working

    chunks, still_working = asyncio.run(timed())
    assert still_working
    voiced_chunks = [(t, pcm) for t, pcm in chunks if len(pcm) > tts.sample_rate // 4]
    assert len(voiced_chunks) == 3  # one per sentence
    assert voiced_chunks[0][0] < 0.8 * chunks[-1][0]  # well before the end, not all at once
    levels = [dbfs(voiced(pcm, tts.sample_rate) * 32768) for _, pcm in voiced_chunks]
    assert max(levels) - min(levels) < 3.0  # even loudness from sentence to sentence


def test_personas_sound_distinct(tts: PiperSynthesizer, spoken: dict[str, Pcm]) -> None:
    rate = tts.sample_rate
    base_pitch = pitch_hz(spoken["operator"], rate)
    grandma_pitch = pitch_hz(spoken["grandma"], rate)
    # +3 semitones is x1.19; Piper's sampling noise and the estimator's spread need a margin
    assert grandma_pitch / base_pitch > 1.08
    # speed is kept: the pitch shift does not make Grandma gabble (Piper speaks slower first)
    unshifted = len(spoken["grandma_unshifted"])
    assert 0.85 < len(spoken["grandma"]) / unshifted < 1.15

    # a 40 Hz ring modulator beats the envelope at 40 Hz; speech alone hardly does
    personas = {name: pcm for name, pcm in spoken.items() if name != "grandma_unshifted"}
    ring = {name: envelope_modulation(pcm, rate, 35, 45) for name, pcm in personas.items()}
    others = [v for name, v in ring.items() if name != "robot"]
    assert ring["robot"] > 4 * max(others), ring

    lows = {name: low_share(pcm, rate) for name, pcm in personas.items()}
    assert lows["noir"] < lows["operator"] / 3, lows  # the narrow radio band


def test_effects_stream_without_clicks() -> None:
    """A chain fed in odd-sized pieces gives the same audio as fed whole (state carried)."""
    rate = 22050
    t = np.arange(rate) / rate
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for effect in EFFECTS:
        whole = build_chain(effect, rate, 2.0, telephone=True)
        pieced = build_chain(effect, rate, 2.0, telephone=True)
        one = np.concatenate([whole.process(audio), whole.flush()])
        cuts = [0, 123, 4000, 4001, 9999, rate]
        parts = [pieced.process(audio[a:b]) for a, b in itertools.pairwise(cuts)]
        two = np.concatenate([*parts, pieced.flush()])
        assert len(one) == len(two), effect
        assert np.max(np.abs(one - two)) < 1e-3, effect


def test_unknown_effect_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown voice effect"):
        build_chain("chipmunk", 22050)


def test_closing_the_stream_stops_synthesis(tts: PiperSynthesizer) -> None:
    long_text = " ".join(f"This is sentence number {n} of a long answer." for n in range(12))

    async def take_one() -> tuple[Pcm, int]:
        stream = tts.synthesize(long_text, OPERATOR)
        first = await anext(stream)
        running = tts.busy
        await stream.aclose()  # type: ignore[attr-defined]
        return first, running

    first, running = asyncio.run(take_one())
    assert len(first) > 0
    assert running  # the worker was busy on the next sentences
    assert not tts.busy  # and stopped once the stream was closed


def test_cancelling_the_consumer_stops_synthesis(tts: PiperSynthesizer) -> None:
    long_text = " ".join(f"Here is line {n} of a story that goes on." for n in range(12))
    got: list[Pcm] = []

    async def consume() -> None:
        async for pcm in tts.synthesize(long_text, OPERATOR):
            got.append(pcm)

    async def hang_up() -> None:
        task = asyncio.create_task(consume())
        while not got:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # cancelled, the stream did not wait; the worker finishes its sentence and quits
        for _ in range(200):
            if not tts.busy:
                break
            await asyncio.sleep(0.05)

    asyncio.run(hang_up())
    assert not tts.busy
    assert len(got) < 12


def test_a_steady_voice_says_a_line_the_same_way_every_time(tts: PiperSynthesizer) -> None:
    """Help lines are steady: every caller hears the one rendering the tests heard."""

    async def twice(voice: VoiceSpec) -> tuple[Pcm, Pcm]:
        return (await render_line(tts, SENTENCE, voice), await render_line(tts, SENTENCE, voice))

    steady = asyncio.run(twice(VoiceSpec(effect="robot", steady=True)))
    assert np.array_equal(*steady)
    varied = asyncio.run(twice(VoiceSpec(effect="robot")))  # Piper's own noise, as in replies
    assert not (len(varied[0]) == len(varied[1]) and np.array_equal(*varied))
