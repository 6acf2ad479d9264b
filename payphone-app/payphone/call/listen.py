"""The production endpointer for the call loop: when has the caller finished?

webrtcvad is the frame gate. A fixed silence timer alone is the wrong tool both ways: 600 ms
cuts callers who pause to think, and it makes every answer wait 600 ms. So with an end-of-turn
model (Smart Turn v3, `turn.model`) a short pause asks the model, in a worker thread, whether
the utterance so far sounds finished; if it does, and the caller has not spoken again meanwhile,
the turn ends at once. It looks first at `turn.first_check_ms` of silence (a finished sentence
ends there) and, unsure, again at `turn.pause_ms` (a sentence sounds more finished the longer
the silence after it; a fragment at 90 ms sounds less finished than at 180). Whisper starts at
`turn.transcribe_ms` (30 ms), in the silence before the first look, which waits for it: the
turn needs both, one after the other on two cores, and Whisper need not wait for the silence
the model needs to judge. The look is asked once the decode is done, on all the silence there
is by then (often `turn.pause_ms`: then it is the second look too). Otherwise the turn ends
after `turn.max_silence_ms` of silence, whatever the model said: after `turn.speculate_ms` of
silence the turn starts anyway, silently (transcript, model, first sentence), and speaks only at
that limit unless the caller goes on. Without a model the silence rule (`vad.hangover_ms`) decides.

A caller who goes on after such a silent start ("I was wondering ... if you could help me")
makes a new utterance, and the call joins it to the held one. The model and Whisper must hear
that whole sentence too, not only its second half, which on its own sounds like a fragment: the
listener keeps the audio of a turn that started silently until its limit has passed and gives it
as `context` to the next utterance (verdict and eager transcript are on context + utterance).

Over the persona's voice a caller's first word ("Stop, I need a taxi") can come through the echo
canceller as a few voiced frames, less than `vad.min_utterance_ms`: the VAD drops it as a blip.
If the caller speaks again within `BLIP_CARRY_S`, that blip goes in front of their next words, so
Whisper hears "Stop, I need a taxi", not "I need a taxi". The blip alone never makes a turn.

`feed` stays synchronous and cheap on the event loop. The model's answer comes back from its
thread between two mic frames: the listener wakes the call (`watch`), which asks `poll` at once,
so a finished turn starts (and Whisper on it) up to a frame (30 ms) sooner than the next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from payphone.call.events import (
    HEARD_RATE,
    Heard,
    MicEvent,
    SpeechDropped,
    SpeechStarted,
    SpeechSustained,
)
from payphone.config import TurnSettings, VadSettings
from payphone.cores import busy, wait_idle, working
from payphone.log import get_logger, ms
from payphone.pcm import Pcm
from payphone.speech.base import Transcriber, Transcript
from payphone.speech.vad import VadEndpointer

log = get_logger("listen")

# one end-of-turn check at a time, beside the loop (the model holds the CPU for 10-60 ms)
TURN_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turn-model")
# a check waits at most this long for a Whisper decode to finish (a long utterance's takes
# ~0.2 s here); then it runs beside it
STT_WAIT_S = 0.3
# a blip over our voice joins the caller's next words when they start within this (the pause
# after "Stop," or "Hang on," in the bench's voices is 0.2-0.6 s)
BLIP_CARRY_S = 1.0
_EMPTY = np.zeros(0, dtype=np.int16)


class Endpointer(Protocol):
    """Cuts mic frames into utterances; `playing`: our own voice is in the earpiece."""

    def feed(
        self, pcm: Pcm, playing: bool, words: Pcm | None = None, sounding: bool = False
    ) -> list[MicEvent]:
        """`pcm` decides whether the caller speaks; `words` (the same span, through another echo
        filter; None: `pcm`) is the audio the utterances carry; `sounding`: the earpiece makes
        some sound of ours with the mic open (the dial tone), so the frame says nothing about
        the room."""
        ...

    def answered(self) -> None:
        """The persona was heard (or a key, a prompt came between): what the caller said before
        is no longer context for their next words."""

    def watch(self, wake: Callable[[], None]) -> None:
        """`wake` is called on the loop when a worker's answer may end the turn between frames:
        then `poll` says what it changed."""

    def poll(self, playing: bool) -> list[MicEvent]:
        """Between frames, after `wake`: the events that answer makes due now (often none);
        `playing` as for `feed`."""
        ...


class TurnModel(Protocol):
    """The probability that the audio so far ends a finished turn (blocking CPU work)."""

    def predict(self, pcm: Pcm) -> float: ...


@dataclass(frozen=True)
class Verdict:
    probability: float
    model_ms: float
    waited_ms: float = 0.0  # for Whisper to finish before the model ran


@dataclass
class _Check:
    mark: int  # the utterance's last voiced frame when the pause began
    context: Pcm  # the held turn's audio, before this utterance (empty: none)
    transcript: asyncio.Future[Transcript] | None = None  # Whisper on the speech, eagerly
    # asked at turn.first_check_ms of pause, and again at turn.pause_ms when it was unsure
    verdict: Future[Verdict] | None = None
    pause_ms: int = 0  # the pause the verdict heard
    logged: bool = False

    def drop(self) -> None:
        """The caller spoke again (or it was a blip): the eager transcript and a check not yet
        begun are of no use any more (a check already running finishes unread)."""
        if self.transcript is not None:
            self.transcript.cancel()
        if self.verdict is not None:
            self.verdict.cancel()


@dataclass(frozen=True)
class _Blip:
    """Speech over our voice the VAD dropped as too short, and when."""

    pcm: Pcm
    at: float


@dataclass(frozen=True)
class _Held:
    """A turn cut at a pause: the call joins the caller's next words to it until `limit_at`."""

    pcm: Pcm
    limit_at: float


class VadListener:
    """Feeds mic frames to the VAD, gated while the earpiece plays; emits start and utterances."""

    def __init__(
        self,
        settings: VadSettings,
        turn: TurnSettings | None = None,
        model: TurnModel | None = None,
        transcriber: Transcriber | None = None,
        echo_cancelled: bool = False,
    ) -> None:
        self._turn = turn or TurnSettings()
        self._model = model
        self._transcriber = transcriber
        hangover = self._turn.max_silence_ms if model is not None else settings.hangover_ms
        # talking over the persona needs its voice out of the mic: without an echo canceller
        # the mic stays closed while it plays, whatever vad.barge_in says
        self._vad = VadEndpointer(
            settings,
            hangover_ms=hangover,
            # a pause as long as the one the model is asked at takes a clear voice to end
            settle_ms=self._turn.pause_ms,
            barge_in=settings.barge_in and echo_cancelled,
            echo_cancelled=echo_cancelled,
        )
        self._check: _Check | None = None
        self._was_speaking = False
        self._held: _Held | None = None  # the last silent start, until its limit has passed
        self._sustain_ms = settings.barge_in_min_ms
        self._sustained = False  # SpeechSustained sent for the utterance in progress
        self._blip: _Blip | None = None  # the last blip over our voice, until the next words
        self._prefix: Pcm = _EMPTY  # that blip, in front of the utterance in progress
        self._over_voice = False  # our voice played during the utterance in progress
        self._wake: Callable[[], None] | None = None

    def watch(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def poll(self, playing: bool) -> list[MicEvent]:
        """A verdict came between frames: the turn may end now rather than at the next frame."""
        self._gate(playing)  # our voice may have started since the last frame
        return self._settle(self._end_of_turn(), self._vad.pause_ms)

    def _gate(self, playing: bool) -> None:
        self._vad.gate(playing)
        if playing:
            self._held = None  # the persona answered (or spoke): the next words start afresh

    def feed(
        self, pcm: Pcm, playing: bool, words: Pcm | None = None, sounding: bool = False
    ) -> list[MicEvent]:
        self._gate(playing)
        events: list[MicEvent] = []
        paused_ms = self._vad.pause_ms  # before this frame: how long ago a blip ended
        ended = self._vad.feed(pcm, words, sounding=sounding)
        if self._vad.in_speech and not self._was_speaking:
            events.append(SpeechStarted(time.monotonic()))
            self._prefix = self._carried()
            self._over_voice = False
        self._over_voice |= playing and self._vad.in_speech and self._vad.pause_ms == 0
        if not self._vad.in_speech:
            self._sustained = False
        elif not self._sustained and self._vad.voiced_ms >= self._sustain_ms:
            self._sustained = True
            events.append(SpeechSustained(time.monotonic()))
        heard = [Heard(u.pcm, u.end_monotonic) for u in ended]
        if heard:  # the carried blip goes in front of the first (one per frame, in practice)
            heard[0] = dataclasses.replace(heard[0], pcm=self._spoken(heard[0].pcm))
        return events + self._settle(heard + self._end_of_turn(), paused_ms)

    def _settle(self, heard: list[Heard], paused_ms: int) -> list[MicEvent]:
        """After a frame (or a verdict between frames): an utterance that ended without being
        heard was a blip (or gated by our voice); the carried blip is used up."""
        events: list[MicEvent] = []
        if self._was_speaking and not self._vad.in_speech and not heard:
            events.append(SpeechDropped(time.monotonic()))
            self._keep_blip(paused_ms)
        if heard or not self._vad.in_speech:
            self._prefix = _EMPTY
        self._was_speaking = self._vad.in_speech
        return events + list(heard)

    def answered(self) -> None:
        """The mic gate alone misses a reply cut within a frame or two (`#`), and then the next
        line was judged and transcribed with the last one in front, for the call to drop."""
        self._held = None
        self._blip = None

    def _keep_blip(self, paused_ms: int) -> None:
        """A blip over our voice (a clipped "Stop,"), with any blip it continued, kept for the
        caller's next words, timed from when it ended (`paused_ms` ago); elsewhere a blip is a
        cough or a knock, and forgotten."""
        blip = self._vad.take_blip()
        self._blip = None
        if self._over_voice and blip is not None:
            ended = time.monotonic() - paused_ms / 1000
            self._blip = _Blip(self._spoken(blip), ended)

    def _carried(self) -> Pcm:
        """What goes in front of the words just begun: the last blip, if it was recent."""
        blip, self._blip = self._blip, None
        if blip is None or time.monotonic() - blip.at > BLIP_CARRY_S:
            return _EMPTY
        log.info("blip_carried", blip_ms=ms(len(blip.pcm) / HEARD_RATE))
        return blip.pcm

    def _spoken(self, speech: Pcm) -> Pcm:
        """The utterance in progress as the caller said it: a carried blip in front."""
        return np.concatenate([self._prefix, speech]) if len(self._prefix) else speech

    def _end_of_turn(self) -> list[Heard]:
        """Ask the model at a pause; end the turn when it says finished and nothing changed."""
        mark, pause = self._vad.speech_mark, self._vad.pause_ms
        if self._model is None or mark is None or pause == 0:
            self._forget()  # idle, or the caller speaks: an earlier verdict is stale
            return []
        check = self._check
        if check is None or check.mark != mark:
            self._forget()
            if pause < min(self._turn.transcribe_ms, self._first_look_ms):
                return []
            self._check = check = _Check(mark, self._context(self._vad.speech_samples))
        if (
            check.verdict is None
            and pause >= self._first_look_ms
            and not self._decoding(check, pause)
        ):
            check.verdict = self._ask(check, pause, self._model, self._stt_wait_left(pause))
        self._transcribe_when_free(check, pause)
        if check.verdict is None:
            return []
        if not check.verdict.done():
            return []
        try:
            verdict = check.verdict.result()
        except Exception as exc:  # a broken model: the silence rule (max_silence_ms) decides
            log.warning("turn_model_failed", error=repr(exc))
            self._model = None
            return []
        finished = verdict.probability >= self._turn.threshold
        if not check.logged:
            check.logged = True
            log.info(
                "turn_check",
                finished=finished,
                probability=round(verdict.probability, 3),
                pause_ms=check.pause_ms,
                model_ms=verdict.model_ms,
                waited_ms=verdict.waited_ms,
            )
        if finished:
            return self._cut(pause, tentative=False)
        if check.pause_ms < self._turn.pause_ms:  # unsure at the first look: again, later
            if pause >= self._turn.pause_ms:
                check.verdict = self._ask(check, pause, self._model, STT_WAIT_S)
                check.logged = False
            return []
        if pause >= self._turn.speculate_ms:
            return self._cut(pause, tentative=True)  # start the work; speak at the limit
        return []  # wait for more words

    @property
    def _first_look_ms(self) -> int:
        """The first verdict's pause: `turn.first_check_ms`, never after `turn.pause_ms`."""
        return min(self._turn.first_check_ms, self._turn.pause_ms)

    def _decoding(self, check: _Check, pause: int) -> bool:
        """Whisper is still on this pause's words: the first look waits on the loop, not in its
        thread, so that when it runs it hears all the silence there is by then (often
        `turn.pause_ms` already: one look, where a look at stale audio, unsure, took a second),
        for up to `STT_WAIT_S` after it was due."""
        if check.transcript is None or check.transcript.done() or not busy("stt"):
            return False
        return self._stt_wait_left(pause) > 0

    def _stt_wait_left(self, pause: int) -> float:
        """What is left of the first look's `STT_WAIT_S` for Whisper, counted from when it was
        due, on the loop and then in its thread together (seconds)."""
        return max(0.0, STT_WAIT_S - (pause - self._first_look_ms) / 1000)

    def _transcribe_when_free(self, check: _Check, pause: int) -> None:
        """Whisper on what was said, from `turn.transcribe_ms` of silence, so the transcript is
        ready sooner when this pause ends the turn; but not while a check asked by then is still
        running: on two cores the two slowed each other two- to threefold, and the check decides
        first. With `transcribe_ms` below `first_check_ms` (the default) Whisper starts in the
        silence before any check, and the check waits for it (`_verdict`)."""
        if self._transcriber is None or check.transcript is not None:
            return
        if pause < self._turn.transcribe_ms or (check.verdict and not check.verdict.done()):
            return
        check.transcript = asyncio.ensure_future(self._transcriber.transcribe(self._so_far(check)))
        check.transcript.add_done_callback(_quiet)
        if self._wake is not None:  # the look waiting for it may be asked between frames
            wake = self._wake
            check.transcript.add_done_callback(lambda _: wake())

    def _ask(
        self, check: _Check, pause: int, model: TurnModel, stt_wait_s: float
    ) -> Future[Verdict]:
        """At `turn.first_check_ms` and (unsure) `turn.pause_ms`: the turn model's verdict on
        the utterance with its pause."""
        check.pause_ms = pause
        verdict = TURN_THREAD.submit(_verdict, model, self._so_far(check), stt_wait_s)
        if self._wake is not None:
            verdict.add_done_callback(_waking(asyncio.get_running_loop(), self._wake))
        return verdict

    def _so_far(self, check: _Check) -> Pcm:
        """What was said so far as the verdict and Whisper hear it: the held turn's audio, a
        carried blip, then the utterance in progress (a copy, taken on the loop)."""
        return _after(check.context, self._spoken(self._vad.speech_so_far()))

    def _context(self, samples: int) -> Pcm:
        """The held turn's audio, when this utterance began before that turn's limit (so the
        call will join them); else nothing."""
        held, started = self._held, time.monotonic() - samples / HEARD_RATE
        if held is None or started > held.limit_at:
            self._held = None
            return _EMPTY
        return held.pcm

    def _forget(self) -> None:
        if self._check is not None:
            self._check.drop()
            self._check = None

    def _cut(self, pause_ms: int, tentative: bool) -> list[Heard]:
        """End the utterance now; say when the silence limit would have ended it."""
        check, self._check = self._check, None
        utterance = self._vad.end_now()
        if utterance is None or check is None:
            if check is not None:
                check.drop()  # a blip: nobody will read its transcript
            return []
        left_s = max(0.0, (self._turn.max_silence_ms - pause_ms) / 1000)
        limit_at = time.monotonic() + left_s
        pcm = self._spoken(utterance.pcm)
        heard = Heard(
            pcm,
            utterance.end_monotonic,
            limit_at,
            tentative,
            check.transcript,
            complete_at=utterance.end_monotonic + self._turn.complete_ms / 1000,
            context=check.context,
        )
        self._held = _Held(_after(check.context, pcm), limit_at)
        return [heard]


def _after(context: Pcm, speech: Pcm) -> Pcm:
    """The utterance as the verdict and Whisper hear it: the held turn's audio in front."""
    return np.concatenate([context, speech]) if len(context) else speech


def _quiet(future: asyncio.Future[Transcript]) -> None:
    """An eager transcript nobody awaits: its failure is the turn's to report, if it is used."""
    if not future.cancelled():
        future.exception()


def _waking(
    loop: asyncio.AbstractEventLoop, wake: Callable[[], None]
) -> Callable[[Future[Verdict]], None]:
    """A done-callback for the turn-model thread: `wake` on the loop, unless the loop is gone
    (the service stopping): then nobody is listening."""

    def done(_: Future[Verdict]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(wake)

    return done


def _verdict(model: TurnModel, audio: Pcm, stt_wait_s: float) -> Verdict:
    """In the turn-model thread: the verdict on the utterance as it was at the pause.

    A check asked while Whisper decodes waits for it, up to `stt_wait_s` (`STT_WAIT_S`; a
    first look gets what its wait on the loop left of that): side by side on two cores each
    took twice as long, and the turn needs both anyway."""
    waited = wait_idle("stt", stt_wait_s)
    started = time.perf_counter()
    with working("turn_model"):
        probability = model.predict(audio)
    return Verdict(probability, ms(time.perf_counter() - started), ms(waited))
