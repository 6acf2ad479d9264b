"""Piper text-to-speech, streamed sentence by sentence, with even loudness and persona colour.

Piper synthesises one sentence per ONNX run. Text chunks are synthesised on one long-lived
worker thread that hands every sentence over as soon as it exists, so the first sentence plays
while the next is still being computed. Voices are loaded once per model file and shared (an ONNX
session is safe to run from several threads). Closing the async iterator (or cancelling its
task) tells the worker to stop after the sentence it is on; its late results are dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import soxr
from piper import PiperConfig, PiperVoice, SynthesisConfig

from payphone.bridge import ThreadStream
from payphone.config import TtsSettings
from payphone.cores import working
from payphone.log import get_logger, ms
from payphone.pcm import Pcm
from payphone.speech.base import Synthesizer, VoiceSpec
from payphone.speech.effects import Audio, EffectChain, Leveler, build_chain, pitch_ratio
from payphone.speech.voices import VoiceChoice, choose_voice

log = get_logger("payphone.speech.tts")

# words of a long, slow reply (three syllables and more), for the warm-up sentence
WARM_UP_WORDS = (
    "remember wonderful telephone beautiful afternoon together operator "
    "neighbourhood everybody yesterday certainly detective"
)


def voice_config(onnx: Path) -> dict[str, Any]:
    """A voice's `.onnx.json`, which lies beside the model."""
    config: dict[str, Any] = json.loads(onnx.with_suffix(".onnx.json").read_text("utf-8"))
    return config


def voice_rate(onnx: Path) -> int:
    """A voice's native sample rate, without loading the model."""
    return int(voice_config(onnx)["audio"]["sample_rate"])


class _ShrinkingSession(onnxruntime.InferenceSession):
    """An ONNX session on ONNX Runtime's CPU arena that gives the arena back after every run.

    The arena is what keeps Piper fast: a sentence's many intermediate tensors reuse its
    memory instead of asking malloc (and the kernel, with `payphone.memory`'s mmap threshold)
    for fresh pages each time. Left alone, though, it keeps every sentence length's high-water
    mark for good and fragments: in 160 sentences of varied length RSS rose 20 % with it and
    2 % without it. Shrinking it at the end of each run (`memory.enable_memory_arena_shrinkage`)
    keeps both: RSS as flat as without the arena, and Piper as fast as with it (`bench soak`,
    `bench tts`).
    """

    def __init__(self, path: Path) -> None:
        options = onnxruntime.SessionOptions()
        # its worker threads sleep between runs instead of spinning: spinning, they took the
        # cores from the model writing the next words (first chunk to first audio in `bench
        # turns`: median 155 ms spinning, 130 ms not; alone, in `bench tts`, no slower)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        super().__init__(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self._shrink = onnxruntime.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return super().run(output_names, input_feed, run_options or self._shrink)


def load_voice(onnx: Path) -> PiperVoice:
    """A Piper voice whose session shrinks its memory arena after each sentence."""
    return PiperVoice(
        session=_ShrinkingSession(onnx), config=PiperConfig.from_dict(voice_config(onnx))
    )


def warm_up_text(words: int) -> str:
    """A sentence of `words` long words, as long as a reply chunk of that many words gets."""
    pool = WARM_UP_WORDS.split()
    return " ".join(pool[i % len(pool)] for i in range(words)) + "."


def slowest(voices: Iterable[VoiceSpec]) -> dict[str, float]:
    """Per voice model, the longest length scale any persona gives it (pitch included): the
    most audio per word, so the biggest tensors that model will ever need."""
    scales: dict[str, float] = {}
    for voice in voices:
        scale = voice.length_scale * pitch_ratio(voice.pitch_semitones)
        scales[voice.model] = max(scale, scales.get(voice.model, 0.0))
    return scales


def to_pcm(audio: Audio) -> Pcm:
    """Float [-1, 1] to int16 with clipping (the leveler keeps peaks below the ceiling)."""
    return np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)


class _Voices:
    """One loaded PiperVoice per model file; loading happens once, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[Path, PiperVoice] = {}

    def get(self, onnx: Path) -> PiperVoice:
        with self._lock:
            voice = self._loaded.get(onnx)
            if voice is None:
                started = time.monotonic()
                voice = load_voice(onnx)
                self._loaded[onnx] = voice
                log.info("voice_loaded", path=str(onnx), load_ms=ms(time.monotonic() - started))
            return voice


class _Render:
    """The per-call pipeline: Piper sentence -> effects -> leveler -> output rate -> int16."""

    def __init__(self, rate: int, out_rate: int, chain: EffectChain, leveler: Leveler) -> None:
        self._chain = chain
        self._leveler = leveler
        self._resampler = (
            soxr.ResampleStream(rate, out_rate, 1, dtype="float32") if out_rate != rate else None
        )

    def chunk(self, audio: Audio) -> Pcm:
        leveled = self._leveler.process(self._chain.process(audio))
        if self._resampler is not None:
            leveled = np.asarray(self._resampler.resample_chunk(leveled), np.float32)
        return to_pcm(leveled)

    def finish(self) -> Pcm:
        """What the filters and resamplers still hold, at the last chunk's gain."""
        tail = self._leveler.carry(self._chain.flush())
        if self._resampler is not None:
            tail = np.asarray(self._resampler.resample_chunk(tail, last=True), np.float32)
        return to_pcm(tail)


# One long-lived synthesis thread: a fresh thread per chunk made onnxruntime and malloc keep
# growing per-thread memory (RSS rose ~1 MB per synthesis in `bench soak`).
_SYNTH_THREAD = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="piper-synth"
)


class PiperSynthesizer(Synthesizer):
    """Piper voices for every persona, streamed, levelled and coloured for the phone line.

    `resolve_voice` finds a voice's `.onnx` by name (`payphone.models.resolve_voice`).
    `output_rate` is the rate of the PCM handed out (`sample_rate`): the default voice's own rate
    unless given (22 050 Hz for the demo voice). Telephone colour and the loudness target come from
    `tts` unless overridden.
    """

    def __init__(
        self,
        tts: TtsSettings,
        resolve_voice: Callable[[str], Path],
        output_rate: int | None = None,
        telephone_filter: bool | None = None,
        target_dbfs: float | None = None,
    ) -> None:
        self._tts = tts
        self._resolve_voice = resolve_voice
        self._default_path = resolve_voice(tts.voice)
        self.sample_rate = output_rate or voice_rate(self._default_path)
        self.telephone = tts.telephone_filter if telephone_filter is None else telephone_filter
        self.target_dbfs = tts.target_dbfs if target_dbfs is None else target_dbfs
        self._voices = _Voices()
        self._paths: dict[str, Path] = {tts.voice: self._default_path}
        self._chosen: dict[VoiceSpec, VoiceChoice] = {}
        self._last: concurrent.futures.Future[None] | None = None  # the last synthesis queued

    def voice_path(self, model: str) -> Path:
        """The `.onnx` of a persona's voice (names resolved once, like the settings' voice)."""
        path = self._paths.get(model)
        if path is None:
            path = self._paths[model] = self._resolve_voice(model)
        return path

    def choose(self, voice: VoiceSpec) -> VoiceChoice:
        """The voice that really speaks for a persona's spec: its production voice when found,
        else its fallback; decided (and a fallback logged, with why) once per spec."""
        choice = self._chosen.get(voice)
        if choice is None:
            choice = self._chosen[voice] = choose_voice(voice, self.voice_path)
            if choice.reason is not None:  # info: the demo and tests run on fallbacks by design
                log.info(
                    "voice_fallback",
                    voice=voice.model,
                    speaks=choice.used.describe(),
                    reason=choice.reason,
                )
        return choice

    async def load(self, voices: Iterable[VoiceSpec], longest_words: int) -> None:
        """Load every voice the personas use at start-up, and run each once on the longest
        chunk (`longest_words`, the chunker's hard limit) at its slowest speed: ONNX Runtime's
        first run (and any failure on a long sentence) happen here, not in a caller's reply.
        Each voice is the one that really speaks (`choose`): production voices or fallbacks."""
        chosen = [(await asyncio.to_thread(self.choose, voice)).used for voice in voices]
        speeds = slowest(chosen or [VoiceSpec(model=self._tts.voice)])
        for model, scale in speeds.items():
            started = time.monotonic()
            await asyncio.to_thread(self._voices.get, self.voice_path(model))
            samples = 0
            text = warm_up_text(longest_words)
            async for pcm in self.synthesize(text, VoiceSpec(model, None, scale)):
                samples += len(pcm)
            log.info(
                "voice_warmed",
                voice=model,
                length_scale=round(scale, 2),
                audio_s=round(samples / self.sample_rate, 2),
                warm_ms=ms(time.monotonic() - started),
            )

    @property
    def busy(self) -> bool:
        """Whether Piper is working on a text right now (in the synthesis thread)."""
        return self._last is not None and not self._last.done()

    def synthesize(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]:
        """PCM chunks (about one per sentence) at `sample_rate`, as Piper produces them, in the
        voice that really speaks for `voice` (its fallback while its own voice is missing)."""
        used = replace(self.choose(replace(voice, steady=False)).used, steady=voice.steady)
        path = self.voice_path(used.model)
        stream = ThreadStream(
            functools.partial(self._pieces, path, text, used), executor=_SYNTH_THREAD
        )
        self._last = stream.finished
        return stream

    def _pieces(
        self, path: Path, text: str, voice: VoiceSpec, stop: threading.Event
    ) -> Iterator[Pcm]:
        """Runs in the worker thread: Piper's sentences through the persona's pipeline."""
        if stop.is_set():  # stopped (a hang-up, a barge-in) while it waited for the thread
            return
        with working("tts"):
            yield from self._rendered(path, text, voice, stop)

    def _rendered(
        self, path: Path, text: str, voice: VoiceSpec, stop: threading.Event
    ) -> Iterator[Pcm]:
        piper = self._voices.get(path)
        rate = int(piper.config.sample_rate)
        chain = build_chain(voice.effect, rate, voice.pitch_semitones, self.telephone)
        render = _Render(rate, self.sample_rate, chain, Leveler(rate, self.target_dbfs))
        config = SynthesisConfig(
            speaker_id=voice.speaker,
            # a pitch shift by resampling also shortens the audio; slower speech makes up for it
            length_scale=voice.length_scale * pitch_ratio(voice.pitch_semitones),
            normalize_audio=False,
        )
        if voice.steady:
            config.noise_scale = config.noise_w_scale = 0.0
        started = time.monotonic()
        for count, sentence in enumerate(piper.synthesize(text, config)):
            if stop.is_set():
                return
            if count == 0:
                log.debug("tts_first_sentence", synth_ms=ms(time.monotonic() - started))
            yield render.chunk(np.asarray(sentence.audio_float_array, dtype=np.float32))
        tail = render.finish()
        if len(tail):
            yield tail
