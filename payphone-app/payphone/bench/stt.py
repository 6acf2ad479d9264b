"""`bench stt`: Whisper latency by utterance length for both windows, and word error rate.

Why: the "utterance" window is only worth having if it is much faster *and* hears the same
words. The question set is spoken by Piper (the demo voice at several speeds) and by espeak-ng
(several voices and speeds), so the WER compares the windows on varied, known audio.
The helpers here (`word_error_rate`, `question_set`, `speak_piper`, `speak_espeak`) are shared
with the VAD benchmark and the tests.
"""

from __future__ import annotations

import functools
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from payphone.config import Settings
from payphone.pcm import Pcm
from payphone.speech.stt import Window

SAMPLE_RATE = 16000
WINDOWS: tuple[Window, ...] = ("utterance", "full")

# Things a caller might ask a talking payphone; short and long, a few numbers.
QUESTIONS: tuple[str, ...] = (
    "Hello, is anybody there?",
    "Who am I speaking to?",
    "What time does the library open tomorrow morning?",
    "Can you tell me a story about the old lighthouse keeper?",
    "I would like to order a large pizza with mushrooms, please.",
    "Tell me a joke about a cat.",
    "How far is it to the train station from here?",
    "Could you call me back in ten minutes?",
    "What is the weather going to be like this weekend?",
    "My grandmother used to live on this street when she was young.",
    "Do you know any good songs about the sea?",
    "Please connect me to the operator.",
    "Why is the sky blue during the day?",
    "I think I dialed the wrong number, sorry about that.",
    "What is your favorite color?",
    "Is it going to rain later today?",
)

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SPELLING = {"ok": "okay", "mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def number_words(n: int) -> str:
    """0..999999 in words ("twenty one"), so "10" and "ten" compare equal."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    if n < 1_000_000:
        thousands, rest = divmod(n, 1000)
        return (
            number_words(thousands) + " thousand" + ("" if rest == 0 else " " + number_words(rest))
        )
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize_text(text: str) -> list[str]:
    """Words for WER: lower case, no punctuation or apostrophes, numbers spelled out."""
    text = text.lower().replace("'", "").replace("’", "")
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", text)
    words = re.sub(r"[^a-z]+", " ", text).split()
    return [_SPELLING.get(w, w) for w in words]


def word_edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i, *([0] * len(hypothesis))]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (ref_word != hyp_word),
            )
        previous = current
    return previous[-1]


def word_error_rate(references: Iterable[str], hypotheses: Iterable[str]) -> float:
    """Corpus WER in percent: total edits over total reference words, after normalising."""
    edits = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref = normalize_text(reference)
        edits += word_edits(ref, normalize_text(hypothesis))
        words += len(ref)
    return 100.0 * edits / max(1, words)


# -- test audio ----------------------------------------------------------------------------


def to_16k(pcm: Pcm, rate: int) -> Pcm:
    """Resample int16 mono PCM to 16 kHz with soxr."""
    if rate == SAMPLE_RATE:
        return pcm
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)


@functools.cache
def _piper_voice(path: str) -> Any:
    from payphone.speech.tts import load_voice

    return load_voice(Path(path))


def speak_piper(
    settings: Settings, text: str, length_scale: float = 1.0, deterministic: bool = False
) -> Pcm:
    """The demo Piper voice saying `text`, 16 kHz int16.

    Piper draws random noise inside its model, so every rendering differs a little;
    `deterministic` turns that noise off (tests want the same audio every run).
    """
    from piper.config import SynthesisConfig

    from payphone.models import resolve_voice

    voice = _piper_voice(str(resolve_voice(settings)))
    config = SynthesisConfig(length_scale=length_scale)
    if deterministic:
        config.noise_scale = config.noise_w_scale = 0.0
    chunks = voice.synthesize(text, config)
    pcm = np.concatenate([chunk.audio_int16_array for chunk in chunks])
    return to_16k(pcm, int(voice.config.sample_rate))


def speak_espeak(text: str, voice: str = "en-us", speed: int = 150) -> Pcm:
    """espeak-ng saying `text` (a second, very different synthetic speaker), 16 kHz int16."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(
            [exe, "-v", voice, "-s", str(speed), "-w", str(out), text], check=True, timeout=30
        )
        with wave.open(str(out), "rb") as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return to_16k(pcm, rate)


@dataclass(frozen=True)
class Rendition:
    """One synthetic speaker: Piper at a length scale, or an espeak-ng voice at a speed."""

    engine: str
    voice: str = ""
    speed: float = 1.0
    deterministic: bool = False

    @property
    def name(self) -> str:
        if self.engine == "piper":
            return f"piper x{self.speed:g}"
        return f"espeak {self.voice} {self.speed:g}wpm"

    def speak(self, settings: Settings, text: str) -> Pcm:
        if self.engine == "piper":
            return speak_piper(settings, text, self.speed, self.deterministic)
        return speak_espeak(text, self.voice, int(self.speed))


RENDITIONS: tuple[Rendition, ...] = (
    Rendition("piper", speed=0.8),
    Rendition("piper", speed=1.0),
    Rendition("piper", speed=1.3),
    Rendition("espeak", "en-us", 150),
    Rendition("espeak", "en-gb", 180),
    Rendition("espeak", "en-us+f3", 130),
)


@dataclass(frozen=True)
class Clip:
    """One spoken question with its text, padded with a little silence as the VAD would."""

    text: str
    rendition: str
    pcm: Pcm


def pad_silence(pcm: Pcm, before_s: float = 0.3, after_s: float = 0.2) -> Pcm:
    """Silence around speech, like the VAD's pre-roll and tail."""
    before = np.zeros(int(before_s * SAMPLE_RATE), dtype=np.int16)
    after = np.zeros(int(after_s * SAMPLE_RATE), dtype=np.int16)
    return np.concatenate([before, pcm, after])


def question_set(
    settings: Settings,
    questions: Sequence[str] = QUESTIONS,
    renditions: Sequence[Rendition] = RENDITIONS,
) -> list[Clip]:
    """Every question in every rendition."""
    return [
        Clip(text, r.name, pad_silence(r.speak(settings, text)))
        for r in renditions
        for text in questions
    ]


def utterance_of_length(settings: Settings, seconds: float) -> tuple[str, Pcm]:
    """Whole Piper questions joined to fill `seconds`, padded with silence to exactly that."""
    target = int(seconds * SAMPLE_RATE)
    texts: list[str] = []
    parts: list[Pcm] = []
    gap = np.zeros(int(0.15 * SAMPLE_RATE), dtype=np.int16)
    used = 0
    for text in sorted(QUESTIONS, key=len):
        pcm = speak_piper(settings, text)
        if used + len(pcm) + len(gap) > target - int(0.2 * SAMPLE_RATE):
            continue
        texts.append(text)
        parts += [pcm, gap]
        used += len(pcm) + len(gap)
    if not parts:  # shorter than any question: crop the shortest
        pcm = speak_piper(settings, min(QUESTIONS, key=len))[: target - int(0.2 * SAMPLE_RATE)]
        texts, parts = [min(QUESTIONS, key=len)], [pcm]
    joined = np.concatenate(parts)[:target]
    return " ".join(texts), np.concatenate([joined, np.zeros(target - len(joined), np.int16)])


# -- the benchmark -------------------------------------------------------------------------


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 1)


def main(
    settings: Settings, trials: int = 5, lengths: Sequence[float] = (1, 3, 6, 10)
) -> dict[str, Any]:
    """Print latency by length (median of `trials` runs) and WER for both windows."""
    runs = trials
    from payphone.models import resolve_whisper
    from payphone.speech.stt import WhisperTranscriber

    started = time.perf_counter()
    stt = WhisperTranscriber(resolve_whisper(settings), settings.stt)
    print(f"model loaded and warmed in {time.perf_counter() - started:.1f} s")

    latency: dict[str, dict[str, float]] = {"utterance": {}, "full": {}}
    print(f"latency, median of {runs} runs:")
    for seconds in lengths:
        _, pcm = utterance_of_length(settings, seconds)
        cells = []
        for window in WINDOWS:
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                stt.transcribe_sync(pcm, window)
                times.append(time.perf_counter() - t0)
            latency[window][f"{seconds:g}s"] = _median_ms(times)
            cells.append(f"{window} {latency[window][f'{seconds:g}s']:7.1f} ms")
        print(f"  {seconds:4g} s audio: " + "   ".join(cells))

    clips = question_set(settings)
    wer: dict[str, float] = {}
    by_rendition: dict[str, dict[str, float]] = {}
    for window in WINDOWS:
        heard = [stt.transcribe_sync(clip.pcm, window).text for clip in clips]
        wer[window] = round(word_error_rate([c.text for c in clips], heard), 2)
        for name in dict.fromkeys(c.rendition for c in clips):
            pairs = [(c.text, h) for c, h in zip(clips, heard, strict=True) if c.rendition == name]
            refs, hyps = zip(*pairs, strict=True)
            by_rendition.setdefault(name, {})[window] = round(word_error_rate(refs, hyps), 2)
    print(f"WER on {len(clips)} questions ({len(RENDITIONS)} speakers):")
    for name, row in by_rendition.items():
        print(f"  {name:24s} utterance {row['utterance']:5.1f} %   full {row['full']:5.1f} %")
    print(f"  {'all':24s} utterance {wer['utterance']:5.1f} %   full {wer['full']:5.1f} %")

    return {
        "stt_utterance_ms": latency["utterance"].get("3s"),
        "stt_full_ms": latency["full"].get("3s"),
        "latency_ms": latency,
        "wer_utterance": wer["utterance"],
        "wer_full": wer["full"],
        "wer_by_speaker": by_rendition,
        "clips": len(clips),
        "runs": runs,
    }
