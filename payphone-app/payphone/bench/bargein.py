"""`payphone bench bargein`: talking over the persona, through the handset's own echo.

The real call loop on the rig, with real Piper voices, the real echo canceller (AEC3), webrtcvad,
the end-of-turn model and Whisper. The persona's replies are long scripted texts (so each is
known and long enough to talk over) spoken by Piper in the persona's voice; the simulated
handset feeds the earpiece back into the mic (`--echo-db`, `--echo-delay-ms`; default -10 dB,
20 ms). At a random moment of each reply one of four things happens: the caller barges in with
a line, says a backchannel ("mm-hm"), knocks the handset (a noise burst), or says nothing.

Printed: ERLE over the replies nobody spoke over (mic energy into the canceller over what came out,
for AEC3's output that the VAD hears and for the linear filter's that Whisper hears), false
barge-ins (a backchannel, a knock or the persona's own echo stopping the reply or starting a turn)
and false pauses (the persona muted for a moment, then resumed), barge-in reaction from the caller's
first voiced sample to the earpiece falling silent (p50/p95), and the interrupting lines' WER as the
phone heard them over the echo vs Whisper on the same clean clips. JSON last line. Figures, never
pass/fail."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from payphone.bench.hangup import percentile
from payphone.bench.stt import word_error_rate
from payphone.bench.turns import new_call
from payphone.call.events import CallState
from payphone.call.lines import render_line
from payphone.call.options import CallOptions
from payphone.config import Settings
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.rig import Rig, build_rig
from payphone.sim.runner import MIC_RATE, to_mic_rate
from payphone.sim.stand_ins import ScriptedBackend
from payphone.speech.base import VoiceSpec
from payphone.speech.echo_canceller import EchoCanceller
from payphone.stages import Stages, load_stages

TRIALS = 100
KINDS = ("barge", "backchannel", "knock", "nothing")
STARTERS = (
    "Tell me about your day.",
    "What is new in town tonight?",
    "Can you tell me a story?",
    "How is the weather where you are?",
)
REPLIES = (
    "Well now, it has been quite a day on the line. The rain came in over the harbour this "
    "morning, the baker on Main Street sold out of rye by nine, and somebody called three times "
    "asking for the train station. I told them the same thing every time, kindly.",
    "Let me think about that for a moment. The town has a new mural by the library, the ferry is "
    "running late again because of the fog, and the diner has put a blueberry pie on the menu "
    "that people are already talking about. Now, what would you like to know more about?",
    "Once upon a time there was a little telephone in a little booth at the end of a long pier. "
    "Every night the fishermen would call home from it, and every night it would listen very "
    "carefully, because it liked to know that everybody got home safe and sound.",
    "It is a grey and windy evening out here, with a little drizzle now and then. The forecast "
    "says it will clear up by tomorrow afternoon, so if you have any washing to hang out, I "
    "would wait until then. Bring an umbrella if you are going out tonight, just in case.",
)
BARGE_LINES = (
    "Wait, hold on a second, I have a question.",
    "Sorry, can I ask you something else?",
    "Stop, I need the number for a taxi.",
    "Hang on, what time is it right now?",
    "Excuse me, could you repeat that please?",
    "Actually, never mind that, tell me a joke.",
)
BACKCHANNELS = ("Mm-hm.", "Yeah.", "Okay.", "Uh-huh.", "Right.")
VOICED = 300  # |sample| above this is the caller's voice (Piper's silence is exact zeros)
LISTEN_AFTER_S = 1.5  # after a backchannel, a knock or nothing: time for a false barge-in
CALL_EVERY = 8  # a fresh call (and the next persona) every few replies


@dataclass(frozen=True)
class Clip:
    """What the caller does over the reply: audio at the mic's rate and its first voiced sample."""

    kind: str
    text: str
    pcm: Pcm
    first_voiced_s: float
    voiced_s: float


@dataclass
class Trial:
    kind: str
    text: str = ""
    reached: bool = True  # the reply was still playing when the caller acted
    barged: bool = False
    paused: bool = False
    turn_started: bool = False
    reaction_ms: float | None = None
    heard: str | None = None
    # into the canceller, out of AEC3 (the VAD's) and out of the linear filter (the words')
    energy: tuple[float, float, float] = (0.0, 0.0, 0.0)


async def _clips(stages: Stages) -> dict[str, list[Clip]]:
    """Every clip once: lines and backchannels in Piper's voice (a little higher than the
    persona's), knocks as short noise bursts."""

    async def say(kind: str, text: str, speed: float) -> Clip:
        voice = VoiceSpec(length_scale=speed, pitch_semitones=2.0)
        rendered = await render_line(stages.synthesizer, text, voice)
        pcm = to_mic_rate(rendered, stages.synthesizer.sample_rate)
        return _clip(kind, text, pcm)

    rng = np.random.default_rng(3)
    knocks = []
    for length_s in (0.04, 0.08, 0.12):
        burst = rng.standard_normal(round(MIC_RATE * length_s)) * 6000
        burst *= np.exp(-np.linspace(0, 6, len(burst)))  # a knock: loud, then gone
        pcm = np.concatenate([np.zeros(MIC_RATE // 10), burst]).astype(np.int16)
        knocks.append(_clip("knock", f"knock {length_s:.2f} s", pcm))
    return {
        "barge": [await say("barge", t, s) for t in BARGE_LINES for s in (0.9, 1.1)],
        "backchannel": [await say("backchannel", t, 1.0) for t in BACKCHANNELS],
        "knock": knocks,
        "nothing": [_clip("nothing", "", np.zeros(MIC_RATE // 10, dtype=np.int16))],
    }


def _clip(kind: str, text: str, pcm: Pcm) -> Clip:
    voiced = np.flatnonzero(np.abs(pcm) > VOICED)
    first = int(voiced[0]) / MIC_RATE if len(voiced) else 0.0
    span = (int(voiced[-1]) - int(voiced[0])) / MIC_RATE if len(voiced) else 0.0
    return Clip(kind, text, pcm, first, span)


async def _new_call(rig: Rig, persona_key: str) -> None:
    await new_call(rig)
    if persona_key != "0":
        rig.keypad.press(persona_key)
        await rig.wait_state(CallState.RINGBACK, timeout=5)
        await rig.wait_state(CallState.LISTENING, timeout=30)


def _events_after(rig: Rig, since: float) -> list[dict[str, Any]]:
    """The call's events from monotonic time `since` on, each with its own monotonic `at`."""
    call = rig.phone.call
    if call is None:
        return []
    timed = [{**e, "at": call.log.started + e["t_ms"] / 1000} for e in call.log.events]
    return [e for e in timed if e["at"] >= since]


async def _trial(
    rig: Rig, canceller: EchoCanceller, starter: Pcm, clip: Clip, wait_s: float
) -> Trial:
    trial = Trial(clip.kind, clip.text)
    rig.mic.push(starter)
    try:
        await rig.wait_state(CallState.SPEAKING, timeout=30)
    except TimeoutError:
        trial.reached = False
        return trial
    await asyncio.sleep(wait_s)
    call = rig.phone.call
    if call is None or call.state is not CallState.SPEAKING:
        trial.reached = False
        return trial
    turns_before = len(call.log.turns)
    energy = (canceller.energy_in, canceller.energy_out, canceller.energy_words)
    pushed = time.monotonic()
    rig.mic.push(clip.pcm)  # the handset takes it a frame at a time, in real time
    if clip.kind == "barge":
        await _until_answered(rig, pushed, deadline=pushed + 12)
    else:
        await asyncio.sleep(len(clip.pcm) / MIC_RATE + LISTEN_AFTER_S)
    trial.energy = (
        canceller.energy_in - energy[0],
        canceller.energy_out - energy[1],
        canceller.energy_words - energy[2],
    )
    events = _events_after(rig, pushed)
    kinds = [e["event"] for e in events]
    trial.barged = "barge_in" in kinds
    trial.paused = "persona_paused" in kinds
    trial.turn_started = "turn_started" in kinds
    paused = [e["at"] for e in events if e["event"] == "persona_paused"]
    if clip.kind == "barge" and paused:
        trial.reaction_ms = round((paused[0] - pushed - clip.first_voiced_s) * 1000, 1)
    await _quiet(rig)  # `#` cuts the answer: the caller's turn is on record with its transcript
    heard = [t.heard for t in call.log.turns[turns_before:] if t.speech_end >= pushed and t.heard]
    trial.heard = heard[-1] if heard else None  # the last: a part held while they went on is in it
    return trial


async def _until_answered(rig: Rig, since: float, deadline: float) -> None:
    """Until a turn started after `since` is speaking its answer (or the deadline)."""
    while time.monotonic() < deadline:
        call = rig.phone.call
        started = any(e["event"] == "turn_started" for e in _events_after(rig, since))
        if call is not None and started and call.state is CallState.SPEAKING:
            return
        await asyncio.sleep(0.02)


async def _quiet(rig: Rig) -> None:
    """`#` until the persona is quiet and listening again, so the next trial starts clean."""
    for _ in range(3):
        call = rig.phone.call
        if call is None or call.state is CallState.LISTENING:
            break
        rig.keypad.press("#")
        try:
            await rig.wait_state(CallState.LISTENING, timeout=5)
        except TimeoutError:
            continue
    await asyncio.sleep(0.3)


async def _run(settings: Settings, trials: int, echo: HandsetEcho) -> dict[str, Any]:
    vad = settings.vad.model_copy(update={"barge_in": True})
    settings = settings.model_copy(update={"vad": vad})
    book = load_personas(settings.personas.user_dir)
    stages = await load_stages(settings, book.operator, list(book))
    if stages.echo is None:
        await stages.aclose()
        raise SystemExit("bench bargein: the echo canceller did not load (see the log)")
    rng = random.Random(7)
    try:
        clips = await _clips(stages)
        starters = [
            to_mic_rate(
                await render_line(stages.synthesizer, text, VoiceSpec(pitch_semitones=2.0)),
                stages.synthesizer.sample_rate,
            )
            for text in STARTERS
        ]
        backend = ScriptedBackend(reply=REPLIES[0], token_delay_s=0.005)
        phone_stages = dataclasses.replace(
            stages.for_phone(settings.vad, settings.turn), backend=backend
        )
        quick = settings.call.model_copy(update={"dial_tone_s": 0.3, "idle_prompt_s": 120})
        options = dataclasses.replace(CallOptions.from_settings(settings), call=quick)
        rig = build_rig(phone_stages, options, echo=echo)
        canceller = stages.echo
        words_filter = canceller.words_filter  # read now: closing the stages frees the filter
        task = await rig.start()
        results: list[Trial] = []
        keys = [p.key for p in book][:4] or ["0"]
        print(
            f"{trials} replies through a {echo.db:g} dB, {echo.delay_ms:g} ms echo; "
            f"backchannels voiced {min(c.voiced_s for c in clips['backchannel']):.2f}-"
            f"{max(c.voiced_s for c in clips['backchannel']):.2f} s, barge-in after "
            f"{settings.vad.barge_in_min_ms} ms voiced",
            flush=True,
        )
        try:
            for index in range(trials):
                if index % CALL_EVERY == 0:
                    await _new_call(rig, keys[(index // CALL_EVERY) % len(keys)])
                backend.reply = rng.choice(REPLIES)
                kind = KINDS[index % len(KINDS)]
                clip = rng.choice(clips[kind])
                wait_s = rng.uniform(0.5, 2.0)
                trial = await _trial(rig, canceller, rng.choice(starters), clip, wait_s)
                results.append(trial)
                if (index + 1) % 10 == 0:
                    print(f"  {index + 1} replies", flush=True)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await rig.sink.aclose()
            rig.hook.close()
        clean = {c.text: (await stages.transcriber.transcribe(c.pcm)).text for c in clips["barge"]}
    finally:
        await stages.aclose()
    return _summary(results, clean, canceller.ms_per_block, words_filter)


def _erle(into: float, out: float) -> float | None:
    return round(float(10 * np.log10(into / out)), 1) if out > 0 else None


def _summary(
    trials: list[Trial], clean: dict[str, str], ms_per_block: float, words_filter: str
) -> dict[str, Any]:
    reached = [t for t in trials if t.reached]
    echo_only = [t for t in reached if t.kind == "nothing"]
    echo_in = sum(t.energy[0] for t in echo_only)
    echo_out = sum(t.energy[1] for t in echo_only)
    echo_words = sum(t.energy[2] for t in echo_only)
    barges = [t for t in reached if t.kind == "barge"]
    others = [t for t in reached if t.kind != "barge"]
    reactions = sorted(t.reaction_ms for t in barges if t.reaction_ms is not None)
    false_barge = {k: sum(t.barged or t.turn_started for t in others if t.kind == k) for k in KINDS}
    false_pause = {k: sum(t.paused for t in others if t.kind == k) for k in KINDS}
    heard = [t for t in barges if t.heard is not None]
    wer_echo = word_error_rate([t.text for t in heard], [t.heard or "" for t in heard])
    wer_clean = word_error_rate(list(clean), list(clean.values()))
    false = [t for t in others if t.barged or t.turn_started]
    for t in false:
        print(f"  false barge-in: {t.kind} {t.text!r}, heard as {t.heard!r}", flush=True)
    for t in barges:
        print(f"  barge-in {t.text!r} heard as {t.heard!r}, {t.reaction_ms} ms", flush=True)
    result: dict[str, Any] = {
        "replies": len(trials),
        "reached": len(reached),
        "per_kind": {k: sum(t.kind == k for t in reached) for k in KINDS},
        "erle_db": _erle(echo_in, echo_out),
        "words_filter": words_filter,
        "words_erle_db": _erle(echo_in, echo_words),
        "aec_ms_per_10ms": round(ms_per_block, 3),
        "false_barge_ins": false_barge,
        "false_pauses": false_pause,
        "barge_ins_caught": sum(t.barged for t in barges),
        "reaction_p50_ms": round(statistics.median(reactions), 1) if reactions else None,
        "reaction_p95_ms": percentile(reactions, 95) if reactions else None,
        "barge_lines_heard": len(heard),
        "wer_over_echo": round(wer_echo, 1),
        "wer_clean": round(wer_clean, 1),
    }
    print(
        f"ERLE {result['erle_db']} dB (AEC3, what the VAD hears) and "
        f"{result['words_erle_db']} dB (the words: {words_filter}) over "
        f"{result['per_kind']['nothing']} echo-only replies; "
        f"both {result['aec_ms_per_10ms']} ms CPU per 10 ms\n"
        f"false barge-ins {false_barge} (false pauses {false_pause})\n"
        f"barge-ins {result['barge_ins_caught']}/{len(barges)}; reaction (first voiced sample -> "
        f"earpiece silent) p50 {result['reaction_p50_ms']} ms, p95 {result['reaction_p95_ms']} ms\n"
        f"interrupting lines: WER {result['wer_over_echo']} % as heard over the echo "
        f"({len(heard)} lines) vs {result['wer_clean']} % clean",
        flush=True,
    )
    return result


def main(settings: Settings, trials: int = TRIALS, echo: HandsetEcho | None = None) -> Any:
    """Run `trials` replies (100 by default) through the echo path."""
    return asyncio.run(_run(settings, trials, echo or HandsetEcho()))
