"""Scripted stand-ins for the speech stages: the call loop without the models.

Used by the call-loop tests and `bench hangup`, where what is measured is the loop itself. The
hardware stays real (gpiozero MockFactory pins, in-memory audio); only the heavy models are
replaced, by stages that keep the same contracts and, like the models, work in worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from payphone.call.events import Heard, MicEvent, SpeechStarted, SpeechSustained
from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.pcm import Pcm
from payphone.speech.base import Synthesizer, Transcriber, Transcript, VoiceSpec

SPEECH_LEVEL = 8000


def speech_burst(seconds: float, rate: int = 16000) -> Pcm:
    """A loud noise burst the energy endpointer takes for speech."""
    rng = np.random.default_rng(7)
    return (rng.standard_normal(int(seconds * rate)) * SPEECH_LEVEL / 3).astype(np.int16)


class EnergyEndpointer:
    """Frames louder than a threshold are speech; `hangover_frames` quiet frames end it.

    `unsure_s` > 0: every utterance is cut as the turn model cuts an unsure one (tentative, to
    be heard only that much later), so the loop's speculative path can be driven and timed.
    `sustain_frames` loud frames in one utterance are more than a backchannel (barge-in).
    `barge_in`: the mic is heard while our voice plays (as if echo-free); else it is gated.
    """

    def __init__(
        self,
        threshold: float = 1000.0,
        hangover_frames: int = 5,
        frame_s: float = 0.03,
        unsure_s: float = 0.0,
        sustain_frames: int = 7,
        barge_in: bool = False,
    ):
        self.threshold = threshold
        self.sustain_frames = sustain_frames
        self.barge_in = barge_in
        self.hangover = hangover_frames
        self.frame_s = frame_s
        self.unsure_s = unsure_s
        self._speech: list[Pcm] = []
        self._quiet = 0

    def answered(self) -> None:
        """Nothing is held across turns here."""

    def watch(self, wake: Callable[[], None]) -> None:
        """Nothing is decided between frames here."""

    def poll(self, playing: bool) -> list[MicEvent]:
        return []

    def feed(
        self, pcm: Pcm, playing: bool, words: Pcm | None = None, sounding: bool = False
    ) -> list[MicEvent]:
        level = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
        loud = level > self.threshold and (self.barge_in or not playing)
        now = time.monotonic()
        if loud:
            started = not self._speech
            self._speech.append(pcm if words is None else words)
            self._quiet = 0
            events: list[MicEvent] = [SpeechStarted(now)] if started else []
            if len(self._speech) == self.sustain_frames:
                events.append(SpeechSustained(now))  # more than a backchannel
            return events
        if not self._speech:
            return []
        self._quiet += 1
        if self._quiet < self.hangover:
            return []
        end = now - self.hangover * self.frame_s
        limit_at = now + self.unsure_s if self.unsure_s else 0.0
        heard = Heard(np.concatenate(self._speech), end, limit_at, tentative=self.unsure_s > 0)
        self._speech, self._quiet = [], 0
        return [heard]


@dataclass
class ScriptedTranscriber(Transcriber):
    """Returns the next scripted text for each utterance, after `delay_s` of 'thinking'."""

    texts: deque[str] = field(default_factory=deque)
    delay_s: float = 0.05
    calls: int = 0
    heard_s: list[float] = field(default_factory=list)  # how much audio each call was given

    async def transcribe(self, pcm: Pcm) -> Transcript:
        self.calls += 1
        self.heard_s.append(len(pcm) / 16000)
        await asyncio.to_thread(time.sleep, self.delay_s)  # like Whisper: busy in a worker thread
        text = self.texts.popleft() if self.texts else ""
        return Transcript(text=text, duration_s=len(pcm) / 16000)


@dataclass
class ScriptedBackend(ChatBackend):
    """Streams a scripted reply word by word; can fail at a given token with a given cause."""

    reply: str = "Hello there. How can I help you today? I am listening."
    token_delay_s: float = 0.01
    fail_cause: str | None = None
    fail_after_tokens: int = 0
    stall_s: float = 0.0
    requests: list[list[Message]] = field(default_factory=list)
    closed: int = 0
    active: int = 0
    warmed: list[str] = field(default_factory=list)
    warmed_examples: list[list[Message]] = field(default_factory=list)
    read: list[list[Message]] = field(default_factory=list)  # histories read ahead

    async def warm_up(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        await asyncio.sleep(self.token_delay_s)
        self.warmed.append(system_prompt)
        self.warmed_examples.append(list(examples))

    async def read_ahead(self, messages: list[Message]) -> None:
        await asyncio.sleep(self.token_delay_s)
        self.read.append(list(messages))

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        self.requests.append(list(messages))
        self.active += 1
        try:
            for index, word in enumerate(self.reply.split(" ")):
                if self.fail_cause is not None and index == self.fail_after_tokens:
                    raise LlmError(self.fail_cause, "scripted")
                if self.stall_s and index == self.fail_after_tokens:
                    await asyncio.sleep(self.stall_s)
                await asyncio.sleep(self.token_delay_s)
                yield word if index == 0 else " " + word
        finally:
            self.active -= 1
            self.closed += 1


class ToneSynthesizer(Synthesizer):
    """Speaks each chunk as a tone, 60 ms per word in 20 ms pieces, after a short delay."""

    def __init__(self, sample_rate: int = 22050, delay_s: float = 0.02) -> None:
        self.sample_rate = sample_rate
        self.delay_s = delay_s
        self.spoken: list[str] = []
        self.voices: list[VoiceSpec] = []  # the voice of each text in `spoken`

    async def synthesize(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]:
        self.spoken.append(text)
        self.voices.append(voice)
        await asyncio.sleep(self.delay_s)
        samples = int(max(1, len(text.split())) * 0.06 * self.sample_rate)
        t = np.arange(samples) / self.sample_rate
        pcm = (np.sin(2 * np.pi * 300 * t) * 6000).astype(np.int16)
        piece = self.sample_rate // 50
        for start in range(0, samples, piece):
            yield pcm[start : start + piece]
            await asyncio.sleep(0)
