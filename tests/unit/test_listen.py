"""When the caller has finished: webrtcvad gates the frames, a pause asks the end-of-turn model.

The VAD and Piper's speech are real; the model here is scripted (the real Smart Turn has its own
tests) so each verdict is known: these tests are about what the listener does with a verdict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from payphone.call import listen
from payphone.call.events import Heard, SpeechDropped
from payphone.call.listen import TURN_THREAD, VadListener
from payphone.config import Settings, TurnSettings, load_settings
from payphone.cores import busy, working
from payphone.pcm import Pcm
from payphone.speech.base import Transcriber, Transcript
from tests.speech_fixtures import SAMPLE_RATE, piper, silence

FRAME = 480  # 30 ms
TURN = TurnSettings(pause_ms=180, speculate_ms=500, max_silence_ms=1200, threshold=0.5)


class ScriptedTurnModel:
    """Says the same probability every time (or `first` the first time); can be held until
    released, or fail."""

    def __init__(self, probability: float, fail: bool = False, first: float | None = None) -> None:
        self.probability = probability
        self.first = first
        self.fail = fail
        self.asked: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def predict(self, pcm: Pcm) -> float:
        self.asked.append(len(pcm))
        self.release.wait(5)
        if self.fail:
            raise RuntimeError("model exploded")
        if self.first is not None and len(self.asked) == 1:
            return self.first
        return self.probability


@pytest.fixture(scope="module")
def app_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def speech(app_settings: Settings) -> Pcm:
    return piper(app_settings, "What time does the library open tomorrow morning?")


def last_voiced(pcm: Pcm) -> int:
    return int(np.nonzero(np.abs(pcm) > 500)[0][-1])


def feed(
    listener: VadListener, pcm: Pcm, settle: bool = True, playing: bool = False
) -> list[tuple[int, Heard]]:
    """Frame by frame; with `settle`, each frame waits for the model as real time would."""
    heard: list[tuple[int, Heard]] = []
    for start in range(0, len(pcm) - FRAME + 1, FRAME):
        for event in listener.feed(pcm[start : start + FRAME], playing=playing):
            if isinstance(event, Heard):
                heard.append((start + FRAME, event))
        if settle:
            TURN_THREAD.submit(lambda: None).result()  # the model answered within the frame
    return heard


def silence_ms_at(end_sample: int, speech_end: int) -> float:
    return (end_sample - speech_end) * 1000 / SAMPLE_RATE


def test_a_finished_sentence_ends_at_the_first_look(app_settings: Settings, speech: Pcm) -> None:
    model = ScriptedTurnModel(0.9)
    clip = np.concatenate([silence(0.5), speech, silence(2.0)])
    [(at, heard)] = feed(VadListener(app_settings.vad, TURN, model), clip)
    waited = silence_ms_at(at, last_voiced(clip))
    assert waited < 300  # first_check_ms + the VAD's end stamping, not the 600 ms silence rule
    assert not heard.tentative
    assert len(model.asked) == 1
    assert len(heard.pcm) >= len(speech) * 0.9
    one_look = TURN.model_copy(update={"first_check_ms": TURN.pause_ms})
    [(later, _)] = feed(VadListener(app_settings.vad, one_look, ScriptedTurnModel(0.9)), clip)
    gained = silence_ms_at(later, at)
    assert gained >= TURN.pause_ms - TURN.first_check_ms - 30  # within a frame


async def test_a_verdict_between_frames_wakes_the_call_and_ends_the_turn_at_once(
    app_settings: Settings, speech: Pcm
) -> None:
    """No need to wait for the next mic frame: the verdict's thread wakes the loop, and `poll`
    cuts the utterance then; before the verdict, `poll` changes nothing."""
    model = ScriptedTurnModel(0.9)
    model.release.clear()  # the verdict comes when the test says
    listener = VadListener(app_settings.vad, TURN, model)
    woken = asyncio.Event()
    listener.watch(woken.set)
    clip = np.concatenate([silence(0.5), speech, silence(0.3)])
    assert feed(listener, clip, settle=False) == []
    for _ in range(200):
        if model.asked:
            break
        await asyncio.sleep(0.01)
    assert len(model.asked) == 1 and listener.poll(playing=False) == [] and not woken.is_set()
    model.release.set()
    await asyncio.wait_for(woken.wait(), 2.0)
    [heard] = listener.poll(playing=False)  # no frame came in between
    assert isinstance(heard, Heard) and not heard.tentative
    assert len(heard.pcm) >= len(speech) * 0.9
    assert listener.poll(playing=False) == []  # the turn has ended: nothing more to cut


async def test_a_verdict_between_frames_hears_nothing_once_our_voice_plays(
    app_settings: Settings, speech: Pcm
) -> None:
    """The persona started speaking between the last frame and the verdict: the mic is gated
    (no barge-in without an echo canceller), so `poll` drops the words as `feed` would."""
    model = ScriptedTurnModel(0.9)
    model.release.clear()
    listener = VadListener(app_settings.vad, TURN, model)
    woken = asyncio.Event()
    listener.watch(woken.set)
    assert feed(listener, np.concatenate([silence(0.5), speech, silence(0.3)]), settle=False) == []
    model.release.set()
    await asyncio.wait_for(woken.wait(), 2.0)
    events = listener.poll(playing=True)
    assert not [e for e in events if isinstance(e, Heard)]
    assert [e for e in events if isinstance(e, SpeechDropped)]  # counted, not lost silently


def test_an_unsure_first_look_asks_again_at_the_pause(app_settings: Settings, speech: Pcm) -> None:
    """At 90 ms of silence the model was unsure; with 180 ms it hears a finished sentence."""
    model = ScriptedTurnModel(0.9, first=0.3)
    clip = np.concatenate([silence(0.5), speech, silence(2.0)])
    [(at, heard)] = feed(VadListener(app_settings.vad, TURN, model), clip)
    waited = silence_ms_at(at, last_voiced(clip))
    assert TURN.pause_ms <= waited < TURN.speculate_ms
    assert not heard.tentative
    assert len(model.asked) == 2 and model.asked[1] > model.asked[0]  # the longer pause


def test_one_look_when_the_first_is_set_at_the_pause(app_settings: Settings, speech: Pcm) -> None:
    one_look = TURN.model_copy(update={"first_check_ms": TURN.pause_ms})
    model = ScriptedTurnModel(0.9)
    clip = np.concatenate([silence(0.5), speech, silence(2.0)])
    [(at, _)] = feed(VadListener(app_settings.vad, one_look, model), clip)
    assert TURN.pause_ms <= silence_ms_at(at, last_voiced(clip)) < TURN.speculate_ms
    assert len(model.asked) == 1


def test_an_unfinished_sounding_sentence_starts_silently_and_speaks_at_the_limit(
    app_settings: Settings, speech: Pcm
) -> None:
    model = ScriptedTurnModel(0.1)
    clip = np.concatenate([silence(0.5), speech, silence(2.0)])
    before = time.monotonic()
    [(at, heard)] = feed(VadListener(app_settings.vad, TURN, model), clip)
    waited = silence_ms_at(at, last_voiced(clip))
    assert TURN.speculate_ms <= waited < TURN.max_silence_ms  # the work starts early...
    assert heard.tentative
    assert heard.complete_at == pytest.approx(heard.speech_end + TURN.complete_ms / 1000)
    left = TURN.max_silence_ms - TURN.speculate_ms
    assert heard.limit_at - before >= left / 1000 * 0.9  # ...to be heard at the limit


def test_a_verdict_on_a_pause_the_caller_spoke_through_is_ignored(
    app_settings: Settings, speech: Pcm
) -> None:
    model = ScriptedTurnModel(0.9)
    model.release.clear()  # the model is slow: the caller goes on before it answers
    listener = VadListener(app_settings.vad, TURN, model)
    first = feed(listener, np.concatenate([silence(0.5), speech, silence(0.3)]), settle=False)
    for _ in range(200):  # the check is under way in the model's thread
        if model.asked:
            break
        time.sleep(0.01)
    assert first == [] and len(model.asked) == 1
    rest = np.concatenate([speech[: FRAME * 20], silence(0.0)])
    during = feed(listener, rest[: FRAME * 4], settle=False)  # speaking again
    model.release.set()
    TURN_THREAD.submit(lambda: None).result()
    after = feed(listener, np.concatenate([rest[FRAME * 4 :], silence(2.0)]))
    assert during == []
    [(_, heard)] = after  # one utterance: both parts, ended by a later pause
    assert len(heard.pcm) > len(speech)


def test_a_failing_model_leaves_the_silence_limit_in_charge(
    app_settings: Settings, speech: Pcm
) -> None:
    model = ScriptedTurnModel(0.9, fail=True)
    clip = np.concatenate([silence(0.5), speech, silence(2.0)])
    [(at, _)] = feed(VadListener(app_settings.vad, TURN, model), clip)
    assert silence_ms_at(at, last_voiced(clip)) >= TURN.max_silence_ms


def test_without_a_model_the_silence_rule_decides(app_settings: Settings, speech: Pcm) -> None:
    clip = np.concatenate([silence(0.5), speech, silence(2.0)])
    [(at, _)] = feed(VadListener(app_settings.vad, TURN, None), clip)
    waited = silence_ms_at(at, last_voiced(clip))
    assert app_settings.vad.hangover_ms <= waited < TURN.max_silence_ms


class CountingTranscriber(Transcriber):
    """Whisper's contract, scripted: remembers the audio it was given."""

    def __init__(self) -> None:
        self.given: list[int] = []

    async def transcribe(self, pcm: Pcm) -> Transcript:
        self.given.append(len(pcm))
        return Transcript(text="What time does the library open?", duration_s=len(pcm) / 16000)


async def test_whisper_starts_at_the_pause_and_the_turn_gets_its_transcript(
    app_settings: Settings, speech: Pcm
) -> None:
    whisper = CountingTranscriber()
    listener = VadListener(app_settings.vad, TURN, ScriptedTurnModel(0.9), whisper)
    clip = np.concatenate([silence(0.5), speech, silence(1.0)])
    [(_, heard)] = feed(listener, clip)
    assert heard.transcript is not None
    transcript = await heard.transcript
    assert transcript.text.startswith("What time")
    assert whisper.given == [whisper.given[0]]  # once, at the pause, on the audio so far
    assert abs(whisper.given[0] - len(heard.pcm)) < 0.25 * SAMPLE_RATE


async def test_whisper_starts_before_the_verdict_is_asked(
    app_settings: Settings, speech: Pcm
) -> None:
    """Silence starts Whisper (`turn.transcribe_ms`) before the model is asked (here once, at
    `turn.pause_ms`) on the same utterance, and the cut hands on the transcript begun earlier."""
    whisper = CountingTranscriber()
    model = ScriptedTurnModel(0.9)
    one_look = TURN.model_copy(update={"first_check_ms": TURN.pause_ms})
    listener = VadListener(app_settings.vad, one_look, model, whisper)
    assert TURN.transcribe_ms < TURN.pause_ms
    clip = np.concatenate([silence(0.5), speech])
    feed(listener, np.concatenate([clip, silence(0.15)]))  # 150 ms: Whisper due, the look not
    await asyncio.sleep(0)
    assert len(whisper.given) == 1 and model.asked == []
    [(_, heard)] = feed(listener, silence(0.3))
    assert len(model.asked) == 1 and model.asked[0] > whisper.given[0]  # with its pause
    assert len(whisper.given) == 1  # nothing transcribed twice
    assert heard.transcript is not None
    assert (await heard.transcript).text.startswith("What time")


async def test_whisper_waits_for_the_first_check(app_settings: Settings, speech: Pcm) -> None:
    """The first look and Whisper both due at 90 ms of silence: on two cores each slowed the
    other two- to threefold, so Whisper starts once the check has answered."""
    whisper = CountingTranscriber()
    model = ScriptedTurnModel(0.9)
    model.release.clear()  # the check is still running
    together = TURN.model_copy(update={"transcribe_ms": TURN.first_check_ms})
    listener = VadListener(app_settings.vad, together, model, whisper)
    feed(listener, np.concatenate([silence(0.5), speech, silence(0.15)]), settle=False)
    for _ in range(200):  # the check is under way in the model's thread
        if model.asked:
            break
        await asyncio.sleep(0.01)
    assert len(model.asked) == 1 and whisper.given == []
    model.release.set()
    TURN_THREAD.submit(lambda: None).result()
    [(_, heard)] = feed(listener, silence(0.03))
    assert heard.transcript is not None
    await heard.transcript
    assert len(whisper.given) == 1


class HeldTranscriber(CountingTranscriber):
    """Whisper's contract, decoding (`working("stt")`, as the real one) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def transcribe(self, pcm: Pcm) -> Transcript:
        self.given.append(len(pcm))
        return await asyncio.to_thread(self._decode, len(pcm))

    def _decode(self, samples: int) -> Transcript:
        with working("stt"):
            self.release.wait(5)
        return Transcript(text="What time does the library open?", duration_s=samples / 16000)


async def into_the_pause_until(listener: VadListener, done: Callable[[], bool]) -> int:
    """Silent frames, one at a time, until `done` (within 10 s of them); returns the frames
    fed."""
    for frames in range(334):
        if done():
            return frames
        feed(listener, silence(0.03), settle=False)
        await asyncio.sleep(0)
    raise AssertionError("not done after 10 s of silence")


async def test_by_default_whisper_starts_first_and_the_look_waits_for_it_on_the_loop(
    app_settings: Settings, speech: Pcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whisper needs no silence to judge, the model does: Whisper starts at 30 ms of it, and
    the first look (due at 90 ms) is asked once that decode is done, on the words with all the
    silence there is by then. Asked at 90 ms and run after the decode, it judged a 90 ms pause
    that was over, and unsure, a second look (another 30-40 ms) followed at once."""
    assert TURN.transcribe_ms < TURN.first_check_ms
    monkeypatch.setattr(listen, "STT_WAIT_S", 5.0)  # however slow the machine, it waits
    whisper = HeldTranscriber()
    model = ScriptedTurnModel(0.9)
    listener = VadListener(app_settings.vad, TURN, model, whisper)
    heard: list[Heard] = []
    listener.watch(lambda: heard.extend(e for e in listener.poll(False) if isinstance(e, Heard)))
    try:
        feed(listener, np.concatenate([silence(0.5), speech]), settle=False)
        await into_the_pause_until(listener, lambda: bool(whisper.given))  # Whisper first
        held = await into_the_pause_until(listener, lambda: busy("stt"))  # it is decoding
        for _ in range(8 - held):  # past pause_ms
            feed(listener, silence(0.03), settle=False)
        held = max(held, 8)
        assert listener._check is not None and listener._check.verdict is None
        assert model.asked == []  # due, and waiting on the loop for the decode
    finally:
        whisper.release.set()
    for _ in range(500):  # the decode's end wakes the listener; the look's end wakes it again
        if heard:
            break
        await asyncio.sleep(0.01)
    [turn] = heard  # ended between frames, no frame fed since the decode
    assert len(model.asked) == 1  # one look
    assert model.asked[0] - whisper.given[0] >= FRAME * (held - 2)  # with the silence since
    assert turn.transcript is not None
    assert (await turn.transcript).text.startswith("What time")
    assert len(whisper.given) == 1  # nothing transcribed twice


async def test_a_look_waits_for_whisper_no_longer_than_stt_wait(
    app_settings: Settings, speech: Pcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode that takes too long (a long utterance on a busy machine) does not hold the
    turn: after `STT_WAIT_S` past its time the look is asked anyway, and runs at once: it does
    not wait for the same decode a second time in its thread."""
    monkeypatch.setattr(listen, "STT_WAIT_S", 0.2)
    whisper = HeldTranscriber()
    model = ScriptedTurnModel(0.9)
    listener = VadListener(app_settings.vad, TURN, model, whisper)
    try:
        feed(listener, np.concatenate([silence(0.5), speech]), settle=False)
        await into_the_pause_until(listener, lambda: bool(whisper.given))
        await into_the_pause_until(
            listener, lambda: listener._check is None or listener._check.verdict is not None
        )
        assert listener._vad.pause_ms >= TURN.first_check_ms + 200
        assert listener._vad.pause_ms <= TURN.first_check_ms + 200 + 30
        assert listener._check is not None and listener._check.verdict is not None
        verdict = listener._check.verdict.result(timeout=5)
        assert not whisper.release.is_set()  # still decoding
        assert verdict.waited_ms < 100  # not another STT_WAIT_S
    finally:
        whisper.release.set()


async def test_the_eager_transcript_is_dropped_when_the_caller_goes_on(
    app_settings: Settings, speech: Pcm
) -> None:
    whisper = CountingTranscriber()
    model = ScriptedTurnModel(0.1)  # "not finished"
    listener = VadListener(app_settings.vad, TURN, model, whisper)
    feed(listener, np.concatenate([silence(0.5), speech, silence(0.3)]))
    check = listener._check
    assert check is not None and check.transcript is not None
    eager = check.transcript
    [(_, heard)] = feed(listener, np.concatenate([speech, silence(2.0)]))  # the caller goes on
    await asyncio.sleep(0)
    assert eager.cancelled() and heard.transcript is not eager
    assert len(heard.pcm) > 1.5 * len(speech)  # one utterance, both parts


async def test_words_after_a_silent_start_are_judged_with_the_held_words_before_them(
    app_settings: Settings, speech: Pcm
) -> None:
    """The second half ("... if you could help me") alone sounds like a fragment;
    the verdict and Whisper get both halves, as the call will join them."""
    whisper = CountingTranscriber()
    model = ScriptedTurnModel(0.1)  # "not finished": each pause starts the turn silently
    listener = VadListener(app_settings.vad, TURN, model, whisper)
    [(_, first)] = feed(listener, np.concatenate([silence(0.5), speech, silence(0.6)]))
    assert len(first.context) == 0
    [(_, second)] = feed(listener, np.concatenate([speech, silence(0.6)]))
    assert np.array_equal(second.context, first.pcm)  # what the call will join it to
    assert model.asked[-1] >= len(first.pcm) + len(speech)  # the verdict heard both halves
    assert second.transcript is not None
    await second.transcript
    assert whisper.given[-1] >= len(first.pcm) + len(speech)  # so did Whisper


async def test_words_after_the_held_turns_limit_start_afresh(
    app_settings: Settings, speech: Pcm
) -> None:
    model = ScriptedTurnModel(0.1)
    listener = VadListener(app_settings.vad, TURN, model)
    feed(listener, np.concatenate([silence(0.5), speech, silence(0.6)]))
    held = listener._held
    assert held is not None
    listener._held = dataclasses.replace(held, limit_at=time.monotonic() - 60)  # long answered
    [(_, later)] = feed(listener, np.concatenate([speech, silence(0.6)]))
    assert len(later.context) == 0
    assert model.asked[-1] < len(held.pcm) + len(speech)


async def test_words_after_the_persona_answered_start_afresh(
    app_settings: Settings, speech: Pcm
) -> None:
    """The held turn was answered (the earpiece played): the caller's next words are a new turn,
    judged and transcribed on their own."""
    whisper = CountingTranscriber()
    model = ScriptedTurnModel(0.9)
    listener = VadListener(app_settings.vad, TURN, model, whisper)
    [(_, first)] = feed(listener, np.concatenate([silence(0.5), speech, silence(0.3)]))
    listener.feed(silence(0.03), playing=True)  # the answer sounds
    [(_, second)] = feed(listener, np.concatenate([speech, silence(0.6)]))
    assert len(second.context) == 0
    assert model.asked[-1] < len(first.pcm) + len(speech)


async def test_an_answer_cut_before_a_mic_frame_saw_it_still_ends_the_held_words(
    app_settings: Settings, speech: Pcm
) -> None:
    """`#` cut the answer within a frame: the gate never saw it play, but the call says it was
    heard, so the caller's next line is judged and transcribed on its own."""
    whisper = CountingTranscriber()
    model = ScriptedTurnModel(0.9)
    listener = VadListener(app_settings.vad, TURN, model, whisper)
    [(_, first)] = feed(listener, np.concatenate([silence(0.5), speech, silence(0.3)]))
    listener.answered()
    [(_, second)] = feed(listener, np.concatenate([speech, silence(0.6)]))
    assert len(second.context) == 0
    assert model.asked[-1] < len(first.pcm) + len(speech)


def clipped_word(app_settings: Settings) -> Pcm:
    """What the echo canceller lets through of a "Stop," over our voice: ~150 ms of voice,
    enough to start an utterance, less than `vad.min_utterance_ms` (a blip)."""
    word = piper(app_settings, "Stop.")
    first = int(np.nonzero(np.abs(word) > 500)[0][0]) // FRAME * FRAME
    return word[first : first + 5 * FRAME]


def contains(pcm: Pcm, part: Pcm) -> bool:
    """Whether the frame-aligned `part` appears unchanged in `pcm`."""
    return any(
        np.array_equal(pcm[i : i + len(part)], part)
        for i in range(0, len(pcm) - len(part) + 1, FRAME)
    )


@pytest.mark.parametrize(
    ("during", "after", "carried"),
    [(True, True, True), (True, False, True), (False, False, False), (False, True, False)],
)
async def test_a_blip_over_our_voice_goes_in_front_of_the_callers_next_words(
    app_settings: Settings, speech: Pcm, during: bool, after: bool, carried: bool
) -> None:
    """ "Stop, what time does the library open": the canceller leaves a blip of "Stop," and the
    VAD drops it; the caller goes on, and Whisper must hear the whole line, even when the
    persona's reply ended before the blip was dropped. With the mic open while it was said (no
    echo), a blip is a cough or a knock and is forgotten, whatever plays by the time it is
    dropped."""
    vad = app_settings.vad.model_copy(update={"barge_in": True})
    listener = VadListener(vad, TURN, ScriptedTurnModel(0.9), echo_cancelled=True)
    blip = clipped_word(app_settings)
    clip = np.concatenate([silence(0.3), blip, silence(0.6)])
    switch = int(0.3 * SAMPLE_RATE) + len(blip) + 3 * FRAME  # in the pause after it
    dropped = 0
    for at in range(0, len(clip), FRAME):
        events = listener.feed(clip[at : at + FRAME], during if at < switch else after)
        dropped += sum(isinstance(event, SpeechDropped) for event in events)
        TURN_THREAD.submit(lambda: None).result()
    assert dropped == 1  # the VAD took it for a blip
    [(_, heard)] = feed(listener, np.concatenate([speech, silence(1.0)]), playing=after)
    voiced = blip[2 * FRAME : 4 * FRAME]
    assert contains(heard.pcm, voiced) is carried
    assert contains(heard.pcm, speech[len(speech) // 2 // FRAME * FRAME :][:FRAME])


def test_without_an_echo_canceller_the_mic_stays_closed_while_the_persona_plays(
    app_settings: Settings, speech: Pcm
) -> None:
    """vad.barge_in is on by default, but talking over the persona needs its voice out of the
    mic: without a canceller whatever the mic hears while it plays is its own echo."""
    vad = app_settings.vad.model_copy(update={"barge_in": True})
    clip = np.concatenate([silence(0.3), speech, silence(1.5)])
    closed = VadListener(vad, TURN, ScriptedTurnModel(0.9))
    assert feed(closed, clip, playing=True) == []
    cancelled = VadListener(vad, TURN, ScriptedTurnModel(0.9), echo_cancelled=True)
    assert len(feed(cancelled, clip, playing=True)) == 1


def test_the_turn_carries_the_words_audio(app_settings: Settings, speech: Pcm) -> None:
    """The VAD decides on the frame it is fed (AEC3's), Whisper hears `words` (the linear
    filter's): here the words are the same speech at half level."""
    clip = np.concatenate([silence(0.3), speech, silence(1.5)])
    words = (clip // 2).astype(np.int16)
    listener = VadListener(app_settings.vad, TURN, ScriptedTurnModel(0.9))
    heard = []
    for start in range(0, len(clip) - FRAME + 1, FRAME):
        span = slice(start, start + FRAME)
        heard += [e for e in listener.feed(clip[span], False, words[span]) if isinstance(e, Heard)]
        TURN_THREAD.submit(lambda: None).result()
    [turn] = heard
    middle = turn.pcm[len(turn.pcm) // 2 // FRAME * FRAME :][:FRAME]
    assert contains(words, middle) and not contains(clip, middle)


async def test_a_verdict_after_the_hang_up_starts_nothing(
    app_settings: Settings, speech: Pcm
) -> None:
    """The caller pauses, the check is still running, they hang up: when the verdict comes
    back it wakes a call that has ended, and no Whisper run starts for it (Whisper set to start
    after the first look, as it would without `turn.transcribe_ms` below it)."""
    from collections import deque

    from payphone.call.assembly import PhoneStages
    from payphone.call.events import CallState
    from payphone.call.options import CallOptions
    from payphone.config import CallSettings
    from payphone.sim.rig import build_rig
    from payphone.sim.stand_ins import ScriptedBackend, ScriptedTranscriber, ToneSynthesizer

    model = ScriptedTurnModel(0.9)
    model.release.clear()
    whisper = CountingTranscriber()
    after_the_look = TURN.model_copy(update={"transcribe_ms": TURN.first_check_ms})
    stages = PhoneStages(
        ScriptedTranscriber(deque()),
        ScriptedBackend(),
        ToneSynthesizer(),
        lambda: VadListener(app_settings.vad, after_the_look, model, whisper),
    )
    quick = CallSettings(dial_tone_s=0.3, idle_prompt_s=30, max_call_s=60)
    rig = build_rig(stages, CallOptions(quick), sink_speed=4.0)
    task = await rig.start()
    try:
        rig.lift()
        await rig.wait_state(CallState.LISTENING, timeout=10)  # after the greeting
        rig.mic.push(np.concatenate([speech, silence(0.3)]))
        for _ in range(300):  # the pause reached the first look: the check is held
            if model.asked:
                break
            await asyncio.sleep(0.01)
        assert model.asked
        rig.replace()
        for _ in range(300):
            if rig.phone.call is None:
                break
            await asyncio.sleep(0.01)
        model.release.set()
        TURN_THREAD.submit(lambda: None).result()  # the verdict is back
        await asyncio.sleep(0.2)  # its wake-up has run on the loop
        assert whisper.given == []
    finally:
        model.release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.sink.aclose()
        rig.hook.close()
