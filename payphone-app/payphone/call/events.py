"""What a call reacts to: everything arrives as a message on the call's inbox."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable
from dataclasses import dataclass, field

import numpy as np

from payphone.pcm import Pcm
from payphone.speech.base import Transcriber, Transcript

HEARD_RATE = 16000  # the endpointer's (and Whisper's) sample rate


@dataclass(frozen=True)
class KeyPress:
    key: str
    at: float


@dataclass(frozen=True)
class SpeechStarted:
    at: float


@dataclass(frozen=True)
class SpeechSustained:
    """The caller has now spoken `vad.barge_in_min_ms` of voiced audio in this utterance: more
    than a backchannel. Over the persona's voice (with barge-in) it stops the earpiece."""

    at: float


@dataclass(frozen=True)
class SpeechDropped:
    """Speech started but made no utterance (a cough, a blip, a knock on the handset)."""

    at: float


@dataclass(frozen=True)
class Heard:
    """One utterance the endpointer cut: 16 kHz PCM and when the caller stopped speaking.

    `limit_at`: when the silence limit would have ended it (0: it did). An utterance the
    end-of-turn model cut before that may still be unfinished: `tentative` when the model said
    "not finished" (the turn starts anyway, silently, after `turn.speculate_ms`), or when the
    words trail off ("my name is", "and,"). Such a turn works at once but makes no sound before
    `limit_at`; if the caller goes on meanwhile, their words join it.

    `complete_at`: a tentative turn whose words read as a complete statement is heard from then
    (`turn.complete_ms` after the caller stopped) instead of at `limit_at`.

    `context`: the audio of the held turn these words continue, as the listener expects the call
    to join them; the eager `transcript` is of `context` + `pcm`.
    """

    pcm: Pcm = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int16))
    speech_end: float = 0.0
    limit_at: float = 0.0
    tentative: bool = False
    # Whisper already at work on this audio since the pause (eager): the turn awaits it
    transcript: asyncio.Future[Transcript] | None = field(default=None, repr=False, compare=False)
    context: Pcm = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int16))
    complete_at: float = 0.0

    @property
    def seconds(self) -> float:
        return round(len(self.pcm) / HEARD_RATE, 2)

    def transcribed(self, transcriber: Transcriber) -> Awaitable[Transcript]:
        """What Whisper made of these words: the eager run, shielded (a turn held when the
        caller seems to go on is cancelled, and the one resumed after a cough awaits the same
        run), else a fresh run."""
        if self.transcript is not None:
            return asyncio.shield(self.transcript)
        return transcriber.transcribe(self.pcm)


@dataclass(frozen=True)
class HelpNeeded:
    """Words said before the greeting (over the dial tone) call for the help line: they are
    the call's first turn, whatever is playing."""

    heard: Heard
    transcript: Transcript


@dataclass(frozen=True)
class ShortSpeech:
    """Speech over the persona too short for a barge-in, and what Whisper made of it: a
    backchannel lets the persona go on; a short request ("Stop.", "Sorry?") takes the turn."""

    heard: Heard
    transcript: Transcript


class Timer(enum.Enum):
    DIAL_TONE = "dial_tone"
    IDLE = "idle"
    INTER_DIGIT = "inter_digit"
    MAX_CALL = "max_call"
    UNCLEAR = "unclear"  # how long an unclear burst waits for the caller to go on


@dataclass(frozen=True)
class TimerFired:
    timer: Timer
    token: int


@dataclass(frozen=True)
class ActivityDone:
    name: str
    token: int


# what the mic's endpointer says, frame by frame
MicEvent = SpeechStarted | SpeechSustained | SpeechDropped | Heard
CallEvent = (
    KeyPress
    | SpeechStarted
    | SpeechSustained
    | SpeechDropped
    | Heard
    | HelpNeeded
    | ShortSpeech
    | TimerFired
    | ActivityDone
)


class CallState(enum.Enum):
    DIAL_TONE = "dial_tone"
    GREETING = "greeting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    DIALING = "dialing"
    RINGBACK = "ringback"
    ANNOUNCEMENT = "announcement"
    GOODBYE = "goodbye"  # the call is ending (too long, caller silent, service stopping)
    HOWLER = "howler"
    ENDED = "ended"
