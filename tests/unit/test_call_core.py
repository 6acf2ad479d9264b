"""Regression tests for the call core: each bug a real phone would hit, on the rig."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import ClassVar

import numpy as np
import pytest
import structlog

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState, Heard, MicEvent, SpeechDropped, SpeechStarted
from payphone.call.options import CallOptions
from payphone.call.session import joined
from payphone.config import CallSettings
from payphone.cores import FIRST_AUDIO, busy
from payphone.llm.base import ChatOptions, LlmError, Message
from payphone.llm.breaker import CIRCUIT_OPEN, BreakerState, CircuitBreaker
from payphone.llm.deadlines import Deadlines
from payphone.llm.history import INTERRUPTED_MARKER, choose_system_prompt
from payphone.pcm import Pcm
from payphone.reply.guard import BLOCKED_LINE, GuardConfig
from payphone.reply.speakable import make_speakable
from payphone.sim.rig import Rig, build_rig
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
    speech_burst,
)
from payphone.speech.base import Transcript, VoiceSpec
from tests.unit.test_call_loop import FAST, make_rig, running, speak, switch_off


async def on_the_line(rig: Rig) -> asyncio.Task[None]:
    """Switch the phone on, lift the handset, and wait for the greeting to end."""
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    return task


async def collect(stream: AsyncIterator[str], into: list[str]) -> None:
    async for piece in stream:
        into.append(piece)


PATIENT = FAST.model_copy(update={"idle_prompt_s": 30})  # no "are you still there?" mid-test


def scripted_rig(
    transcriber: ScriptedTranscriber,
    backend: ScriptedBackend | None = None,
    settings: CallSettings = PATIENT,
) -> Rig:
    """The rig with scripted speech stages and a real-time (4x) earpiece."""
    stages = PhoneStages(
        transcriber, backend or ScriptedBackend(), ToneSynthesizer(), EnergyEndpointer
    )
    return build_rig(stages, CallOptions(settings), sink_speed=4.0)


async def held_turn(transcriber: RecordingTranscriber) -> tuple[Rig, asyncio.Task[None]]:
    """A call whose first turn is thinking when the caller starts again: the turn is held."""
    rig = scripted_rig(transcriber)
    task = await on_the_line(rig)
    await speak(rig, 0.4)
    await rig.wait_state(CallState.THINKING)
    rig.calls[0].post(SpeechStarted(time.monotonic()))  # the VAD heard the caller start again
    await rig.wait_state(CallState.LISTENING)
    return rig, task


async def speak_paced(rig: Rig, seconds: float) -> None:
    """A loud burst into the mic at the pace a caller speaks it (30 ms frames)."""
    burst = speech_burst(seconds)
    for start in range(0, len(burst), 480):
        rig.mic.push(burst[start : start + 480])
        await asyncio.sleep(0.03)


def dominant_hz(pcm: Pcm, rate: int = 22050) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(float)))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


async def test_a_reply_with_nothing_speakable_is_a_failed_turn_with_the_apology() -> None:
    settings = FAST.model_copy(update={"filler_after_s": 0.3})
    backend = ScriptedBackend(reply="*smiles*", token_delay_s=0.01)
    rig, _, _, synth = make_rig(["hello"], backend=backend, settings=settings)
    task = await on_the_line(rig)
    await speak(rig)
    await rig.wait_state(CallState.THINKING)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    await asyncio.sleep(0.5)  # past the filler's due time: it must not play after the reply
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.fallback and turn.cause == "nothing_speakable"
    assert call.persona.apology in synth.spoken
    assert not any(filler in synth.spoken for filler in call.persona.fillers)
    assert call.conversation.turns == []  # no *smiles*
    await switch_off(rig, task)


class FirstAudioWatcher(ToneSynthesizer):
    """Notes, for each chunk as its synthesis starts, whether the reply's first words are marked
    as rendering (the mark the persona model waits on)."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[tuple[str, bool]] = []

    async def synthesize(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]:
        self.marked.append((text, busy(FIRST_AUDIO)))
        async for pcm in super().synthesize(text, voice):
            yield pcm


async def test_only_a_replys_first_words_hold_the_model_back() -> None:
    transcriber = ScriptedTranscriber(deque(["hello"]))
    synth = FirstAudioWatcher()
    stages = PhoneStages(transcriber, ScriptedBackend(), synth, EnergyEndpointer)
    rig = build_rig(stages, CallOptions(PATIENT), sink_speed=4.0)
    task = await on_the_line(rig)
    greeting = len(synth.marked)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    reply = synth.marked[greeting:]
    assert len(reply) >= 2, reply  # the scripted reply is three sentences
    assert reply[0][1] and not any(marked for _, marked in reply[1:])
    assert not busy(FIRST_AUDIO)  # released once the first words were rendered
    await switch_off(rig, task)


async def test_after_a_cut_reply_the_model_reads_the_history_as_the_caller_heard_it() -> None:
    long_reply = " ".join(["Well now, let me see about that for you, caller."] * 8)
    backend = ScriptedBackend(reply=long_reply, token_delay_s=0.005)  # plays for seconds
    rig, *_ = make_rig(["Hello there", "And another thing"], backend=backend, settings=PATIENT)
    task = await on_the_line(rig)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    rig.keypad.press("#")
    await rig.wait_state(CallState.LISTENING, timeout=5)
    await asyncio.sleep(0.1)
    call = rig.calls[0]
    [history] = backend.read
    assert history == call.conversation.messages()
    assert history[-2] == {"role": "user", "content": "Hello there"}
    assert history[-1]["role"] == "assistant" and INTERRUPTED_MARKER in history[-1]["content"]
    await speak(rig)  # the next turn's request begins with exactly what was read ahead
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    request = backend.requests[-1]
    assert request[: len(history)] == history
    assert request[len(history)] == {"role": "user", "content": "And another thing"}
    assert len(backend.read) == 1  # nothing new to read while the turn ran
    await switch_off(rig, task)


async def test_a_reply_the_guard_ends_goes_into_the_history_as_the_caller_heard_it() -> None:
    backend = ScriptedBackend(reply="Well hello there, caller. Oh shit, I forgot it.")
    speakable = make_speakable(GuardConfig(blocklist=("shit*",)))
    stages = PhoneStages(
        ScriptedTranscriber(deque(["Hello"])),
        backend,
        ToneSynthesizer(),
        EnergyEndpointer,
        speakable=speakable,
    )
    rig = build_rig(stages, CallOptions(PATIENT), sink_speed=4.0)
    task = await on_the_line(rig)
    await speak(rig)
    await rig.wait_state(CallState.THINKING)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert "shit" not in turn.reply and turn.reply.endswith(BLOCKED_LINE)
    assert call.conversation.turns[-1] == {"role": "assistant", "content": turn.reply}
    await switch_off(rig, task)


async def test_the_service_goodbye_plays_alone_and_ends_when_it_is_done() -> None:
    rig, _, _, synth = make_rig()
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    await asyncio.sleep(0.1)
    before = len(rig.sink.heard)
    started = time.monotonic()
    await rig.phone.shut_down(goodbye_s=3.0)
    took = time.monotonic() - started
    goodbye = rig.calls[0].persona.goodbye
    assert synth.spoken[-1] == goodbye
    assert took < 2.0  # drained: not cut at the grace limit
    after = np.concatenate([b.pcm for b in rig.sink.heard[before + 2 :]])
    assert abs(dominant_hz(after) - 300) < 5  # the goodbye's tone only, no dial tone mixed in
    assert rig.phone.call is None
    await switch_off(rig, task)


async def test_a_persona_switch_cut_at_once_still_changes_prompt_and_history() -> None:
    rig, *_ = make_rig()
    task = await on_the_line(rig)
    rig.keypad.press("2")
    rig.keypad.press("#")  # in the same loop tick: cancels the ringback before it ran
    await asyncio.sleep(0.3)
    call = rig.calls[0]
    assert call.persona.id == "grandma_mae"
    grandma = call.persona
    expected = choose_system_prompt("full", grandma.prompt_tag, grandma.prompt)
    assert call.conversation.system_prompt == expected
    await switch_off(rig, task)


async def test_a_key_during_the_max_call_goodbye_keeps_the_call_length_cap() -> None:
    settings = FAST.model_copy(update={"max_call_s": 0.4, "idle_prompt_s": 30})
    rig, *_ = make_rig(settings=settings)
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.GOODBYE, timeout=5)
    rig.keypad.press("1")  # the caller tries to go on
    await rig.wait_state(CallState.HOWLER, timeout=5)
    assert rig.calls[0].persona.id == "operator"
    await asyncio.sleep(0.2)
    assert rig.calls[0].state is CallState.HOWLER
    await switch_off(rig, task)


async def test_only_the_last_of_quick_persona_switches_is_warmed_up() -> None:
    backend = ScriptedBackend(token_delay_s=0.3)  # each warm-up takes 0.3 s
    rig, *_ = make_rig(backend=backend)
    task = await on_the_line(rig)
    for key in "1230":
        rig.keypad.press(key)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.6)
    operator = rig.calls[0].persona
    assert operator.id == "operator"
    primed = choose_system_prompt("full", operator.prompt_tag, operator.prompt)
    # at pick-up (unless the first switch cancelled it), then the last switch only
    assert backend.warmed in ([primed], [primed, primed])
    assert backend.warmed_examples[-1] == rig.calls[0].conversation.examples
    assert len(backend.warmed_examples[-1]) == 2 * len(operator.examples) > 0
    await switch_off(rig, task)


class RecordingTranscriber(ScriptedTranscriber):
    """Remembers how much audio each utterance it was given held."""

    def __init__(self, texts: list[str], delay_s: float) -> None:
        super().__init__(deque(texts), delay_s)
        self.lengths: list[int] = []

    async def transcribe(self, pcm: Pcm) -> Transcript:
        self.lengths.append(len(pcm))
        return await super().transcribe(pcm)


async def test_speech_while_thinking_joins_the_turn_it_belongs_to() -> None:
    transcriber = RecordingTranscriber(["I was wondering if you could help"], delay_s=0.4)
    rig = scripted_rig(transcriber, settings=FAST)  # no barge-in needed
    task = await on_the_line(rig)
    await speak(rig, 0.4)
    await rig.wait_state(CallState.THINKING)
    await asyncio.sleep(0.05)
    await speak(rig, 0.4)  # the caller goes on before any answer
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    call = rig.calls[0]
    assert len(transcriber.lengths) == 2
    assert transcriber.lengths[1] >= 2 * transcriber.lengths[0]  # both parts, one turn
    users = [m for m in call.conversation.turns if m["role"] == "user"]
    assert [m["content"] for m in users] == ["I was wondering if you could help"]
    await switch_off(rig, task)


class StallingBackend(ScriptedBackend):
    """Never answers (a model lock held by a previous call's prompt evaluation)."""

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        await asyncio.sleep(3600)
        yield ""


async def test_deadlines_turn_a_stalled_model_into_an_error_in_time() -> None:
    stalled = Deadlines(StallingBackend(), first_token_s=0.2, token_s=0.1)
    started = time.monotonic()
    with pytest.raises(LlmError, match="stall_first_token"):
        async for _ in stalled.stream([], ChatOptions()):
            pass
    assert time.monotonic() - started < 1.0
    mid = Deadlines(ScriptedBackend(stall_s=3600, fail_after_tokens=2), 0.5, token_s=0.1)
    pieces = []
    with pytest.raises(LlmError, match="stall_mid_stream"):
        await collect(mid.stream([], ChatOptions()), pieces)
    assert len(pieces) == 2


async def test_a_hanging_model_host_does_not_hold_the_start() -> None:
    probed = asyncio.Event()

    async def hanging_probe() -> None:
        probed.set()
        await asyncio.sleep(3600)

    breaker = CircuitBreaker(ScriptedBackend(), hanging_probe)
    started = time.monotonic()
    status = await breaker.start("You are the Operator.", background=True)
    assert time.monotonic() - started < 0.1
    assert status.state is BreakerState.STARTING
    await asyncio.wait_for(probed.wait(), 1)
    with pytest.raises(LlmError, match=CIRCUIT_OPEN):  # callers hear the busy line meanwhile
        async for _ in breaker.stream([], ChatOptions()):
            pass
    await breaker.aclose()


async def test_a_background_start_closes_the_breaker_once_the_host_answers() -> None:
    backend = ScriptedBackend()

    async def probe() -> None:
        await asyncio.sleep(0.05)

    breaker = CircuitBreaker(backend, probe)
    await breaker.start("You are the Operator.", background=True)
    await asyncio.wait_for(breaker.wait_closed(), 2)
    assert backend.warmed == ["You are the Operator."]
    assert [p async for p in breaker.stream([], ChatOptions(num_predict=2))]
    await breaker.aclose()


async def test_a_caller_going_on_holds_the_answer_until_they_finish() -> None:
    said = ["I was wondering", "I was wondering if you could help"]
    transcriber = RecordingTranscriber(said, delay_s=0.05)
    backend = ScriptedBackend(token_delay_s=0.005)
    rig = scripted_rig(transcriber, backend)
    task = await on_the_line(rig)
    await speak_paced(rig, 0.4)  # "I was wondering"
    await rig.wait_state(CallState.THINKING)  # a pause: the turn starts
    async with asyncio.timeout(3):  # heard, and the model asked, before the caller goes on
        while not backend.requests:
            await asyncio.sleep(0.005)
    await speak_paced(rig, 1.5)  # "... if you could help": longer than the answer takes
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=5)
    call = rig.calls[0]
    events = [e["event"] for e in call.log.events]
    assert "turn_held" in events and "speech_ignored" not in events
    # the held half made no sound: it is no turn of its own, and nothing was cut off (the
    # status page counts call.log.turns as turns and their `interrupted` as interruptions)
    [turn] = call.log.turns
    assert turn.reply and not turn.interrupted
    assert transcriber.lengths[-1] >= 1.8 * 16000  # both parts went to the one answer
    await switch_off(rig, task)


async def test_a_cough_after_a_pause_still_gets_the_answer() -> None:
    transcriber = RecordingTranscriber(["what time is it", "what time is it"], delay_s=0.3)
    rig, task = await held_turn(transcriber)
    call = rig.calls[0]
    call.post(SpeechDropped(time.monotonic()))  # what started was only a cough
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    assert [e["event"] for e in call.log.events].count("turn_resumed") == 1
    await switch_off(rig, task)


async def test_a_cough_after_a_pause_answers_from_the_eager_transcript_still_under_way() -> None:
    """The turn awaits Whisper's eager run when the caller seems to go on: holding the turn must
    not cancel that run, or the turn resumed after the cough awaits a cancelled transcript and
    the call stays thinking with the caller's words lost."""
    transcriber = ScriptedTranscriber(deque(["what time is it"]), delay_s=0.4)
    rig = scripted_rig(transcriber)
    task = await on_the_line(rig)
    call = rig.calls[0]
    pcm = speech_burst(0.6)
    eager = asyncio.ensure_future(transcriber.transcribe(pcm))  # Whisper since the pause
    call.post(Heard(pcm, time.monotonic(), transcript=eager))
    await rig.wait_state(CallState.THINKING)
    call.post(SpeechStarted(time.monotonic()))  # the caller seems to go on: held
    await rig.wait_state(CallState.LISTENING)
    call.post(SpeechDropped(time.monotonic()))  # only a cough
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    assert not eager.cancelled() and transcriber.calls == 1  # one Whisper run, used
    assert [t.heard for t in call.log.turns if t.reply] == ["what time is it"]
    await switch_off(rig, task)


@pytest.mark.parametrize(
    ("said", "tentative", "waits"),
    [
        ("My name is", False, True),
        ("Hello?", False, True),  # callers go on: "Hello, who am I speaking with?"
        ("What time is it?", False, False),
        ("I need a taxi.", True, True),
        ("What time is it?", True, False),  # unsure, but Whisper heard a question
        ("My car broke down and I need a taxi.", True, False),  # a complete statement
    ],
)
async def test_an_early_end_works_at_once_but_speaks_at_the_limit_when_unsure(
    said: str, tentative: bool, waits: bool
) -> None:
    """The model cut the turn 0.6 s before the silence limit; the words trail off, or the model
    itself was unsure: the answer is ready early but not heard before the limit (a complete
    statement may be heard from `complete_at`, here 0.3 s)."""
    transcriber = ScriptedTranscriber(deque([said]), delay_s=0.01)
    backend = ScriptedBackend()
    rig = scripted_rig(transcriber, backend)
    task = await on_the_line(rig)  # greeted after the dial tone
    posted = time.monotonic()
    heard = Heard(
        speech_burst(0.5),
        posted,
        limit_at=posted + 0.6,
        tentative=tentative,
        complete_at=posted + 0.3,
    )
    rig.calls[0].post(heard)
    async with asyncio.timeout(3):
        while not backend.requests:
            await asyncio.sleep(0.005)
    asked_after = time.monotonic() - posted
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    spoke_after = time.monotonic() - posted
    assert asked_after < 0.3  # the model was asked at once either way
    assert (spoke_after >= 0.6) is waits
    await switch_off(rig, task)


async def test_a_held_turn_is_not_joined_across_a_persona_switch() -> None:
    transcriber = RecordingTranscriber(["hello", "what time is it"], delay_s=0.3)
    rig, task = await held_turn(transcriber)  # the caller goes on...
    rig.keypad.press("1")  # ...but presses a persona key instead
    await rig.wait_state(CallState.RINGBACK)
    await rig.wait_state(CallState.LISTENING, timeout=5)  # after the new greeting
    await speak(rig, 0.4)
    await rig.wait_state(CallState.SPEAKING, timeout=5)
    assert transcriber.lengths[-1] < 0.6 * 16000  # only the new words, not the held ones
    await switch_off(rig, task)


async def test_a_joined_turn_keeps_the_eager_transcript_only_if_it_heard_the_same_audio() -> None:
    loop = asyncio.get_running_loop()
    eager: asyncio.Future[Transcript] = loop.create_future()
    first = Heard(speech_burst(0.5), 1.0)
    second = Heard(speech_burst(0.3), 2.0, transcript=eager, context=first.pcm)
    one_turn = joined(first, second)
    assert len(one_turn.pcm) == len(first.pcm) + len(second.pcm)
    assert one_turn.transcript is eager  # Whisper already heard both halves
    other = joined(Heard(speech_burst(0.2), 1.0), second)  # not the audio Whisper had
    assert other.transcript is None
    alone = joined(None, second)  # the held turn was answered meanwhile: this part alone
    assert alone.transcript is None and len(alone.pcm) == len(second.pcm)
    assert joined(None, first) is first


async def test_without_an_echo_canceller_the_caller_cannot_talk_over_the_persona() -> None:
    stages = PhoneStages(
        ScriptedTranscriber(deque()),
        ScriptedBackend(),
        ToneSynthesizer(),
        EnergyEndpointer,
        barge_in_blocked="no echo canceller",
    )
    with structlog.testing.capture_logs() as logs:
        rig = build_rig(stages, CallOptions(barge_in=True))
    assert [e["reason"] for e in logs if e["event"] == "barge_in_off"] == ["no echo canceller"]
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    assert rig.calls[0].options.barge_in is False
    await switch_off(rig, task)


class SoundingWatcher(EnergyEndpointer):
    """Notes, frame by frame, the call state and whether the mic was gated and sounding."""

    seen: ClassVar[list[tuple[CallState, bool, bool]]] = []
    rig: ClassVar[Rig | None] = None

    def feed(
        self, pcm: Pcm, playing: bool, words: Pcm | None = None, sounding: bool = False
    ) -> list[MicEvent]:
        if self.rig is not None and self.rig.phone.call is not None:
            self.seen.append((self.rig.phone.call.state, playing, sounding))
        return super().feed(pcm, playing, words, sounding)


async def test_the_dial_tone_sounds_to_the_vad_with_the_mic_open() -> None:
    """Under the dial tone the mic is open (a caller may say "hello?") but the echo canceller
    suppresses the room with the tone: the VAD is told, so its room floor learns nothing."""
    stages = PhoneStages(
        ScriptedTranscriber(deque()), ScriptedBackend(), ToneSynthesizer(), SoundingWatcher
    )
    slow_tone = PATIENT.model_copy(update={"dial_tone_s": 1.0})
    rig = build_rig(stages, CallOptions(slow_tone), sink_speed=4.0)
    SoundingWatcher.rig, SoundingWatcher.seen = rig, []
    task = await on_the_line(rig)
    await asyncio.sleep(0.2)
    await switch_off(rig, task)
    seen = SoundingWatcher.seen
    dial = [(gated, sounding) for state, gated, sounding in seen if state is CallState.DIAL_TONE]
    listening = [sounding for state, _, sounding in seen if state is CallState.LISTENING]
    assert dial and all(not gated for gated, _ in dial)
    assert sum(sounding for _, sounding in dial) >= len(dial) // 2
    assert listening and not listening[-1]
