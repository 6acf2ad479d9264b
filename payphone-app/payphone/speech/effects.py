"""Voice colour for the personas, streaming: one demo voice must still sound like four people.

Every stage keeps its state between chunks (filter memories, oscillator phase, resampler delay
line), so a sentence fed in pieces sounds exactly like the sentence fed whole: no clicks at chunk
edges. Audio here is float32 mono in [-1, 1] at one fixed rate per chain.

Effects (the persona file's `voice.effect`):
- `none`: the voice as Piper speaks it (the global telephone line colour still applies).
- `telephone`: always the 300-3400 Hz line colour, whatever the global setting.
- `noir`: a narrower, slightly overdriven band (an old radio drama in the rain).
- `elderly`: a slow amplitude quaver; with `pitch_semitones` it raises the voice.
- `robot`: 40 Hz ring modulation and a bit-crush (COMP-U-TRON 3000).
`pitch_semitones` shifts the pitch of any effect by resampling; the synthesizer stretches Piper's
`length_scale` by `pitch_ratio` first, so speed stays what the persona asked for.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import soxr
from scipy import ndimage, signal

Audio = npt.NDArray[np.float32]

EFFECTS = ("none", "telephone", "noir", "elderly", "robot")
TELEPHONE_BAND_HZ = (300.0, 3400.0)
NOIR_BAND_HZ = (380.0, 2800.0)
ROBOT_RING_HZ = 40.0
ROBOT_BITS = 7
ELDERLY_QUAVER_HZ = 5.5
ELDERLY_QUAVER_DEPTH = 0.18


class Stage(ABC):
    """One streaming effect: `process` each chunk in order, then `flush` once at the end."""

    @abstractmethod
    def process(self, audio: Audio) -> Audio: ...

    def flush(self) -> Audio:
        """Audio still held inside the stage (delay lines); empty for memoryless stages."""
        return np.zeros(0, dtype=np.float32)


class BandPass(Stage):
    """Butterworth band-pass with its filter memory carried across chunks (no edge clicks)."""

    def __init__(self, rate: int, low_hz: float, high_hz: float, order: int = 4) -> None:
        high = min(high_hz, 0.45 * rate)
        self._sos = signal.butter(order, [low_hz, high], btype="bandpass", fs=rate, output="sos")
        self._zi = np.zeros((self._sos.shape[0], 2))

    def process(self, audio: Audio) -> Audio:
        if not len(audio):  # a resampler before us may hold back a whole small chunk
            return audio
        out, self._zi = signal.sosfilt(self._sos, audio, zi=self._zi)
        return np.asarray(out, dtype=np.float32)


class Saturate(Stage):
    """Soft tanh overdrive: unity gain when quiet, rounded peaks (the leveler restores loudness)."""

    def __init__(self, drive: float = 2.5) -> None:
        self._drive = drive

    def process(self, audio: Audio) -> Audio:
        return (np.tanh(audio * self._drive) / self._drive).astype(np.float32)


class Oscillating(Stage):
    """A stage driven by a sine whose phase continues from chunk to chunk."""

    def __init__(self, rate: int, freq_hz: float) -> None:
        self._step = 2.0 * math.pi * freq_hz / rate
        self._phase = 0.0

    def _sine(self, n: int) -> npt.NDArray[np.float64]:
        phases = self._phase + self._step * np.arange(n)
        self._phase = (self._phase + self._step * n) % (2.0 * math.pi)
        return np.sin(phases)


class RingModulator(Oscillating):
    """Multiply by a low sine: the classic metallic robot (mostly wet, a little dry for words)."""

    def __init__(self, rate: int, freq_hz: float = ROBOT_RING_HZ, wet: float = 0.85) -> None:
        super().__init__(rate, freq_hz)
        self._wet = wet

    def process(self, audio: Audio) -> Audio:
        carrier = self._sine(len(audio))
        return (audio * ((1.0 - self._wet) + self._wet * carrier)).astype(np.float32)


class Quaver(Oscillating):
    """Slow amplitude wobble, the tremble of an old voice."""

    def __init__(
        self, rate: int, freq_hz: float = ELDERLY_QUAVER_HZ, depth: float = ELDERLY_QUAVER_DEPTH
    ) -> None:
        super().__init__(rate, freq_hz)
        self._depth = depth

    def process(self, audio: Audio) -> Audio:
        return (audio * (1.0 - self._depth * 0.5 * (1.0 + self._sine(len(audio))))).astype(
            np.float32
        )


class BitCrush(Stage):
    """Quantise to a few bits: the 8-bit home computer grit (memoryless, so chunk-safe)."""

    def __init__(self, bits: int = ROBOT_BITS) -> None:
        self._levels = float(2 ** (bits - 1))

    def process(self, audio: Audio) -> Audio:
        return (np.round(audio * self._levels) / self._levels).astype(np.float32)


class PitchShift(Stage):
    """Raise or lower pitch by resampling (duration shrinks by the same ratio; see module doc)."""

    def __init__(self, rate: int, semitones: float) -> None:
        self.ratio = pitch_ratio(semitones)
        self._stream = soxr.ResampleStream(rate * self.ratio, rate, 1, dtype="float32")

    def process(self, audio: Audio) -> Audio:
        return np.asarray(self._stream.resample_chunk(audio), dtype=np.float32)

    def flush(self) -> Audio:
        return np.asarray(
            self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True), dtype=np.float32
        )


def pitch_ratio(semitones: float) -> float:
    """Frequency ratio of a pitch shift: +12 semitones doubles it."""
    return float(2.0 ** (semitones / 12.0))


class EffectChain(Stage):
    """The stages of one voice, in order; flushing one stage feeds the rest."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)

    def process(self, audio: Audio) -> Audio:
        for stage in self.stages:
            audio = stage.process(audio)
        return audio

    def flush(self) -> Audio:
        tail = np.zeros(0, dtype=np.float32)
        for stage in self.stages:
            tail = np.concatenate([stage.process(tail) if len(tail) else tail, stage.flush()])
        return tail.astype(np.float32)


def build_chain(
    effect: str, rate: int, pitch_semitones: float = 0.0, telephone: bool = False
) -> EffectChain:
    """The chain for a persona's effect at `rate`; `telephone` adds the line colour last."""
    if effect not in EFFECTS:
        raise ValueError(f"unknown voice effect {effect!r}; known: {', '.join(EFFECTS)}")
    stages: list[Stage] = []
    if pitch_semitones:
        stages.append(PitchShift(rate, pitch_semitones))
    if effect == "robot":
        stages += [RingModulator(rate), BitCrush()]
    elif effect == "elderly":
        stages.append(Quaver(rate))
    elif effect == "noir":
        stages += [BandPass(rate, *NOIR_BAND_HZ, order=2), Saturate()]
    if telephone or effect == "telephone":
        stages.append(BandPass(rate, *TELEPHONE_BAND_HZ))
    return EffectChain(stages)


class Leveler:
    """Even loudness from sentence to sentence: each chunk to a target RMS, peaks held by a limiter.

    Piper's own per-sentence peak normalisation makes levels jump (a sentence with one loud
    plosive comes out quiet); this measures the RMS of the voiced part only (10 ms frames within
    `gate_db` of the loudest), applies one gain per chunk, then a look-ahead limiter whose gain
    curve is smooth (no distortion clicks) and never above what the ceiling allows.
    """

    def __init__(
        self,
        rate: int,
        target_dbfs: float = -18.0,
        ceiling_dbfs: float = -1.0,
        gate_db: float = 25.0,
        max_gain_db: float = 30.0,
        lookahead_ms: float = 5.0,
    ) -> None:
        self.target = 10.0 ** (target_dbfs / 20.0)
        self.ceiling = 10.0 ** (ceiling_dbfs / 20.0)
        self.gate = 10.0 ** (-gate_db / 20.0)
        self.max_gain = 10.0 ** (max_gain_db / 20.0)
        self.frame = max(1, rate // 100)
        self.window = max(3, int(rate * lookahead_ms / 1000) | 1)
        self.gain = 1.0

    def voiced_rms(self, audio: Audio) -> float:
        """RMS over the frames that carry the voice (silence between words does not count)."""
        n = len(audio) // self.frame
        if n == 0:
            return (
                float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
            )
        frames = audio[: n * self.frame].reshape(n, self.frame).astype(np.float64)
        rms = np.sqrt(np.mean(frames * frames, axis=1))
        loud = rms >= max(float(rms.max()) * self.gate, 1e-4)
        return float(np.sqrt(np.mean(np.square(rms[loud])))) if loud.any() else 0.0

    def process(self, audio: Audio) -> Audio:
        rms = self.voiced_rms(audio)
        if rms > 0.0:
            self.gain = min(self.target / rms, self.max_gain)
        out = audio.astype(np.float64) * self.gain
        peak = np.abs(out)
        if float(peak.max()) > self.ceiling:
            need = np.minimum(1.0, self.ceiling / np.maximum(peak, 1e-12))
            gain = ndimage.minimum_filter1d(need, self.window, mode="nearest")
            gain = ndimage.uniform_filter1d(gain, self.window, mode="nearest")
            out *= np.minimum(gain, need)
        return out.astype(np.float32)

    def carry(self, audio: Audio) -> Audio:
        """Trailing samples (filter tails) at the last chunk's gain, clipped at the ceiling."""
        return np.clip(audio * self.gain, -self.ceiling, self.ceiling).astype(np.float32)


def dbfs(audio: npt.ArrayLike) -> float:
    """RMS level in dB below full scale (float audio in [-1, 1] or int16 PCM)."""
    data = np.asarray(audio, dtype=np.float64)
    if np.issubdtype(np.asarray(audio).dtype, np.integer):
        data = data / 32768.0
    rms = float(np.sqrt(np.mean(data * data))) if len(data) else 0.0
    return 20.0 * math.log10(max(rms, 1e-12))
