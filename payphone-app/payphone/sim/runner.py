"""Runs a call script through the real call loop on a simulated phone.

The phone is the same rig the tests use (mock hook pin, in-memory mic and earpiece) with the
stages it is given: the real models for `simulate` and the demo. `say` feeds the mic at real-time
pace unless `fast` is set (then latency figures mean nothing, but tests run quickly).
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState
from payphone.call.options import CallOptions
from payphone.call.session import Call, CallLog
from payphone.hardware.base import HookState
from payphone.log import get_logger
from payphone.pcm import Pcm
from payphone.personas.loader import PersonaBook
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.recording import MicTape
from payphone.sim.rig import Rig, build_rig
from payphone.sim.script import Step
from payphone.speech import tones
from payphone.speech.dtmf_keypad import InbandKeypad

log = get_logger("sim")

MIC_RATE = 16000
FRAME_S = 0.03
KEY_GAP_S = 0.15
CALL_WAIT_S = 5.0  # the phone makes the call this soon after off-hook, however loaded
HELD_QUIET_S = 1.5  # after a held turn, quiet this long (past the silence limit) is the end
QUIET_STATES = (CallState.LISTENING, CallState.HOWLER, CallState.ENDED, CallState.DIAL_TONE)


@dataclass
class SimResult:
    calls: list[CallLog]
    rig: Rig
    tape: MicTape


def read_wav_16k(path: Path) -> Pcm:
    """Any WAV (rate, channels, 8/16/32-bit) as 16 kHz mono int16."""
    with wave.open(str(path), "rb") as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        raw = wav.readframes(wav.getnframes())
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    data = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    if width == 1:
        data = (data - 128.0) * 256.0
    elif width == 4:
        data /= 65536.0
    return to_mic_rate(data.reshape(-1, channels).mean(axis=1), rate)


def to_mic_rate(samples: npt.ArrayLike, rate: int) -> Pcm:
    """Mono samples on the int16 scale, at any rate, as the mic's 16 kHz int16 PCM."""
    mono = np.asarray(samples, dtype=np.float32)
    if rate != MIC_RATE:
        mono = soxr.resample(mono, rate, MIC_RATE)
    return np.clip(mono, -32768, 32767).astype(np.int16)


class ScriptRunner:
    """Plays one script; every step waits for what a person would wait for."""

    def __init__(self, rig: Rig, tape: MicTape, fast: bool) -> None:
        self.rig = rig
        self.tape = tape
        self.fast = fast

    async def feed(self, pcm: Pcm) -> None:
        """Into the mic: all at once in fast mode, else frame by frame in real time."""
        self.tape.record(pcm)
        if self.fast:
            self.rig.mic.push(pcm)
            return
        frame = round(MIC_RATE * FRAME_S)
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), frame)):
            self.rig.mic.push(pcm[offset : offset + frame])
            await asyncio.sleep(max(0.0, started + (index + 1) * FRAME_S - time.monotonic()))

    async def step(self, step: Step) -> None:
        rig = self.rig
        match step.action:
            case "offhook":
                rig.lift()
                await rig.wait_hook(HookState.OFF_HOOK)
                await self.wait_call()
            case "onhook":
                rig.replace()
                await rig.wait_hook(HookState.ON_HOOK)
                while rig.phone.call is not None:
                    await asyncio.sleep(0.01)
            case "wait":
                await asyncio.sleep(step.seconds)
            case "press":
                for key in step.keys:
                    rig.keypad.press(key)
                    await asyncio.sleep(KEY_GAP_S)
            case "tones":
                await self.feed(tones.dtmf_sequence(step.keys, MIC_RATE, on_s=0.1, off_s=0.1))
            case "say":
                assert step.path is not None
                await self.feed(read_wav_16k(step.path))
                await self.feed(np.zeros(round(MIC_RATE * 0.1), dtype=np.int16))
            case "wait_reply":
                await self.wait_reply(step.seconds)

    async def wait_call(self) -> None:
        """The hook reads off-hook a moment before the phone has made the call (on a loaded
        machine, long enough for the next step's `wait_reply` to find no call and return, and
        the whole script to run ahead of the greeting): wait for the call itself."""
        try:
            await self.rig.wait_call(CALL_WAIT_S)
        except TimeoutError:
            log.warning("sim_no_call", seconds=CALL_WAIT_S)

    async def wait_reply(self, timeout_s: float) -> None:
        """Until the persona answered and went quiet (or nothing was heard to answer)."""
        rig = self.rig
        try:
            async with asyncio.timeout(timeout_s):
                quiet_since = time.monotonic()
                while True:  # phase 1: the caller's words reach the loop (or prove to be nothing)
                    call = rig.phone.call
                    if call is None or call.state not in QUIET_STATES:
                        break
                    if rig.mic.queued_frames or rig.sink.playing:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > 1.5:
                        return
                    await asyncio.sleep(0.02)
                events_before = len(call.log.events) if call is not None else 0
                held_quiet: float | None = None
                while True:  # phase 2: the persona finishes
                    call = rig.phone.call
                    if call is None:
                        return
                    quiet = call.state in QUIET_STATES and not rig.sink.playing
                    if not quiet or rig.mic.queued_frames:
                        held_quiet = None
                    elif not _held_since(call, events_before):
                        return
                    else:  # the caller went on: wait for the joined turn to be answered
                        held_quiet = held_quiet or time.monotonic()
                        if time.monotonic() - held_quiet > HELD_QUIET_S:
                            return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            log.warning("wait_reply_timed_out", seconds=timeout_s)


def _held_since(call: Call, index: int) -> bool:
    """A turn was held (the caller went on before the answer) since event `index`."""
    return any(e["event"] == "turn_held" for e in call.log.events[index:])


async def run_script(
    steps: list[Step],
    stages: PhoneStages,
    options: CallOptions,
    *,
    personas: PersonaBook,
    fast: bool = False,
    sink_speed: float = 1.0,
    echo: HandsetEcho | None = None,
    on_call: Callable[[Call], None] | None = None,
    on_state: Callable[[CallState], None] | None = None,
) -> SimResult:
    """Play the script on a fresh simulated phone; hangs up at the end if the script did not.

    `sink_speed` > 1 plays the earpiece that many times faster (tests with long replies).
    `echo`: the earpiece leaks back into the mic (the caller's audio then reaches the phone on
    the mic's real-time clock, also with `fast`).
    `on_call` / `on_state`: another observer of the phone (the status page)."""
    rig = build_rig(
        stages,
        options,
        personas=personas,
        extra_keypads=[InbandKeypad(MIC_RATE)],
        sink_speed=sink_speed,
        echo=echo,
        on_call=on_call,
        on_state=on_state,
    )
    task = await rig.start()
    tape = MicTape(MIC_RATE)
    runner = ScriptRunner(rig, tape, fast)
    try:
        for step in steps:
            log.info("sim_step", action=step.action, line=step.line)
            await runner.step(step)
        if rig.phone.call is not None:
            await runner.step(Step("onhook", 0))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.sink.aclose()
        rig.hook.close()
    return SimResult([call.log for call in rig.calls], rig, tape)
