"""The echo canceller across calls on one phone: the real AEC3 behind a simulated handset
(-10 dB, 20 ms), stand-in speech stages, the real call loop on mock pins.

AEC3 carried over from earlier calls let the dial tone of the third and later calls through for
its first 90-120 ms, loud enough for the phone to take its own dial tone for the caller's
"hello?" (the mic is open over the dial tone) and stop it. The phone starts AEC3 afresh at
off-hook, so every call's dial tone runs its course.
"""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState
from payphone.call.options import CallOptions
from payphone.config import CallSettings, EchoSettings
from payphone.hardware.base import HookState
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.rig import build_rig
from payphone.sim.runner import MIC_RATE
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
    speech_burst,
)
from payphone.speech.echo_canceller import open_echo_canceller

pytestmark = pytest.mark.slow

CALLS = 4


async def test_every_calls_dial_tone_runs_its_course_after_a_talked_over_call() -> None:
    canceller = open_echo_canceller(EchoSettings(), MIC_RATE)
    stages = PhoneStages(
        ScriptedTranscriber(deque(["hello"] * CALLS)),
        ScriptedBackend(reply="Sure thing. " * 50, token_delay_s=0.01),
        ToneSynthesizer(),
        EnergyEndpointer,  # one frame over its threshold is speech: stricter than the VAD
        echo=canceller,
    )
    options = CallOptions(CallSettings(dial_tone_s=0.2, idle_prompt_s=60, filler_after_s=10))
    rig = build_rig(stages, options, echo=HandsetEcho(-10, 20))
    task = await rig.start()
    calls = []
    try:
        for _ in range(CALLS):
            rig.lift()
            await rig.wait_state(CallState.LISTENING, timeout=10)
            call = rig.phone.call
            assert call is not None
            calls.append(call)
            rig.mic.push(speech_burst(0.4))  # the caller speaks; the persona answers...
            try:
                await rig.wait_state(CallState.SPEAKING, timeout=5)
            except TimeoutError:
                kinds = [event["event"] for event in call.log.events]
                pytest.fail(f"call {len(calls)} never answered the caller: {kinds}")
            await asyncio.sleep(0.15)
            rig.replace()  # ...and is cut off by the hang-up
            await rig.wait_hook(HookState.ON_HOOK)
            while rig.phone.call is not None:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.sink.aclose()
        rig.hook.close()
        canceller.close()

    for number, call in enumerate(calls, 1):
        kinds = [event["event"] for event in call.log.events]
        assert "hello_heard" not in kinds, f"call {number} took its dial tone for a caller"
        assert kinds[:2] == ["off_hook", "timer"], f"call {number}: {kinds}"
