"""Call-progress and key-press tones, generated in code to the US precise tone plan.

Everything is int16 mono PCM at any sample rate. Each burst starts and stops with a short
raised-cosine ramp, so nothing clicks; continuous dial tone loops seamlessly because its period
holds a whole number of cycles of every component.

Levels are per component tone in dBm0, as the plan gives them, and converted with
dBFS = dBm0 - 3.14 (G.711: a full-scale sine is +3.14 dBm0). Dial tone -13 dBm0 (about
-16 dBFS), ringback -19, busy, reorder and SIT -24, DTMF key feedback -13; the off-hook howler
is deliberately loud (-9 dBm0 per tone, four tones, peak still below full scale).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from payphone.pcm import Pcm

DBM0_TO_DBFS = -3.14
RAMP_MS = 5.0
FULL_SCALE = 32767.0
MAX_LOOP_S = 10.0

DTMF_ROWS: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
DTMF_COLUMNS: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS: tuple[str, ...] = ("123A", "456B", "789C", "*0#D")


@dataclass(frozen=True)
class Step:
    """One burst: these frequencies for `on_s` seconds (None: forever), then `off_s` of silence."""

    freqs: tuple[float, ...]
    on_s: float | None
    off_s: float = 0.0


@dataclass(frozen=True)
class TonePlan:
    """A call-progress signal: its bursts, whether the cadence repeats, and its level."""

    name: str
    steps: tuple[Step, ...]
    repeat: bool
    dbm0: float

    @property
    def continuous(self) -> bool:
        return any(step.on_s is None for step in self.steps)


DIAL = TonePlan("dial", (Step((350.0, 440.0), None),), repeat=True, dbm0=-13.0)
RINGBACK = TonePlan("ringback", (Step((440.0, 480.0), 2.0, 4.0),), repeat=True, dbm0=-19.0)
BUSY = TonePlan("busy", (Step((480.0, 620.0), 0.5, 0.5),), repeat=True, dbm0=-24.0)
REORDER = TonePlan("reorder", (Step((480.0, 620.0), 0.25, 0.25),), repeat=True, dbm0=-24.0)
# SIT "no circuit": three 380 ms segments played once before the announcement. GR-1162 allows
# 0-4 ms between segments; each segment ramps on its own, so the joins are the ramps.
SIT_NO_CIRCUIT = TonePlan(
    "sit_no_circuit",
    (Step((985.2,), 0.380), Step((1428.5,), 0.380), Step((1776.7,), 0.380)),
    repeat=False,
    dbm0=-24.0,
)
HOWLER = TonePlan(
    "howler", (Step((1400.0, 2060.0, 2450.0, 2600.0), 0.1, 0.1),), repeat=True, dbm0=-9.0
)
PLANS: dict[str, TonePlan] = {
    p.name: p for p in (DIAL, RINGBACK, BUSY, REORDER, SIT_NO_CIRCUIT, HOWLER)
}
DTMF_DBM0 = -13.0


def dbm0_to_amplitude(dbm0: float) -> float:
    """Peak sample value of one sine at this level (a full-scale sine is 0 dBFS)."""
    return FULL_SCALE * 10.0 ** ((dbm0 + DBM0_TO_DBFS) / 20.0)


def raised_cosine(n: int) -> npt.NDArray[np.float64]:
    """A rising ramp of n samples from 0 towards 1 (half a cosine period)."""
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n) if n > 0 else np.zeros(0)


def ramp_samples(rate: int, n_total: int, ramp_ms: float = RAMP_MS) -> int:
    """Ramp length in samples, shortened for bursts too short to hold two full ramps."""
    return min(round(rate * ramp_ms / 1000.0), n_total // 2)


def sines(
    freqs: Sequence[float], amplitudes: Sequence[float], rate: int, n: int, start: int = 0
) -> npt.NDArray[np.float64]:
    """Sum of sines at sample indices start..start+n (float; phase 0 at sample 0)."""
    idx = np.arange(start, start + n, dtype=np.float64)
    out = np.zeros(n)
    for f, a in zip(freqs, amplitudes, strict=True):
        # reduce the phase per sample so long streams keep full precision
        out += a * np.sin(2.0 * np.pi * np.mod(idx * (f / rate), 1.0))
    return out


def to_pcm(x: npt.NDArray[np.float64]) -> Pcm:
    """Float samples to int16, clipped (our levels never need the clip)."""
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def burst(
    freqs: Sequence[float],
    duration_s: float,
    rate: int,
    dbm0: float | Sequence[float],
    ramp_ms: float = RAMP_MS,
) -> Pcm:
    """A tone of these frequencies for `duration_s`, ramped in and out (ramps inside it).

    `dbm0` is one level for every tone or one per frequency (for twist tests).
    """
    levels = [dbm0] * len(freqs) if isinstance(dbm0, int | float) else list(dbm0)
    n = round(duration_s * rate)
    x = sines(freqs, [dbm0_to_amplitude(level) for level in levels], rate, n)
    r = ramp_samples(rate, n, ramp_ms)
    if r:
        ramp = raised_cosine(r)
        x[:r] *= ramp
        x[n - r :] *= ramp[::-1]
    return to_pcm(x)


def silence(duration_s: float, rate: int) -> Pcm:
    return np.zeros(round(duration_s * rate), dtype=np.int16)


def loop_samples(freqs: Sequence[float], rate: int) -> int:
    """Shortest length in samples holding a whole number of cycles of every frequency."""
    g = Fraction(rate)
    for f in freqs:
        q = Fraction(str(f))
        g = Fraction(math.gcd(g.numerator * q.denominator, q.numerator * g.denominator)) / (
            g.denominator * q.denominator
        )
    n = int(Fraction(rate) / g)
    if n > MAX_LOOP_S * rate:
        raise ValueError(f"{freqs} Hz at {rate} Hz has no seamless loop under {MAX_LOOP_S} s")
    return n


def period(plan: TonePlan, rate: int, gain_db: float = 0.0) -> Pcm:
    """One period of the plan, to be played end to end: it loops without a click.

    Continuous tone: a whole number of cycles, unramped (`ToneStream` ramps its start).
    Cadenced tone: every burst and its silence. One-shot plans: the whole signal.
    """
    if plan.continuous:
        freqs = plan.steps[0].freqs
        amp = dbm0_to_amplitude(plan.dbm0 + gain_db)
        return to_pcm(sines(freqs, [amp] * len(freqs), rate, loop_samples(freqs, rate)))
    parts: list[Pcm] = []
    for step in plan.steps:
        assert step.on_s is not None
        parts.append(burst(step.freqs, step.on_s, rate, plan.dbm0 + gain_db))
        parts.append(silence(step.off_s, rate))
    return np.concatenate(parts)


def fade(pcm: Pcm, rate: int, rising: bool, ramp_ms: float = RAMP_MS) -> Pcm:
    """Ramp the start (rising) or the end of `pcm` so it starts or stops without a click."""
    out = pcm.astype(np.float64)
    r = min(round(rate * ramp_ms / 1000.0), len(out))
    ramp = raised_cosine(r)
    if rising:
        out[:r] *= ramp
    else:
        out[len(out) - r :] *= ramp[::-1]
    return to_pcm(out)


class ToneStream:
    """Endless (or, for one-shot plans, finite) frames of a plan, for a sink to play.

    Continuous tone ramps in over its first 5 ms; `fade_out()` gives the few milliseconds that
    end any tone without a click wherever it is cut (play it instead of just stopping).
    """

    def __init__(self, plan: TonePlan, rate: int, frame_samples: int, gain_db: float = 0.0) -> None:
        self.plan = plan
        self.rate = rate
        self.frame_samples = frame_samples
        self._period = period(plan, rate, gain_db)
        self._pos = 0
        self._sent = 0  # samples handed out so far
        ramp_in = round(rate * RAMP_MS / 1000.0) if plan.continuous else 0
        self._ramp_in = raised_cosine(ramp_in)

    def __iter__(self) -> Iterator[Pcm]:
        return self

    def __next__(self) -> Pcm:
        n = self.frame_samples
        if not self.plan.repeat:
            if self._pos >= len(self._period):
                raise StopIteration
            frame = self._period[self._pos : self._pos + n]
            self._pos += len(frame)
            return frame
        idx = (self._pos + np.arange(n)) % len(self._period)
        frame = self._period[idx]
        self._pos = (self._pos + n) % len(self._period)
        if self._sent < len(self._ramp_in):  # the continuous tone's start, over any frame size
            ramp = self._ramp_in[self._sent : self._sent + n]
            head = frame[: len(ramp)].astype(np.float64) * ramp
            frame = np.concatenate([to_pcm(head), frame[len(ramp) :]])
        self._sent += n
        return frame

    def fade_out(self, ramp_ms: float = RAMP_MS) -> Pcm:
        """The next `ramp_ms` of the signal, ramped to silence: play it last when stopping."""
        n = round(self.rate * ramp_ms / 1000.0)
        if self.plan.repeat:
            tail = self._period[(self._pos + np.arange(n)) % len(self._period)]
            self._pos = (self._pos + n) % len(self._period)
        else:
            tail = self._period[self._pos : self._pos + n]
            self._pos = len(self._period)
        return fade(tail, self.rate, rising=False, ramp_ms=ramp_ms)


def render(plan: TonePlan, rate: int, seconds: float, gain_db: float = 0.0) -> Pcm:
    """The first `seconds` of a plan (one-shot plans stop at their end), ending without a click."""
    n = round(seconds * rate)
    stream = ToneStream(plan, rate, frame_samples=n, gain_db=gain_db)
    head = next(stream, np.zeros(0, dtype=np.int16))
    return fade(head, rate, rising=False)  # a cut mid-burst stops softly too


def dtmf_freqs(key: str) -> tuple[float, float]:
    """(row, column) frequencies of a keypad key: 0-9, *, #, A-D."""
    for r, row in enumerate(DTMF_KEYS):
        c = row.find(key.upper())
        if c >= 0 and len(key) == 1:
            return DTMF_ROWS[r], DTMF_COLUMNS[c]
    raise ValueError(f"not a DTMF key: {key!r}")


def dtmf(
    key: str,
    rate: int,
    duration_s: float = 0.1,
    dbm0: float = DTMF_DBM0,
    twist_db: float = 0.0,
) -> Pcm:
    """A key-press tone; `twist_db` > 0 makes the row (low) tone that much louder."""
    row, col = dtmf_freqs(key)
    return burst((row, col), duration_s, rate, (dbm0 + twist_db / 2.0, dbm0 - twist_db / 2.0))


def dtmf_sequence(digits: str, rate: int, on_s: float = 0.1, off_s: float = 0.1) -> Pcm:
    """Digits dialled as tones, each `on_s` long with `off_s` of silence after it."""
    parts: list[Pcm] = [silence(0.0, rate)]
    for key in digits:
        parts += [dtmf(key, rate, on_s), silence(off_s, rate)]
    return np.concatenate(parts)
