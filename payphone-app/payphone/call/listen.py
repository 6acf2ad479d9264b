"""The production endpointer for the call loop: webrtcvad utterances as call events."""

from __future__ import annotations

import time
from typing import Protocol

from payphone.call.events import Heard, SpeechStarted
from payphone.config import VadSettings
from payphone.pcm import Pcm
from payphone.speech.vad import VadEndpointer


class Endpointer(Protocol):
    """Cuts mic frames into utterances; `playing`: our own voice is in the earpiece."""

    def feed(self, pcm: Pcm, playing: bool) -> list[SpeechStarted | Heard]: ...


class VadListener:
    """Feeds mic frames to the VAD, gated while the earpiece plays; emits start and utterances."""

    def __init__(self, settings: VadSettings) -> None:
        self._vad = VadEndpointer(settings)
        self._was_speaking = False

    def feed(self, pcm: Pcm, playing: bool) -> list[SpeechStarted | Heard]:
        self._vad.gate(playing)
        events: list[SpeechStarted | Heard] = []
        utterances = self._vad.feed(pcm)
        if self._vad.in_speech and not self._was_speaking:
            events.append(SpeechStarted(time.monotonic()))
        self._was_speaking = self._vad.in_speech
        events.extend(Heard(u.pcm, u.end_monotonic) for u in utterances)
        return events
