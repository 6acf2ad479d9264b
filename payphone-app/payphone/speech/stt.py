"""faster-whisper speech-to-text, with Whisper's 30 s window cut down to the utterance.

Why the "utterance" window: Whisper pads every clip to 30 s, so a 2 s question costs as much
encoder work as 30 s of audio. CTranslate2's Whisper encoder accepts fewer mel frames, so in
"utterance" mode the audio is padded with real silence (digital zeros, which become the log-mel
of silence after feature extraction, as in OpenAI's reference code) only to its own length plus
`silence_s`, encoded, and decoded through the CTranslate2 model that faster-whisper holds, with
the prompt faster-whisper would build (start-of-transcript, language, task, no-timestamps).
Measured on the bench question set: with only 1-2 s of padding Whisper often misses the end and
reads the audio again ("Who is this? Who is this? Who"); 5 s of silence all but stops that, and
`cut_repetition` trims the rare loop left (in both windows). "full" runs faster-whisper's own
`transcribe` and is the fallback for utterances longer than `full_after_s`.

Noise is not speech: a transcript is returned empty when Whisper's no-speech probability is above
`no_speech_threshold` (and its average log-probability is low, Whisper's own rule), when the text
is empty, or when it is one of Whisper's known hallucinations on noise.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from payphone.config import SttSettings
from payphone.cores import working
from payphone.log import get_logger, ms
from payphone.pcm import Pcm
from payphone.speech.base import Transcriber, Transcript

log = get_logger(__name__)

SAMPLE_RATE = 16000
Window = Literal["utterance", "full"]

# Whisper's classic inventions on silence and noise (compared after `_plain`).
HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you for watching",
        "thanks for watching",
        "thank you so much for watching",
        "thanks for watching bye",
        "please subscribe",
        "like and subscribe",
        "bye",
        "blank audio",
        "music",
        "applause",
        "silence",
        "no speech",
    }
)
HALLUCINATION_PREFIXES = (
    "subtitles by",
    "transcribed by",
    "transcription by",
    "captions by",
    "translated by",
    "www ",
    "amara org",
)
_NON_SPEECH_ONLY = re.compile(r"^\s*(?:[\[\(\*♪][^\]\)\*♪]*[\]\)\*♪]\s*)+$")


def _plain(text: str) -> str:
    """Lower case, letters, digits and single spaces only."""
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).replace("'", "").split())


def is_hallucination(text: str) -> bool:
    """True for empty text, bracketed sound tags, and Whisper's stock phrases on noise."""
    if _NON_SPEECH_ONLY.match(text):
        return True
    plain = _plain(text)
    if not plain:
        return True
    return plain in HALLUCINATIONS or plain.startswith(HALLUCINATION_PREFIXES)


SENTENCE_ENDS = (".", "?", "!")


def cut_repetition(text: str) -> str:
    """Drop the loop a short-window decode can fall into ("Who is this? Who is this? Who").

    Whisper, when it misses the end of the audio, starts reading it again from the beginning.
    Three patterns are cut: the whole text periodic with at least one full repeat ("yes yes yes"
    -> "yes"), a restart, where the first three words come again later, and a short restart
    after a full sentence ("Hello, who is this? Hello,"; "Stop. I need a taxi. Stop. I"), which
    would otherwise read as a caller trailing off and hold the answer back to the silence
    limit. A loop that starts after a few words ("in the nature of the nature of the nature",
    Whisper on a "Mm-hm" through the echo canceller) keeps one pass of its phrase: callers do
    not say a phrase three times.
    """
    words = text.split()
    keys = [_plain(w) for w in words]
    n = len(keys)
    for period in range(1, n // 2 + 1):
        if _repeats(keys, 0, period):
            return " ".join(words[:period])
    if (looped := _tail_loop(keys)) is not None:
        return " ".join(words[:looped])
    head = keys[:3]
    for start in range(3, n - 2):
        if keys[start : start + 3] == head:
            return " ".join(words[:start])
    ends = [i for i, word in enumerate(words[:-1]) if word.endswith(SENTENCE_ENDS)]
    for end in ends:  # "Stop. I need a taxi. Stop. I": the restart may itself end a sentence
        if n - end - 1 < 3 and keys[end + 1 :] == keys[: n - end - 1]:
            return " ".join(words[: end + 1])
    return text


def _tail_loop(keys: list[str], longest: int = 4) -> int | None:
    """Where a phrase of up to `longest` words that runs on, said two and a half times or more,
    to the end of the text, has been said once (None: no such loop)."""
    n = len(keys)
    for start in range(1, n):
        for period in range(1, longest + 1):
            if n - start < 2 * period + period // 2 + 1:
                break
            if _repeats(keys, start, period):
                return start + period
    return None


def _repeats(keys: list[str], start: int, period: int) -> bool:
    """Whether the words from `start` on are one phrase of `period` words, said over and over
    to the end (the last pass may break off, even inside a word: "Excuse me. Excuse me. Exc")."""
    last = len(keys) - 1
    broken_off = last >= start + 2 * period  # only after one whole repeat: "Now? No." stays
    return all(
        keys[i] == keys[i - period]
        or (i == last and broken_off and bool(keys[i]) and keys[i - period].startswith(keys[i]))
        for i in range(start + period, len(keys))
    )


@dataclass(frozen=True)
class Decoded:
    """Raw output of one decode, before the noise rules."""

    text: str
    no_speech_prob: float
    avg_logprob: float
    window: Window


class _Dropped(Exception):
    """The transcript's caller cancelled it: the decode stops where it can."""


def pcm_to_float(pcm: Pcm) -> npt.NDArray[np.float32]:
    """int16 PCM to the float32 [-1, 1) waveform Whisper expects."""
    return (np.asarray(pcm, dtype=np.int16).astype(np.float32) / 32768.0).reshape(-1)


class WhisperTranscriber(Transcriber):
    """faster-whisper on the CPU; one model, loaded once, used by one thread at a time.

    `transcribe` runs in a worker thread; a cancelled caller simply drops the result (the decode
    finishes in the background while holding the model lock, so calls never overlap).
    `window` overrides `stt.window`; utterances longer than `full_after_s` always use the full
    window; `silence_s` is the silence padded after the audio in the utterance window;
    `log_prob_threshold` is Whisper's partner to `no_speech_threshold` in its silence rule.
    """

    def __init__(
        self,
        model_dir: Path | str,
        settings: SttSettings | None = None,
        *,
        window: Window | None = None,
        full_after_s: float = 25.0,
        silence_s: float = 5.0,
        log_prob_threshold: float = -1.0,
    ) -> None:
        self.settings = settings or SttSettings()
        self.model_dir = Path(model_dir)
        self.window: Window = window or self.settings.window
        self.full_after_s = full_after_s
        self.silence_s = silence_s
        self.log_prob_threshold = log_prob_threshold
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._prompt: list[int] = []
        self._suppress: list[int] = []
        self.load()

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model (seconds; do it at start-up) and warm it with a dummy clip."""
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        started = time.perf_counter()
        threads = self.settings.cpu_threads or min(4, os.cpu_count() or 1)
        model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=self.settings.compute_type,
            cpu_threads=threads,
            num_workers=1,
        )
        language = self.settings.language if model.model.is_multilingual else "en"
        tokenizer = Tokenizer(
            model.hf_tokenizer,
            model.model.is_multilingual,
            task="transcribe",
            language=language,
        )
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))
        self._tokenizer = tokenizer
        self._model = model
        loaded = time.perf_counter()
        self.warm_up()
        log.info(
            "stt_loaded",
            model=str(self.model_dir),
            window=self.window,
            threads=threads,
            load_ms=ms(loaded - started),
            warm_ms=ms(time.perf_counter() - loaded),
        )

    def warm_up(self) -> None:
        """One decode of a short tone-and-noise clip, so the first caller pays no start-up cost."""
        rng = np.random.default_rng(0)
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        clip = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(len(t))
        pcm = (clip * 32767).astype(np.int16)
        self.decode(pcm, "utterance")
        if self.window == "full":
            self.decode(pcm, "full")

    # -- transcription -----------------------------------------------------------------------

    async def transcribe(self, pcm: Pcm) -> Transcript:
        """Transcribe one utterance (16 kHz mono int16) in a worker thread.

        Cancelled (an eager transcript whose caller went on), the decode cannot be interrupted,
        but one still waiting for the model is skipped and one under way stops after its
        encoder: the next utterance's decode waits less behind it."""
        dropped = threading.Event()
        try:
            return await asyncio.to_thread(self.transcribe_sync, pcm, None, dropped)
        except asyncio.CancelledError:
            dropped.set()
            raise

    def transcribe_sync(
        self, pcm: Pcm, window: Window | None = None, dropped: threading.Event | None = None
    ) -> Transcript:
        """The blocking transcription: pick the window, decode, apply the noise rules.
        `dropped` set: nobody wants the text any more (an empty one comes back)."""
        duration = len(pcm) / SAMPLE_RATE
        if duration == 0:
            return Transcript("", 1.0, 0.0)
        chosen = window or self.window
        if chosen == "utterance" and duration > self.full_after_s:
            chosen = "full"
        started = time.perf_counter()
        try:
            decoded = self.decode(pcm, chosen, dropped)
        except _Dropped as stop:
            log.debug("stt_dropped", at=str(stop), audio_ms=ms(duration))
            return Transcript("", 1.0, duration)
        text = decoded.text.strip()
        reason = self._rejection(decoded)
        if reason is not None:
            log.info(  # a word count only: even a rejected transcript may be a caller's words
                "stt_rejected",
                reason=reason,
                heard_words=len(text.split()),
                no_speech_prob=decoded.no_speech_prob,
            )
            text = ""
        log.debug(
            "stt_done",
            window=chosen,
            audio_ms=ms(duration),
            stt_ms=ms(time.perf_counter() - started),
            no_speech_prob=round(decoded.no_speech_prob, 3),
        )
        return Transcript(text, decoded.no_speech_prob, duration)

    def _rejection(self, decoded: Decoded) -> str | None:
        if (
            decoded.no_speech_prob > self.settings.no_speech_threshold
            and decoded.avg_logprob < self.log_prob_threshold
        ):
            return "no_speech"
        if is_hallucination(decoded.text):
            return "hallucination" if decoded.text.strip() else "empty"
        return None

    def decode(self, pcm: Pcm, window: Window, dropped: threading.Event | None = None) -> Decoded:
        """Run Whisper once, without the noise rules (also used by the benchmark); raises
        `_Dropped` once `dropped` is set, before the model or after the encoder."""
        audio = pcm_to_float(pcm)
        stop = dropped or threading.Event()
        with self._lock, working("stt"):
            if stop.is_set():
                raise _Dropped("before the model")
            if window == "full":
                return self._decode_full(audio)
            return self._decode_utterance(audio, stop)

    def _max_new_tokens(self, seconds: float) -> int:
        # fast speech is ~4-5 tokens/s; the cap stops a looping decode early
        return int(min(220, 10 + 6 * min(seconds, 30.0)))

    def _decode_utterance(
        self, audio: npt.NDArray[np.float32], dropped: threading.Event
    ) -> Decoded:
        import ctranslate2

        model = self._model
        fe = model.feature_extractor
        seconds = len(audio) / SAMPLE_RATE
        # whole seconds only: every new input length costs the encoder's math library a new kernel
        # plan it keeps (RSS rose 170 MB over 200 utterances of random lengths; flat with this)
        window_s = min(30.0, math.ceil(seconds + self.silence_s))
        # whole encoder positions: an even number of mel frames (the encoder's conv has stride 2)
        frames = int(np.ceil(window_s * SAMPLE_RATE / fe.hop_length / 2.0)) * 2
        padded = np.zeros(frames * fe.hop_length, dtype=np.float32)
        padded[: len(audio)] = audio[: len(padded)]
        features = fe(padded, padding=0)[:, :frames]
        storage = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(features[np.newaxis], dtype=np.float32)
        )
        encoded = model.model.encode(storage)
        if dropped.is_set():
            raise _Dropped("after the encoder")
        result = model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.settings.beam_size,
            max_length=len(self._prompt) + self._max_new_tokens(seconds),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        text = cut_repetition(self._tokenizer.decode(tokens).strip())
        return Decoded(text, float(result.no_speech_prob), float(avg_logprob), "utterance")

    def _decode_full(self, audio: npt.NDArray[np.float32]) -> Decoded:
        seconds = len(audio) / SAMPLE_RATE
        segments, _ = self._model.transcribe(
            audio,
            language="en" if not self._model.model.is_multilingual else self.settings.language,
            beam_size=self.settings.beam_size,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            no_speech_threshold=self.settings.no_speech_threshold,
            log_prob_threshold=self.log_prob_threshold,
            max_new_tokens=self._max_new_tokens(seconds),
        )
        found = list(segments)
        if not found:
            return Decoded("", 1.0, -10.0, "full")
        text = cut_repetition(" ".join(s.text.strip() for s in found).strip())
        no_speech = min(s.no_speech_prob for s in found)
        avg_logprob = float(np.mean([s.avg_logprob for s in found]))
        return Decoded(text, float(no_speech), avg_logprob, "full")
