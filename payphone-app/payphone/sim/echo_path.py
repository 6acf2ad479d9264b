"""The handset's own echo: what the earpiece plays leaking back into the mouthpiece.

In a real handset the earpiece sits a few centimetres from the mouthpiece: the persona's voice
comes back 5-40 ms later, quieter, filtered by the handset's plastic and slightly distorted by
a small speaker driven hard. `EchoPath` models that as a stream: the earpiece's samples go in
at its rate, and out come, at the mic's rate and on the same clock,

- the reference: what the earpiece played, resampled and nothing else (what an echo canceller
  is given), and
- the echo: the same sound soft-clipped (tanh), band-limited to the telephone band (Butterworth
  300-3400 Hz), attenuated by `db` and delayed by `delay_ms`.

Resampling is soxr's streaming cubic ("QQ"): its output keeps up with its input within a sample
or two, where the higher qualities hold back tens of milliseconds, and the band filter before
it leaves nothing above 3.4 kHz to alias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr
from scipy.signal import butter, sosfilt

from payphone.pcm import Pcm

DB_RANGE = (-60.0, 0.0)
DELAY_MS_RANGE = (0.0, 200.0)
BAND_HZ = (300.0, 3400.0)
BAND_ORDER = 4
CLIP_AT = 0.8 * 32768  # tanh knee: a -20 dBFS voice passes within 0.1 dB, full scale loses 2 dB

Samples = npt.NDArray[np.float32]


class EchoSettingError(ValueError):
    """An echo setting out of range; the message names the setting and what is allowed."""


@dataclass(frozen=True)
class HandsetEcho:
    """How loud (`db`, -60 to 0, relative to what the earpiece plays) and how late (`delay_ms`,
    0 to 200) the earpiece comes back into the mic."""

    db: float = -10.0
    delay_ms: float = 20.0

    def __post_init__(self) -> None:
        for name, value, (low, high), unit in (
            ("echo-db", self.db, DB_RANGE, "dB"),
            ("echo-delay-ms", self.delay_ms, DELAY_MS_RANGE, "ms"),
        ):
            if not low <= value <= high:  # NaN fails too
                raise EchoSettingError(
                    f"--{name}: {value:g} is out of range; allowed: {low:g} to {high:g} {unit}"
                )


def echo_settings(db: float | None, delay_ms: float | None) -> HandsetEcho | None:
    """The command line's `--echo-db` / `--echo-delay-ms`: None (no echo) without `--echo-db`."""
    if db is None:
        if delay_ms is not None:
            raise EchoSettingError("--echo-delay-ms: needs --echo-db (the echo is off without it)")
        return None
    return HandsetEcho(db) if delay_ms is None else HandsetEcho(db, delay_ms)


class EchoPath:
    """Earpiece samples in (`feed`), reference and echo at the mic's rate out (`take`).

    Sample `j` of both outputs lies at the same instant as the earpiece's input position
    `j * in_rate / out_rate`; the echo's sample `j` carries the sound of the reference's
    sample `j - delay_samples`.
    """

    def __init__(self, settings: HandsetEcho, in_rate: int, out_rate: int) -> None:
        self.settings = settings
        self.gain = float(10 ** (settings.db / 20))
        self.delay_samples = round(settings.delay_ms * out_rate / 1000)
        self._sos = butter(BAND_ORDER, BAND_HZ, btype="bandpass", fs=in_rate, output="sos")
        self._zi = np.zeros((self._sos.shape[0], 2))
        self._to_ref = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="QQ")
        self._to_echo = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="QQ")
        self._ref: Samples = np.zeros(0, dtype=np.float32)
        self._echo: Samples = np.zeros(self.delay_samples, dtype=np.float32)

    @property
    def available(self) -> int:
        """Samples `take` can hand out now."""
        return min(len(self._ref), len(self._echo))

    def feed(self, played: Pcm) -> None:
        """The earpiece's next samples, in order, silence included."""
        sound = np.asarray(played, dtype=np.float64)
        handset, self._zi = sosfilt(self._sos, CLIP_AT * np.tanh(sound / CLIP_AT), zi=self._zi)
        echo = self._to_echo.resample_chunk((handset * self.gain).astype(np.float32))
        ref = self._to_ref.resample_chunk(sound.astype(np.float32))
        self._ref = np.concatenate([self._ref, ref])
        self._echo = np.concatenate([self._echo, echo])

    def take(self, n: int) -> tuple[Samples, Samples]:
        """The next `n` samples of (reference, echo), float on the int16 scale."""
        if n > self.available:
            raise ValueError(f"only {self.available} samples are ready, not {n}")
        ref, self._ref = self._ref[:n], self._ref[n:]
        echo, self._echo = self._echo[:n], self._echo[n:]
        return ref, echo
