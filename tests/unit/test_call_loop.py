"""The call loop on real mock pins and in-memory audio, with scripted speech stages."""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState, SpeechDropped, SpeechStarted
from payphone.call.listen import Endpointer
from payphone.call.options import CallOptions
from payphone.config import CallSettings
from payphone.hardware.base import HookState
from payphone.llm.history import INTERRUPTED_MARKER
from payphone.sim.rig import Rig, build_rig
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
    speech_burst,
)
from payphone.speech import tones
from payphone.speech.dtmf_keypad import InbandKeypad

FAST = CallSettings(
    dial_tone_s=0.3,
    idle_prompt_s=0.6,
    idle_goodbye_s=0.4,
    inter_digit_timeout_s=0.25,
    max_call_s=60,
    filler_after_s=5.0,
)


def make_rig(
    texts: list[str] | None = None,
    backend: ScriptedBackend | None = None,
    settings: CallSettings = FAST,
    barge_in: bool = False,
    endpointer: Callable[[], Endpointer] = EnergyEndpointer,
    **kwargs: Any,
) -> tuple[Rig, ScriptedTranscriber, ScriptedBackend, ToneSynthesizer]:
    transcriber = ScriptedTranscriber(deque(texts or []))
    backend = backend or ScriptedBackend()
    synth = ToneSynthesizer()
    rig = build_rig(
        PhoneStages(transcriber, backend, synth, endpointer),
        CallOptions(settings, barge_in=barge_in),
        sink_speed=4.0,
        **kwargs,
    )
    return rig, transcriber, backend, synth


async def running(rig: Rig) -> asyncio.Task[None]:
    task = await rig.start()
    await asyncio.sleep(0.01)
    return task


async def switch_off(rig: Rig, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rig.sink.aclose()
    rig.hook.close()


def call_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("call-")]


async def speak(rig: Rig, seconds: float = 0.5) -> None:
    rig.mic.push(speech_burst(seconds))


async def test_off_hook_dial_tone_then_greeting_then_listening() -> None:
    rig, *_ = make_rig()
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    await rig.wait_state(CallState.GREETING)  # nobody spoke: the persona greets after dial tone
    await rig.wait_state(CallState.LISTENING)
    assert rig.states[:3] == [CallState.DIAL_TONE, CallState.GREETING, CallState.LISTENING]
    heard = rig.sink.heard_pcm()
    spectrum = np.abs(np.fft.rfft(heard[: 22050 // 4].astype(float)))
    freqs = np.fft.rfftfreq(22050 // 4, 1 / 22050)
    top = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert top == pytest.approx([350, 440], abs=5)  # dial tone first
    await switch_off(rig, task)


class AnswerCountingEndpointer(EnergyEndpointer):
    """Counts the call telling it an answer was heard (what ends the listener's held words)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0

    def answered(self) -> None:
        self.answers += 1


async def test_the_listener_hears_that_a_turn_was_answered() -> None:
    endpointers: list[AnswerCountingEndpointer] = []

    def make() -> AnswerCountingEndpointer:
        endpointers.append(AnswerCountingEndpointer())
        return endpointers[-1]

    rig, _, _, _ = make_rig(["what time is it"], endpointer=make)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)  # after the greeting
    before = endpointers[-1].answers
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    assert endpointers[-1].answers == before + 1
    await switch_off(rig, task)


async def test_speech_stops_dial_tone_and_a_turn_is_answered() -> None:
    rig, _, backend, synth = make_rig(["hello?", "what time is it"])  # hello: over the dial tone
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    await speak(rig)
    await rig.wait_state(CallState.GREETING)
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.heard == "what time is it"
    assert turn.reply == backend.reply
    assert not turn.fallback and not turn.interrupted
    for mark in ("transcript_ready", "first_token", "first_chunk", "first_audio", "reply_done"):
        assert turn.latency_ms[mark] >= 0
    assert turn.latency_ms["first_audio"] <= turn.latency_ms["reply_done"]
    # the first sentence was synthesized before the model finished writing
    assert synth.spoken[-3:] == ["Hello there.", "How can I help you today?", "I am listening."]
    assert [m["role"] for m in call.conversation.turns] == ["user", "assistant"]
    sent = backend.requests[-1]
    assert sent[: len(call.conversation.prefix())] == call.conversation.prefix()  # + examples
    await switch_off(rig, task)


async def test_noise_without_words_makes_no_turn() -> None:
    rig, transcriber, _, _ = make_rig([""])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    async with asyncio.timeout(3):
        while transcriber.calls == 0:
            await asyncio.sleep(0.01)
    await rig.wait_state(CallState.LISTENING)
    assert rig.calls[0].log.turns == []
    await switch_off(rig, task)


async def wait_silent_after(rig: Rig, since: float, quiet_s: float = 0.15) -> float:
    """When the earpiece got its last buffer after `since` (waits until it stays quiet)."""
    await asyncio.sleep(quiet_s)
    last = rig.sink.last_heard_at() or since
    return max(0.0, last - since)


@pytest.mark.parametrize(
    "state",
    [
        CallState.DIAL_TONE,
        CallState.GREETING,
        CallState.LISTENING,
        CallState.THINKING,
        CallState.SPEAKING,
        CallState.RINGBACK,
        CallState.DIALING,
        CallState.ANNOUNCEMENT,
        CallState.GOODBYE,
        CallState.HOWLER,
    ],
)
async def test_hang_up_in_every_state_silences_and_ends_every_task(state: CallState) -> None:
    backend = ScriptedBackend(reply=" ".join(["word"] * 80), token_delay_s=0.02)
    rig, transcriber, _, _ = make_rig(["hello"], backend=backend)
    transcriber.delay_s = 0.4
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    if state is CallState.GREETING:
        await rig.wait_state(CallState.GREETING)
    elif state is CallState.LISTENING:
        await rig.wait_state(CallState.LISTENING)
    elif state in (CallState.THINKING, CallState.SPEAKING):
        await rig.wait_state(CallState.LISTENING)
        await speak(rig)
        await rig.wait_state(state)
    elif state is CallState.RINGBACK:
        rig.keypad.press("2")
        await rig.wait_state(CallState.RINGBACK)
    elif state is CallState.DIALING:
        rig.keypad.press("5")
        await rig.wait_state(CallState.DIALING)
    elif state is CallState.ANNOUNCEMENT:
        for key in "5559999":
            rig.keypad.press(key)
        await rig.wait_state(CallState.ANNOUNCEMENT)
    elif state is CallState.GOODBYE:
        await rig.wait_state(CallState.GOODBYE, timeout=10)  # the caller stayed silent
    elif state is CallState.HOWLER:
        await rig.wait_state(CallState.LISTENING)
        await rig.wait_state(CallState.HOWLER, timeout=10)
    await asyncio.sleep(0.05)
    call = rig.calls[0]
    hung_up_at = time.monotonic()
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    async with asyncio.timeout(1):
        while call_tasks():
            await asyncio.sleep(0.005)
    late = await wait_silent_after(rig, hung_up_at)
    assert late <= 0.010 + 0.03  # debounce + at most one buffer already handed to the device
    assert call.state is CallState.ENDED
    assert backend.active == 0  # the model stream was closed
    await switch_off(rig, task)


async def test_next_call_starts_clean_after_hang_up_mid_reply() -> None:
    backend = ScriptedBackend(reply=" ".join(["word"] * 60), token_delay_s=0.02)
    rig, _, _, _ = make_rig(["first question", "second question"], backend=backend)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    await asyncio.sleep(0.05)
    rig.lift()
    await rig.wait_hook(HookState.OFF_HOOK)
    await rig.wait_state(CallState.LISTENING)
    second = rig.calls[1]
    assert second is not rig.calls[0]
    assert second.conversation.turns == []
    assert second.state is CallState.LISTENING
    await switch_off(rig, task)


async def test_hash_interrupts_the_persona_and_history_keeps_what_was_said() -> None:
    backend = ScriptedBackend(reply="One two three. " + " ".join(["more"] * 80), token_delay_s=0.02)
    rig, _, _, _ = make_rig(["tell me a story"], backend=backend)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await asyncio.sleep(0.1)
    rig.keypad.press("#")
    await rig.wait_state(CallState.LISTENING)
    call = rig.calls[0]
    last = call.conversation.messages()[-1]
    assert last["role"] == "assistant"
    assert last["content"].startswith("One two three.")
    assert INTERRUPTED_MARKER in last["content"]
    assert backend.active == 0
    await switch_off(rig, task)


async def test_persona_key_switches_with_ringback_and_fresh_history() -> None:
    rig, _, backend, _ = make_rig(["hello operator"])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING)
    before = len(rig.sink.heard)
    rig.keypad.press("2")
    await rig.wait_state(CallState.RINGBACK)
    call = rig.calls[0]
    assert call.persona.id == "grandma_mae"
    await rig.wait_state(CallState.GREETING)
    # a fresh memory: Mae's prompt and her example exchanges, nothing of the Operator's call
    assert call.conversation.messages() == call.conversation.prefix()
    assert "Grandma Mae" in call.conversation.messages()[0]["content"]
    assert call.conversation.examples[1]["content"] == call.persona.examples[0].reply
    async with asyncio.timeout(2):
        while not backend.warmed or backend.warmed[-1] != call.conversation.system_prompt:
            await asyncio.sleep(0.01)
    assert backend.warmed_examples[-1] == call.conversation.examples  # primed while it rang
    ring = np.concatenate([b.pcm for b in rig.sink.heard[before : before + 10]]).astype(float)
    freqs = np.fft.rfftfreq(len(ring), 1 / 22050)
    top = sorted(freqs[np.argsort(np.abs(np.fft.rfft(ring)))[-2:]])
    assert top == pytest.approx([440, 480], abs=12)
    rig.keypad.press("*")
    await rig.wait_state(CallState.RINGBACK)
    assert call.persona.id == "operator"
    await switch_off(rig, task)


async def test_555_number_within_inter_digit_timeout_reaches_its_persona() -> None:
    rig, *_ = make_rig()
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    for key in "5550103":
        rig.keypad.press(key)
        await asyncio.sleep(0.05)
    await rig.wait_state(CallState.RINGBACK)
    assert rig.calls[0].persona.id == "comp_u_tron"
    await switch_off(rig, task)


async def test_unknown_number_gets_sit_and_not_in_service_after_the_timeout() -> None:
    rig, *_ = make_rig()
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    started = time.monotonic()
    for key in "59":
        rig.keypad.press(key)
    await rig.wait_state(CallState.ANNOUNCEMENT)
    waited = time.monotonic() - started
    assert waited >= FAST.inter_digit_timeout_s * 0.9  # it waited for more digits, not for '#'
    assert [e["number"] for e in rig.calls[0].log.events if e["event"] == "dialed"] == ["59"]
    await asyncio.sleep(0.3)
    played = rig.sink.heard_pcm()[-int(22050 * 1.5) :].astype(float)
    freqs = np.fft.rfftfreq(len(played), 1 / 22050)
    spectrum = np.abs(np.fft.rfft(played))
    assert spectrum[np.abs(freqs - 985.2) < 5].max() > 10 * np.median(spectrum)
    await switch_off(rig, task)


async def test_idle_escalation_prompt_then_goodbye_then_howler_and_it_repeats() -> None:
    rig, *_ = make_rig(["still here"])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await rig.wait_state(CallState.ANNOUNCEMENT, timeout=3)  # "are you still there?"
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)  # the caller answers: the idle timer starts over
    await rig.wait_state(CallState.SPEAKING, timeout=3)
    await rig.wait_state(CallState.LISTENING, timeout=3)
    await rig.wait_state(CallState.ANNOUNCEMENT, timeout=3)  # fires again, not only once
    await rig.wait_state(CallState.HOWLER, timeout=5)
    events = [e["event"] for e in rig.calls[0].log.events]
    assert events.count("timer") >= 3
    rig.keypad.press("1")  # keys do nothing during the howler; only on-hook ends it
    await asyncio.sleep(0.1)
    assert rig.calls[0].state is CallState.HOWLER
    await switch_off(rig, task)


async def test_max_call_length_says_goodbye() -> None:
    settings = FAST.model_copy(update={"max_call_s": 0.5, "idle_prompt_s": 30})
    rig, *_ = make_rig(settings=settings)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.HOWLER, timeout=5)
    assert any(e.get("timer") == "max_call" for e in rig.calls[0].log.events)
    await switch_off(rig, task)


@pytest.mark.parametrize(
    ("cause", "after", "line"),
    [("refused", 0, "busy_line"), ("stall_mid_stream", 6, "stall_line")],
)
async def test_llm_failure_gets_an_in_character_line(cause: str, after: int, line: str) -> None:
    backend = ScriptedBackend(fail_cause=cause, fail_after_tokens=after)
    rig, _, _, synth = make_rig(["hello"], backend=backend)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.THINKING)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.fallback and turn.cause == cause
    assert getattr(call.persona, line) in synth.spoken
    await switch_off(rig, task)


async def test_an_exception_in_a_turn_gets_an_apology_and_the_call_goes_on() -> None:
    class Broken(ScriptedTranscriber):
        async def transcribe(self, pcm: np.ndarray) -> object:  # type: ignore[override]
            raise RuntimeError("model exploded")

    rig = build_rig(
        PhoneStages(Broken(), ScriptedBackend(), ToneSynthesizer(), EnergyEndpointer),
        CallOptions(FAST),
        sink_speed=4.0,
    )
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.THINKING)
    await rig.wait_state(CallState.LISTENING, timeout=3)
    assert rig.calls[0].persona.apology in rig.phone.call.deps.synthesizer.spoken  # type: ignore[union-attr,attr-defined]
    await switch_off(rig, task)


async def test_200_random_hook_and_key_sequences_leave_nothing_behind() -> None:
    rng = random.Random(1234)
    backend = ScriptedBackend(reply=" ".join(["talk"] * 30), token_delay_s=0.005)
    rig, _, _, _ = make_rig(["hi"] * 400, backend=backend)
    threads_before = threading.active_count()
    task = await running(rig)
    for _ in range(200):
        action = rng.choice(["lift", "replace", "key", "speak", "wait"])
        if action == "lift":
            rig.lift()
        elif action == "replace":
            rig.replace()
        elif action == "key":
            rig.keypad.press(rng.choice("0123456789*#"))
        elif action == "speak":
            rig.mic.push(speech_burst(rng.uniform(0.1, 0.4)))
        await asyncio.sleep(rng.uniform(0.0, 0.04))
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    async with asyncio.timeout(2):
        while call_tasks() or rig.phone.call is not None:
            await asyncio.sleep(0.01)
    assert backend.active == 0
    await switch_off(rig, task)
    await asyncio.sleep(0.3)  # worker threads of cancelled scripted STT finish their sleep
    assert threading.active_count() <= threads_before + 1  # the default executor may keep one
    assert rig.phone.calls_taken > 5


async def test_inband_dtmf_in_the_mic_audio_switches_persona() -> None:
    inband = InbandKeypad(16000)
    rig, *_ = make_rig(extra_keypads=[inband])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    rig.mic.push(tones.dtmf("3", 16000, 0.1))  # the caller's own phone keys a tone
    await rig.wait_state(CallState.RINGBACK)
    assert rig.calls[0].persona.id == "comp_u_tron"
    await switch_off(rig, task)


async def test_a_blip_that_makes_no_utterance_does_not_stop_the_idle_timer() -> None:
    rig, transcriber, *_ = make_rig()
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await rig.wait_state(CallState.ANNOUNCEMENT, timeout=3)  # first idle prompt
    await rig.wait_state(CallState.LISTENING)
    call = rig.phone.call
    assert call is not None
    call.post(SpeechStarted(time.monotonic()))
    call.post(SpeechDropped(time.monotonic()))  # a blip: no utterance
    await rig.wait_state(CallState.ANNOUNCEMENT, timeout=3)  # the timer still fires
    assert transcriber.calls == 0
    await switch_off(rig, task)


async def test_a_caller_talking_longer_than_the_idle_wait_gets_no_idle_prompt() -> None:
    rig, *_ = make_rig(["well, it is a long story"])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await talk_in_real_time(rig, 1.2)  # twice the rig's idle wait, without a pause
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    call = rig.calls[0]
    assert [t.heard for t in call.log.turns] == ["well, it is a long story"]
    assert CallState.ANNOUNCEMENT not in rig.states  # no "Are you still there?" over them
    await switch_off(rig, task)


async def test_logs_carry_call_id_persona_and_turn() -> None:
    import io
    import json

    from payphone.log import setup_logging

    stream = io.StringIO()
    setup_logging("info", "json", stream)
    rig, *_ = make_rig(["hello"])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    rig.keypad.press("1")
    await rig.wait_state(CallState.RINGBACK)
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING)
    await switch_off(rig, task)
    setup_logging()  # back to the default for the tests that follow
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = next(e for e in events if e["event"] == "turn_done")
    assert done["call_id"] == rig.calls[0].call_id
    assert done["persona"] == "detective_jones"
    assert done["turn"] == 1
    assert isinstance(done["first_audio_ms"], float)
    started = next(e for e in events if e["event"] == "call_started")
    assert started["persona"] == "operator" and started["call_id"] == rig.calls[0].call_id


async def test_a_filler_plays_when_the_answer_is_slow_and_gives_way_to_it() -> None:
    settings = FAST.model_copy(update={"filler_after_s": 0.3})
    slow = ScriptedBackend(reply="Well. Here is the answer.", token_delay_s=0.25)
    rig, _, _, synth = make_rig(["a hard question"], backend=slow, settings=settings)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    [turn] = rig.calls[0].log.turns
    operator = rig.calls[0].persona
    assert turn.filler
    assert any(filler in synth.spoken for filler in operator.fillers)
    assert turn.reply == slow.reply  # the real answer still came, whole
    await switch_off(rig, task)


async def test_no_filler_when_the_answer_is_quick() -> None:
    settings = FAST.model_copy(update={"filler_after_s": 1.0})
    rig, _, _, synth = make_rig(["an easy question"], settings=settings)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    assert not rig.calls[0].log.turns[0].filler
    assert not any(filler in synth.spoken for filler in rig.calls[0].persona.fillers)
    await switch_off(rig, task)


LONG_REPLY = " ".join(["Well now, let me tell you all about the weather in this town."] * 4)


async def persona_speaking(then: str) -> tuple[Rig, asyncio.Task[None]]:
    """A barge-in rig whose persona is in the middle of a long reply; the caller's next words
    will be heard as `then`."""
    rig, _, task = await persona_speaking_then(then)
    return rig, task


async def persona_speaking_then(
    *then: str,
) -> tuple[Rig, ScriptedTranscriber, asyncio.Task[None]]:
    """As `persona_speaking`, with Whisper hearing the caller's next utterances as `then`."""
    rig, transcriber, _, _ = make_rig(
        ["tell me about the weather", *then],
        ScriptedBackend(reply=LONG_REPLY, token_delay_s=0.001),
        barge_in=True,
        endpointer=functools.partial(EnergyEndpointer, barge_in=True),
    )
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)  # after the greeting
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    return rig, transcriber, task


def burst_then_pause(rig: Rig) -> None:
    """ "Stop," and the pause after it: short enough to be judged alone."""
    rig.mic.push(np.concatenate([speech_burst(0.12), np.zeros(int(0.21 * 16000), np.int16)]))


async def test_talking_over_the_persona_stops_it_and_becomes_the_next_turn() -> None:
    rig, task = await persona_speaking("stop, what time is it")
    await asyncio.sleep(0.2)
    said_at = time.monotonic()
    await speak(rig, 0.6)  # far more than a backchannel
    await rig.wait_state(CallState.LISTENING)
    assert not rig.sink.playing
    assert time.monotonic() - said_at < 0.6  # stopped while the caller was still talking
    await rig.wait_state(CallState.SPEAKING)  # ...and their words were answered
    call = rig.calls[0]
    async with asyncio.timeout(10):
        while len(call.log.turns) < 2:
            await asyncio.sleep(0.01)
    first, second = call.log.turns
    assert first.interrupted and 0 < len(first.reply) < len(LONG_REPLY)
    assert second.heard == "stop, what time is it"
    assert any(e["event"] == "barge_in" for e in call.log.events)
    history = [m["content"] for m in call.conversation.turns]
    assert history[1].endswith("[the caller interrupted]")  # kept as far as it was heard
    await switch_off(rig, task)


@pytest.mark.parametrize(
    ("heard", "reason"), [("mm-hm", "backchannel"), ("and then make them", "short_unclear")]
)
async def test_a_backchannel_does_not_stop_the_persona(heard: str, reason: str) -> None:
    """Whisper may write words for a listener's noise: a short burst that does not ask for the
    turn lets the persona go on too."""
    rig, task = await persona_speaking(heard)
    await asyncio.sleep(0.2)
    await speak(rig, 0.12)  # "mm-hm": four frames, under the backchannel limit
    await rig.wait_state(CallState.LISTENING, timeout=10)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert not turn.interrupted and turn.reply == LONG_REPLY
    async with asyncio.timeout(3):  # an unclear burst waits a second for the caller to go on
        while not (ignored := [e for e in call.log.events if e["event"] == "speech_ignored"]):
            await asyncio.sleep(0.02)
    assert [e["reason"] for e in ignored] == [reason]
    kinds = [e["event"] for e in call.log.events]
    assert kinds.index("persona_paused") < kinds.index("persona_resumed")  # silent meanwhile
    heard = rig.sink.heard_pcm()
    loud = np.abs(heard) > 1000
    gaps = np.diff(np.flatnonzero(loud))
    assert gaps.max() > 0.05 * rig.sink.sample_rate  # the pause while the caller said "mm-hm"
    await switch_off(rig, task)


async def talk_in_real_time(rig: Rig, seconds: float) -> None:
    """Caller speech a frame at a time, as a sound card delivers it."""
    burst = speech_burst(seconds)
    for start in range(0, len(burst), 480):
        rig.mic.push(burst[start : start + 480])
        await asyncio.sleep(0.03)


@pytest.mark.parametrize(
    ("first", "whisper_s", "pause_s"),
    [
        *(("Stop.", 0.15, 0), ("Stop.", 0.6, 0), ("Top", 0.15, 0), ("Top", 0.6, 0)),
        *(("Top", 0.02, 0.4), ("", 0.02, 0.4), ("Stop.", 0.02, 0.4)),
    ],
)
async def test_a_short_request_and_what_the_caller_says_next_are_one_turn(
    first: str, whisper_s: float, pause_s: float
) -> None:
    """ "Stop, I need a taxi.": the pause after "Stop," ends a short burst; Whisper hears it as a
    request ("Stop.") or misheard on its own ("Top") while the caller is already going on
    (0.15 s), only once their next words have made a turn (0.6 s), or while the caller is still
    in the pause (0.02 s, going on 0.4 s later: an unclear "Top" waits, and so does a "Stop."
    that only opens a request). Each way the phone answers the whole, once."""
    rig, transcriber, task = await persona_speaking_then(first, "Stop, I need a taxi.")
    transcriber.delay_s = whisper_s
    burst_then_pause(rig)
    await asyncio.sleep(pause_s)  # the mic hears silence meanwhile
    await talk_in_real_time(rig, 0.6)
    call = rig.calls[0]
    async with asyncio.timeout(10):
        while not any(t.heard == "Stop, I need a taxi." for t in call.log.turns):
            await asyncio.sleep(0.01)
    answered = [t.heard for t in call.log.turns]  # a part held unanswered is no turn
    assert answered == ["tell me about the weather", "Stop, I need a taxi."]
    asked = [m["content"] for m in call.conversation.turns if m["role"] == "user"]
    assert asked == answered  # the history holds no speculative turn
    assert call.log.turns[0].interrupted
    assert transcriber.heard_s[-1] >= 0.7  # Whisper heard "Stop," and what followed, together
    await switch_off(rig, task)


async def test_an_unclear_burst_is_forgotten_when_what_follows_is_a_backchannel() -> None:
    """ "Top" (unclear) and the caller goes on, but only with "mm": both are a listener's
    noises, the persona goes on, and the burst never joins the caller's next real turn."""
    rig, _, task = await persona_speaking_then("Top", "mm", "what time is it")
    burst_then_pause(rig)
    await talk_in_real_time(rig, 0.12)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    await speak(rig)
    call = rig.calls[0]
    async with asyncio.timeout(10):
        while len(call.log.turns) < 2:
            await asyncio.sleep(0.01)
    first, second = call.log.turns
    assert not first.interrupted and second.heard == "what time is it"
    kinds = [e["event"] for e in call.log.events]
    assert "speech_kept" in kinds and "unclear_joined" not in kinds
    ignored = [e["reason"] for e in call.log.events if e["event"] == "speech_ignored"]
    assert ignored == ["short_unclear"]  # both bursts, dropped together, never joined later
    await switch_off(rig, task)


async def test_a_short_request_over_the_persona_takes_the_turn() -> None:
    rig, task = await persona_speaking("Stop.")
    await speak(rig, 0.12)  # as short as "mm-hm", but Whisper hears a request
    await rig.wait_state(CallState.THINKING, timeout=5)
    call = rig.calls[0]
    async with asyncio.timeout(10):
        while len(call.log.turns) < 2:
            await asyncio.sleep(0.01)
    first, second = call.log.turns
    assert first.interrupted and second.heard == "Stop."
    assert any(e["event"] == "barge_in" and e.get("short") for e in call.log.events)
    await switch_off(rig, task)
