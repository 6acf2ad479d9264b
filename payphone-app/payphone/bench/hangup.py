"""`bench hangup`: how fast the line goes quiet and the call's tasks end after on-hook.

The real call loop, real hook debounce (the configured 50 ms) on gpiozero mock pins, a real-time
in-memory earpiece; scripted speech stages that work in worker threads as the models do. The
clock starts at the hook pin's edge, so the debounce is part of every figure.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState
from payphone.call.options import CallOptions
from payphone.config import AudioSettings, CallSettings, Settings
from payphone.hardware.base import HookState
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.rig import Rig, build_rig
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
    speech_burst,
)

SETTINGS = CallSettings(dial_tone_s=0.2, idle_prompt_s=60, filler_after_s=10)
GONE_DEVICE = "payphone-bench-unplugged"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 1)


async def _listening_call(rig: Rig) -> None:
    rig.lift()
    await rig.wait_state(CallState.LISTENING, timeout=10)


async def _hang_up_and_measure(rig: Rig) -> tuple[float, float]:
    """(ms until the earpiece got its last buffer, ms until every task of the call ended)."""
    call = rig.phone.call
    assert call is not None
    edge = time.monotonic()
    rig.replace()
    while rig.phone.call is not None or any(
        t.get_name().startswith("call-") for t in asyncio.all_tasks()
    ):
        await asyncio.sleep(0.001)
    tasks_done = time.monotonic() - edge
    await asyncio.sleep(0.2)
    last = rig.sink.last_heard_at() or edge
    await rig.wait_hook(HookState.ON_HOOK)
    return max(0.0, last - edge) * 1000, tasks_done * 1000


async def _trial_speaking(rig: Rig) -> tuple[float, float]:
    await _listening_call(rig)
    rig.mic.push(speech_burst(0.4))
    await rig.wait_state(CallState.SPEAKING, timeout=10)
    await asyncio.sleep(0.15)
    return await _hang_up_and_measure(rig)


async def _trial_stt(rig: Rig) -> tuple[float, float]:
    await _listening_call(rig)
    rig.mic.push(speech_burst(0.4))
    await rig.wait_state(CallState.THINKING, timeout=10)
    await asyncio.sleep(0.1)  # Whisper (scripted: 0.5 s in a worker thread) is busy now
    return await _hang_up_and_measure(rig)


async def _trial_llm(rig: Rig) -> tuple[float, float]:
    await _listening_call(rig)
    rig.mic.push(speech_burst(0.4))
    await rig.wait_state(CallState.THINKING, timeout=10)
    await asyncio.sleep(0.7)  # past STT; tokens flow, no sentence end yet, nothing audible
    return await _hang_up_and_measure(rig)


async def _trial_key(rig: Rig) -> float:
    """ms from a persona key to the first ringback sample in the earpiece."""
    await _listening_call(rig)
    before = len(rig.sink.heard)
    pressed = time.monotonic()
    rig.keypad.press("2")
    while len(rig.sink.heard) <= before:
        await asyncio.sleep(0.0005)
    latency = (rig.sink.heard[before].at - pressed) * 1000
    await _hang_up_and_measure(rig)
    return latency


async def _trial_speculative(rig: Rig) -> tuple[float, float]:
    """The answer is ready but held back (the turn model was unsure): hang up while it waits."""
    await _listening_call(rig)
    rig.mic.push(speech_burst(0.4))
    await rig.wait_state(CallState.THINKING, timeout=10)
    await asyncio.sleep(0.7)  # transcript, model and first chunk done; nothing audible yet
    return await _hang_up_and_measure(rig)


async def _trial_device_gone(rig: Rig) -> tuple[float, float]:
    """The earpiece's sound card is unplugged: dial tone into a sink with no device."""
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE, timeout=10)
    await asyncio.sleep(0.3)
    return await _hang_up_and_measure(rig)


def _rig(
    settings: Settings,
    transcribe_s: float,
    reply: str,
    device_gone: bool = False,
    unsure_s: float = 0,
    echo: HandsetEcho | None = None,
) -> Rig:
    transcriber = ScriptedTranscriber(deque(["hello"] * 10_000), delay_s=transcribe_s)
    backend = ScriptedBackend(reply=reply, token_delay_s=0.02)
    synthesizer = ToneSynthesizer()
    earpiece = None
    if device_gone:  # the real PyAudio sink, asked for a device that is not there
        from payphone.hardware.audio import PyAudioSink

        gone = AudioSettings(output_device=GONE_DEVICE, retry_max_s=1.0)
        earpiece = PyAudioSink(gone, synthesizer.sample_rate)
    return build_rig(
        PhoneStages(transcriber, backend, synthesizer, lambda: EnergyEndpointer(unsure_s=unsure_s)),
        CallOptions(SETTINGS),
        debounce_ms=settings.hook.debounce_ms,
        earpiece=earpiece,
        echo=None if device_gone else echo,  # an unplugged earpiece has nothing to leak
    )


async def _give_up(rig: Rig) -> None:
    """A trial whose state never came: hang up and wait for the phone to be idle again."""
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    while rig.phone.call is not None:
        await asyncio.sleep(0.01)


async def _loop_lag(lags: list[float]) -> None:
    """How late the event loop wakes a 10 ms sleeper: a spinning call loop shows up here."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append((time.monotonic() - before - 0.01) * 1000)


async def _run(settings: Settings, trials: int, echo: HandsetEcho | None) -> dict[str, float]:
    long_reply = "Well now " + " ".join(["listen"] * 200) + "."
    scenarios: list[tuple[str, float, str, Callable[[Rig], Awaitable[tuple[float, float]]]]] = [
        ("speaking", 0.05, "Sure thing. " * 100, _trial_speaking),
        ("stt", 0.5, long_reply, _trial_stt),
        ("llm", 0.05, long_reply, _trial_llm),
        ("speculative", 0.05, "Sure thing. " * 100, _trial_speculative),
        ("no_device", 0.05, long_reply, _trial_device_gone),
    ]
    result: dict[str, float] = {"trials": trials, "debounce_ms": settings.hook.debounce_ms}
    if echo is not None:
        result |= {"echo_db": echo.db, "echo_delay_ms": echo.delay_ms}
    for name, stt_s, reply, trial in scenarios:
        unsure_s = 5.0 if name == "speculative" else 0.0
        gone = name == "no_device"
        rig = _rig(settings, stt_s, reply, device_gone=gone, unsure_s=unsure_s, echo=echo)
        task = await rig.start()
        lags: list[float] = []
        lag_task = asyncio.create_task(_loop_lag(lags))
        silent, ended = [], []
        for _ in range(trials):
            try:
                quiet_ms, done_ms = await trial(rig)
            except TimeoutError:  # with an echo the phone may hear itself and go another way
                await _give_up(rig)
                continue
            silent.append(quiet_ms)
            ended.append(done_ms)
        lag_task.cancel()
        task.cancel()
        await asyncio.gather(task, lag_task, return_exceptions=True)
        await rig.phone.sink.aclose()
        await rig.sink.aclose()
        rig.hook.close()
        if len(silent) < trials:
            result[f"{name}_reached"] = len(silent)
        if not silent:
            print(f"hang-up while {name:11s}: never reached in {trials} trials")
            continue
        print(
            f"hang-up while {name:11s}: silent p50 {percentile(silent, 50):6.1f} ms "
            f"p99 {percentile(silent, 99):6.1f} ms | tasks ended "
            f"p50 {percentile(ended, 50):6.1f} ms p99 {percentile(ended, 99):6.1f} ms "
            f"| loop lag max {max(lags):6.1f} ms"
        )
        result[f"{name}_p50_ms"] = percentile(silent, 50)
        result[f"{name}_p99_ms"] = percentile(silent, 99)
        result[f"{name}_tasks_p99_ms"] = percentile(ended, 99)
        result[f"{name}_loop_lag_max_ms"] = round(max(lags), 1)
    rig = _rig(settings, 0.05, "Hello.", echo=echo)
    task = await rig.start()
    keys = [await _trial_key(rig) for _ in range(trials)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rig.sink.aclose()
    rig.hook.close()
    median = statistics.median(keys)
    print(f"persona key -> ringback: median {median:.1f} ms, p99 {percentile(keys, 99)} ms")
    result["key_to_ringback_p50_ms"] = round(statistics.median(keys), 1)
    return result


def main(settings: Settings, trials: int = 50, echo: HandsetEcho | None = None) -> dict[str, float]:
    """`echo`: the earpiece leaks back into the mic (the phone's own voice on the line)."""
    return asyncio.run(_run(settings, trials, echo))
