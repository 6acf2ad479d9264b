"""Contracts for the speech stages, so the call loop is tested without the models."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from payphone.pcm import Pcm


@dataclass(frozen=True)
class Transcript:
    """What Whisper heard; empty text means silence or noise."""

    text: str
    no_speech_prob: float = 0.0
    duration_s: float = 0.0

    @property
    def is_speech(self) -> bool:
        return bool(self.text.strip())


class Transcriber(ABC):
    """16 kHz mono PCM of one utterance -> text (runs its model in a worker thread)."""

    @abstractmethod
    async def transcribe(self, pcm: Pcm) -> Transcript: ...


@dataclass(frozen=True)
class VoiceSpec:
    """Which voice speaks and how: the persona's voice settings. `fallback` speaks instead when
    `model` is not on this machine (a production voice not downloaded yet): see `speech.voices`."""

    model: str = "en_US-joe-medium"
    speaker: int | None = None
    length_scale: float = 1.0
    effect: str = "none"
    pitch_semitones: float = 0.0
    fallback: VoiceSpec | None = None
    # Piper's random variation off: the same audio every time, for a line where what was
    # checked must be what plays (the help lines). Not a persona setting.
    steady: bool = False

    def describe(self) -> str:
        """`en_US-joe-medium x1.25 + elderly +3 st`: the voice and what is done to it."""
        text = f"{self.model}"
        if self.speaker is not None:
            text += f" #{self.speaker}"
        text += f" x{self.length_scale:g}"
        if self.effect != "none":
            text += f" + {self.effect}"
        if self.pitch_semitones:
            text += f" {self.pitch_semitones:+g} st"
        return text


class Synthesizer(ABC):
    """Text chunk -> PCM chunks at `sample_rate` (synthesis in a worker thread)."""

    sample_rate: int

    @abstractmethod
    def synthesize(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]: ...
