"""`payphone bench turns`: how soon after the caller stops the persona answers, as heard.

The real call loop on the rig (mock pins, memory audio) with the real stages (Whisper, the
persona model, Piper), in real time. The caller's lines are spoken by Piper at three speeds; some
hold a 0.4-1.0 s pause mid-sentence ("I was wondering ... if you could help me"). The mic gets
each 30 ms frame when its last sample has been spoken, as a sound card delivers it.

The clock starts at the caller's last voiced sample in the input audio and stops at the first
earpiece sample of the reply (a filler is counted apart). Once the reply is heard, `#` cuts it
off and the next line follows. Both pipelines run in the same session on the same lines: the
end-of-turn model (`turn.*`) and the fixed silence rule (`vad.hangover_ms`). The persona model
samples with one fixed seed, so both pipelines hear the same replies and runs compare.

A line is *cut off* when the reply starts before the caller's last word: the persona talked over
them ("Hello," judged a finished turn before "who am I speaking with?"). That is counted for
every line, and apart for the paused ones, and such a reply is no latency: voice-to-voice and
the stages are over the replies that started after the caller's last word. A paused line is
*split* when a turn started at the pause and the rest of the line had to join it (nothing is
lost, but the first start was wasted work). Each end-of-turn check is timed where it runs (in
the pipeline, with everything else the call does meanwhile): its p50 / p95 is printed with the
turn model's figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from payphone.bench.caller_lines import LINES
from payphone.bench.hangup import percentile
from payphone.call.events import CallState
from payphone.call.lines import render_line
from payphone.call.listen import TurnModel
from payphone.call.options import CallOptions
from payphone.call.turn import TurnRecord
from payphone.config import Settings
from payphone.memory import freeze_after_start
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.rig import Rig, build_rig
from payphone.sim.room import Room, RoomSound, at_level, talking_room
from payphone.sim.runner import MIC_RATE, to_mic_rate
from payphone.speech.base import VoiceSpec
from payphone.stages import Stages, load_stages

PAUSED = (
    ("I was wondering", "if you could help me find a phone number."),
    ("My name is", "Margaret and I am calling about my order."),
    ("So the thing is", "my cat got stuck up a tree again."),
    ("Could you tell me", "how to get to the museum from here?"),
    ("I would like to", "speak to the manager of the hotel."),
)
SPEEDS = (0.85, 1.0, 1.15)  # Piper length scales: faster and slower callers
PAUSES_S = (0.4, 0.7, 1.0)
FRAME_S = 0.03
VOICED = 300  # |sample| above this is the caller's voice (Piper's silence is exact zeros)
REPLY_WAIT_S = 20.0
STAGES = ("turn_started", "transcript_ready", "first_token", "first_chunk", "first_audio")
ROOM_S = 60.0  # of other people talking (`--room-db`), looped under the mic
CALL_EVERY = 8  # a fresh call every few turns: the history stays short, as in a real call
# the persona model samples with this seed in both pipelines, so a line gets the same reply in
# each and their difference is the end of turn, not how long the first sentence came out
SEED = 7


@dataclass(frozen=True)
class Line:
    pcm: Pcm
    last_voiced_s: float  # from the start of `pcm`
    paused: bool


@dataclass
class TurnFigure:
    voice_to_voice_ms: float | None
    paused: bool
    cut_off: bool
    split: bool
    filler: bool
    # when each stage of the answered turn got there, from the caller's last voiced sample
    stages_ms: dict[str, float] = field(default_factory=dict)


async def _lines(stages: Stages) -> list[Line]:
    said: list[Line] = []
    for index, text in enumerate(LINES * len(SPEEDS)):
        speed = SPEEDS[index // len(LINES)]
        said.append(_line(await _say(stages, text, speed), paused=False))
    for index, (head, tail) in enumerate(PAUSED * 2):
        pause = np.zeros(round(MIC_RATE * PAUSES_S[index % len(PAUSES_S)]), dtype=np.int16)
        parts = [await _say(stages, head, 1.0), pause, await _say(stages, tail, 1.0)]
        said.append(_line(np.concatenate(parts), paused=True))
    return said


async def _say(stages: Stages, text: str, speed: float) -> Pcm:
    """The caller's words in Piper's voice at a speed, as the mic hears them (16 kHz)."""
    pcm = await render_line(stages.synthesizer, text, VoiceSpec(length_scale=speed))
    return _trim(to_mic_rate(pcm, stages.synthesizer.sample_rate))


def _trim(pcm: Pcm) -> Pcm:
    voiced = np.nonzero(np.abs(pcm) > VOICED)[0]
    return pcm[voiced[0] : voiced[-1] + 1] if len(voiced) else pcm


def _line(pcm: Pcm, paused: bool) -> Line:
    voiced = np.nonzero(np.abs(pcm) > VOICED)[0]
    return Line(pcm, (int(voiced[-1]) + 1) / MIC_RATE, paused)


async def _speak(rig: Rig, pcm: Pcm) -> float:
    """Into the mic in real time, each frame once it has been spoken; returns the start time."""
    frame = round(MIC_RATE * FRAME_S)
    started = time.monotonic()
    for index, offset in enumerate(range(0, len(pcm), frame)):
        await asyncio.sleep(max(0.0, started + (index + 1) * FRAME_S - time.monotonic()))
        rig.mic.push(pcm[offset : offset + frame])
    return started


async def new_call(rig: Rig) -> None:
    """Hang up any call, pick up again, and wait until the greeting is over."""
    if rig.phone.call is not None:
        rig.replace()
        while rig.phone.call is not None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    rig.lift()
    await rig.wait_state(CallState.LISTENING, timeout=30)  # after the greeting


async def _turn(rig: Rig, line: Line) -> TurnFigure:
    call = rig.phone.call
    assert call is not None
    events_before, turns_before = len(call.log.events), len(call.log.turns)
    spoken_at = await _speak(rig, line.pcm)
    last_voiced = spoken_at + line.last_voiced_s
    try:
        await rig.wait_state(CallState.SPEAKING, timeout=REPLY_WAIT_S)
    except TimeoutError:
        return TurnFigure(None, line.paused, False, False, False)
    rig.keypad.press("#")
    await rig.wait_state(CallState.LISTENING, timeout=10)
    await asyncio.sleep(0.3)
    answered = [r for r in call.log.turns[turns_before:] if "first_audio" in r.latency_ms]
    if not answered:
        return TurnFigure(None, line.paused, False, False, False)
    record = answered[-1]  # a turn the caller went on from was cancelled before it spoke
    reply_at = record.speech_end + (record.latency_ms.get("first_audio") or 0.0) / 1000
    first = next((b.at for b in rig.sink.heard if b.at >= reply_at - 0.001), reply_at)
    events = call.log.events[events_before:]
    started = [e for e in events if e["event"] == "turn_started"]
    # the answered turn began at the last start, or where a held turn resumed after a cough
    began = [e for e in events if e["event"] in ("turn_started", "turn_resumed")]
    return TurnFigure(
        voice_to_voice_ms=round((first - last_voiced) * 1000, 1),
        paused=line.paused,
        cut_off=first < last_voiced,
        split=len(started) > 1,
        filler=record.filler,
        stages_ms=_stages(record, call.log.started + began[-1]["t_ms"] / 1000, last_voiced)
        if began
        else {},
    )


def _stages(record: TurnRecord, turn_started: float, last_voiced: float) -> dict[str, float]:
    """Where the answered turn's time went, each stage from the caller's last voiced sample:
    the turn starts (the end-of-turn decision), then the transcript, first token, first chunk,
    and the reply's first sound (before the earpiece)."""
    since = (record.speech_end - last_voiced) * 1000
    marks = {name: since + value for name, value in record.latency_ms.items()}
    return {"turn_started": (turn_started - last_voiced) * 1000} | {
        name: marks[name] for name in STAGES[1:] if name in marks
    }


@dataclass
class TimedTurnModel:
    """The end-of-turn model, each check timed as it runs in the call."""

    model: TurnModel
    check_ms: list[float] = field(default_factory=list)

    def predict(self, pcm: Pcm) -> float:
        started = time.perf_counter()
        try:
            return self.model.predict(pcm)
        finally:
            self.check_ms.append((time.perf_counter() - started) * 1000)


async def _pipeline(
    stages: Stages,
    settings: Settings,
    lines: list[Line],
    echo: HandsetEcho | None,
    room: Room | None = None,
) -> list[TurnFigure]:
    quick = settings.call.model_copy(update={"dial_tone_s": 0.3, "idle_prompt_s": 60})
    options = dataclasses.replace(CallOptions.from_settings(settings), call=quick)
    seeded = dataclasses.replace(stages, options=dataclasses.replace(stages.options, seed=SEED))
    rig = build_rig(
        seeded.for_phone(settings.vad, settings.turn),
        options,
        echo=echo,
        room=None if room is None else RoomSound(room),
    )
    task = await rig.start()
    figures = []
    try:
        for index, line in enumerate(lines):
            if index % CALL_EVERY == 0:
                await new_call(rig)
            figures.append(await _turn(rig, line))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.sink.aclose()
        rig.hook.close()
    return figures


def _summary(name: str, figures: list[TurnFigure]) -> dict[str, Any]:
    answered = [f for f in figures if f.voice_to_voice_ms is not None]
    after = [f for f in answered if not f.cut_off]  # a reply over the caller is no latency
    heard = sorted(f.voice_to_voice_ms for f in after if f.voice_to_voice_ms is not None)
    paused = [f for f in figures if f.paused]
    result: dict[str, Any] = {
        "turns": len(figures),
        "answered": len(answered),
        "cut_off": sum(f.cut_off for f in figures),
        "p50_ms": round(statistics.median(heard), 1) if heard else None,
        "p90_ms": percentile(heard, 90) if heard else None,
        "paused_turns": len(paused),
        "paused_cut_off": sum(f.cut_off for f in paused),
        "paused_split": sum(f.split for f in paused),
        "fillers": sum(f.filler for f in figures),
        "stages_p50_ms": _stage_medians(after),
    }
    print(
        f"{name:13s} voice-to-voice p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms over "
        f"{len(heard)}/{len(figures)} turns; cut off {result['cut_off']}/{len(figures)}, "
        f"paused turns cut off {result['paused_cut_off']}/"
        f"{len(paused)}, split {result['paused_split']}/{len(paused)}; fillers {result['fillers']}",
        flush=True,
    )
    stages = ", ".join(f"{name} {value}" for name, value in result["stages_p50_ms"].items())
    print(f"{'':13s} stages p50 from the last voiced sample (ms): {stages}", flush=True)
    return result


def _stage_medians(figures: list[TurnFigure]) -> dict[str, float]:
    """The median of each stage over the answered turns that reached it."""
    medians = {}
    for name in STAGES:
        values = [f.stages_ms[name] for f in figures if name in f.stages_ms]
        if values:
            medians[name] = round(statistics.median(values), 1)
    return medians


def _checks(check_ms: list[float]) -> dict[str, Any]:
    if not check_ms:
        return {"checks": 0}
    result = {
        "checks": len(check_ms),
        "check_p50_ms": round(statistics.median(check_ms), 1),
        "check_p95_ms": percentile(check_ms, 95),
    }
    print(
        f"{'':13s} end-of-turn checks: {result['checks']}, p50 {result['check_p50_ms']} ms, "
        f"p95 {result['check_p95_ms']} ms each (in the pipeline)",
        flush=True,
    )
    return result


async def _room(stages: Stages, lines: list[Line], db_under: float) -> Room:
    """Four people talking `db_under` dB under the callers' lines (their median RMS)."""
    level = statistics.median(
        float(np.sqrt(np.mean(np.square(line.pcm.astype(np.float64))))) for line in lines
    )
    return at_level(await talking_room(stages.synthesizer, ROOM_S), level, db_under)


async def _run(
    settings: Settings, trials: int, echo: HandsetEcho | None, room_db: float | None
) -> dict[str, Any]:
    book = load_personas(settings.personas.user_dir)
    stages = await load_stages(settings, book.operator, list(book))
    try:
        lines = (await _lines(stages))[: max(trials, 1)]
        freeze_after_start()  # as the service does once it has loaded
        model = "none" if stages.turn_model is None else settings.turn.model
        print(f"{len(lines)} caller lines; end-of-turn model: {model}", flush=True)
        result: dict[str, Any] = {"lines": len(lines), "turn_model": model}
        if echo is not None:
            result |= {"echo_db": echo.db, "echo_delay_ms": echo.delay_ms}
        room = None if room_db is None else await _room(stages, lines, room_db)
        if room_db is not None:
            print(f"room: four other people talking {room_db:g} dB under the caller", flush=True)
            result["room_db"] = room_db
        if stages.turn_model is not None:
            timed = TimedTurnModel(stages.turn_model)
            timed_stages = dataclasses.replace(stages, turn_model=timed)
            result["turn_model_pipeline"] = _summary(
                "turn model", await _pipeline(timed_stages, settings, lines, echo, room)
            )
            result["turn_model_pipeline"] |= _checks(timed.check_ms)
        silence_only = dataclasses.replace(stages, turn_model=None)
        result["silence_rule"] = _summary(
            "silence rule", await _pipeline(silence_only, settings, lines, echo, room)
        )
    finally:
        await stages.aclose()
    with_model, without = result.get("turn_model_pipeline"), result["silence_rule"]
    if with_model and with_model["p50_ms"] and without["p50_ms"]:
        result["p50_ratio"] = round(with_model["p50_ms"] / without["p50_ms"], 2)
        print(f"ratio (turn model / silence rule), p50: {result['p50_ratio']}")
    return result


def main(
    settings: Settings,
    trials: int = len(LINES) * len(SPEEDS) + 2 * len(PAUSED),
    echo: HandsetEcho | None = None,
    room_db: float | None = None,
) -> Any:
    """Run both pipelines over `trials` caller lines (34 by default); `echo`: the earpiece
    leaks back into the mic; `room_db`: other people talk this many dB under the caller."""
    return asyncio.run(_run(settings, trials, echo, room_db))
