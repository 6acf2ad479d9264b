"""Test audio: real synthetic speech (Piper, espeak-ng), noise, and where the speech really is.

Shared by the VAD and STT tests (and anyone else who needs a caller's voice).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from payphone.bench.stt import SAMPLE_RATE, speak_espeak, speak_piper, word_error_rate
from payphone.config import Settings
from payphone.pcm import Pcm

__all__ = [
    "SAMPLE_RATE",
    "add_noise",
    "piper",
    "place",
    "silence",
    "speak_espeak",
    "speak_piper",
    "speech_bounds",
    "word_error_rate",
]


def silence(seconds: float) -> Pcm:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def place(speech: Pcm, before_s: float, after_s: float) -> tuple[Pcm, int]:
    """Speech with silence around it, and the sample index where the speech begins."""
    lead = silence(before_s)
    return np.concatenate([lead, speech, silence(after_s)]), len(lead)


def add_noise(pcm: Pcm, snr_db: float, reference: Pcm | None = None, seed: int = 0) -> Pcm:
    """White noise at `snr_db` below the RMS of `reference` (default: `pcm` itself)."""
    ref = (reference if reference is not None else pcm).astype(np.float64)
    rms = float(np.sqrt(np.mean(np.square(ref))))
    rng = np.random.default_rng(seed)
    noise: npt.NDArray[np.float64] = rng.standard_normal(len(pcm)) * rms * 10 ** (-snr_db / 20)
    return np.clip(pcm.astype(np.float64) + noise, -32768, 32767).astype(np.int16)


def speech_bounds(speech: Pcm, threshold: float = 0.02) -> tuple[int, int]:
    """First and one-past-last sample louder than `threshold` of the peak (clean speech only)."""
    loud = np.abs(speech.astype(np.float64)) > threshold * float(np.max(np.abs(speech)))
    first = int(np.argmax(loud))
    last = len(loud) - int(np.argmax(loud[::-1]))
    return first, last


def piper(settings: Settings, text: str, length_scale: float = 1.0) -> Pcm:
    """Piper's demo voice at 16 kHz, the same samples every run (Piper's noise off)."""
    return speak_piper(settings, text, length_scale, deterministic=True)
