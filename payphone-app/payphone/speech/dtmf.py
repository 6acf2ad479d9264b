"""In-band DTMF: the keypad heard in the handset audio, one digit per key press.

A streaming Goertzel detector. Audio is brought to 8 kHz (soxr for any other rate) and cut into
12.75 ms windows every 6.4 ms; each window's single-bin DFTs at the eight DTMF frequencies (what
Goertzel computes, done here as one numpy product for all windows and bins) name a candidate key
when one row tone and one column tone stand out and hold most of the energy. A run of candidate
windows becomes a digit only after a stricter look at the run:

- long enough: its tone amplitude summed over windows, over the peak, spans `MIN_TONE_MS`
  (tones of 40 ms pass, 20 ms do not);
- on frequency: the phase advance of each tone from window to window measures its frequency to
  about a hertz; ±1.5% passes, beyond ±2.5% fails (the standard allows rejecting from 3.5%);
- a clean pair: a least-squares fit of the two tones and their second harmonics must explain
  most of the energy, harmonics must be weak, twist within 8 dB (row louder) / 4 dB (column
  louder), and no other strong, prominent spectral peak (a voice's other harmonics).

Speech, hum, hiss and clicks fail these. A digit is reported once per press; the key must go
quiet for `GAP_WINDOWS` windows (about 20 ms) before it counts again.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from payphone.log import get_logger
from payphone.pcm import Pcm
from payphone.speech.tones import DTMF_COLUMNS, DTMF_KEYS, DTMF_ROWS

log = get_logger(__name__)

Floats = npt.NDArray[np.float64]

RATE = 8000
WINDOW = 102  # 12.75 ms: rows 73-89 Hz apart stay separable with a rectangular window
HOP = 51
FREQS = np.array(DTMF_ROWS + DTMF_COLUMNS)
FULL_SCALE_POWER = 32767.0**2 / 2.0  # power of a full-scale sine

# per-window candidate (loose; the run check below is the strict one)
WINDOW_MIN_DBFS = -50.0
GROUP_DOMINANCE_DB = 6.0
WINDOW_TWIST_DB = (-10.0, 14.0)
WINDOW_TONE_FRACTION = 0.5

# per-run acceptance
MIN_TONE_MS = 27.0
MIN_TONE_DBFS = -42.0
MAX_NORMAL_TWIST_DB = 9.0  # row louder: 8 dB must pass, 10 dB must fail
MAX_REVERSE_TWIST_DB = 5.0  # column louder: 4 dB must pass, 6 dB must fail
MAX_DETUNE = 0.025
MIN_TONE_FRACTION = 0.75
MAX_HARMONIC_DB = -12.0
HARMONIC_CLASH_HZ = 40.0
FFT_SIZE = 2048
OTHER_BAND_HZ = (300.0, 3400.0)
MAX_OTHER_DB = -20.0
MAX_PROMINENCE_DB = 15.0
CORE_WINDOWS = 8
GAP_WINDOWS = 3
SWITCH_WINDOWS = 2
KEEP_SAMPLES = 1024


def _db(ratio: float) -> float:
    return 10.0 * float(np.log10(max(ratio, 1e-20)))


def _bins(window: Floats) -> npt.NDArray[np.complex128]:
    """(WINDOW, 8) matrix: multiplying windows by it gives their DFT at the DTMF frequencies."""
    n = np.arange(WINDOW)[:, None]
    return window[:, None] * np.exp(-2j * np.pi * n * FREQS[None, :] / RATE)


RECT_BINS = _bins(np.ones(WINDOW))
# Hann for the phase measure: its far sidelobes keep the other group's tone out of it
HANN = np.hanning(WINDOW + 2)[1:-1]
HANN_BINS = _bins(HANN)
TONE_POWER_SCALE = 2.0 / WINDOW**2  # |X|^2 -> power of the sine (A^2 / 2)
WINDOW_FLOOR = FULL_SCALE_POWER * 10.0 ** (WINDOW_MIN_DBFS / 10.0)
DOMINANCE = 10.0 ** (GROUP_DOMINANCE_DB / 10.0)


@dataclass
class _Run:
    """Consecutive windows that looked like the same key (with short dropouts)."""

    key: int
    starts: list[int] = field(default_factory=list)
    power: list[float] = field(default_factory=list)
    phase: list[npt.NDArray[np.complex128]] = field(default_factory=list)
    edges: list[float] = field(default_factory=list)  # windows around the hits: tone power
    misses: int = 0
    emitted: bool = False

    @property
    def row(self) -> int:
        return self.key // 4

    @property
    def col(self) -> int:
        return 4 + self.key % 4

    def add(self, start: int, power: Floats, phase: npt.NDArray[np.complex128]) -> None:
        self.starts.append(start)
        self.power.append(float(power[self.row] + power[self.col]))
        self.phase.append(np.array([phase[self.row], phase[self.col]]))
        self.misses = 0

    def add_edge(self, power: Floats) -> None:
        """A window that was not a hit but may hold the tone's start, end or a dropout."""
        self.edges.append(float(power[self.row] + power[self.col]))

    def tone_ms(self) -> float:
        """Amplitude summed over windows, over the peak: how long the tone lasted at full strength.

        Windows overlap by half, so each sample counts twice over WINDOW = 2 * HOP samples.
        """
        peak = max(self.power)
        ratio = np.minimum(np.asarray(self.power + self.edges) / peak, 1.0)
        return 1000.0 * HOP * float(np.sum(np.sqrt(ratio))) / RATE


@dataclass(frozen=True)
class ToneFit:
    """What the strict look at a run measured."""

    row_hz: float
    col_hz: float
    row_dbfs: float
    col_dbfs: float
    twist_db: float
    fraction: float
    harmonic_db: float
    other_db: float
    prominence_db: float
    tone_ms: float


class DtmfDetector:
    """Feed mono int16 audio at `sample_rate` in any frame size; get digits as they complete."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler: soxr.ResampleStream | None = None
        self._reset()

    def _reset(self) -> None:
        if self.sample_rate != RATE:
            self._resampler = soxr.ResampleStream(self.sample_rate, RATE, 1, dtype="float32")
        self._buf: Floats = np.zeros(0)
        self._buf0 = 0  # absolute index of _buf[0], in 8 kHz samples
        self._next = 0  # absolute start of the next window
        self._run: _Run | None = None
        self._pending: _Run | None = None
        self._prev_power: Floats = np.zeros(len(FREQS))

    def feed(self, pcm: Pcm) -> list[str]:
        """Digits whose tone was confirmed inside this audio (state carries across calls)."""
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return self._analyse(x.astype(np.float64))

    def flush(self) -> list[str]:
        """End of stream: digits still being confirmed, then a clean state for a new stream."""
        tail: Floats = np.zeros(0)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        pad = np.zeros(WINDOW + (GAP_WINDOWS + 2) * HOP)
        digits = self._analyse(np.concatenate([np.asarray(tail, dtype=np.float64), pad]))
        self._reset()
        return digits

    def _analyse(self, x: Floats) -> list[str]:
        self._buf = np.concatenate([self._buf, x])
        end = self._buf0 + len(self._buf)
        count = (end - self._next - WINDOW) // HOP + 1
        digits: list[str] = []
        if count > 0:
            offset = self._next - self._buf0
            frames = np.lib.stride_tricks.sliding_window_view(self._buf[offset:], WINDOW)[::HOP]
            frames = frames[:count]
            power = np.abs(frames @ RECT_BINS) ** 2 * TONE_POWER_SCALE
            phase = frames @ HANN_BINS
            total = np.var(frames, axis=1)  # a DC offset (mic bias) is not sound
            for i in range(count):
                digit = self._step(self._next + i * HOP, power[i], phase[i], float(total[i]))
                if digit is not None:
                    digits.append(digit)
            self._next += count * HOP
        trim = min(self._next, end - KEEP_SAMPLES) - self._buf0
        if trim > 0:
            self._buf = self._buf[trim:]
            self._buf0 += trim
        return digits

    def _candidate(self, power: Floats, total: float) -> int:
        """Key index (row * 4 + column) this window looks like, or -1."""
        rows, cols = power[:4], power[4:]
        r, c = int(np.argmax(rows)), int(np.argmax(cols))
        pr, pc = float(rows[r]), float(cols[c])
        if pr < WINDOW_FLOOR or pc < WINDOW_FLOOR or pr + pc < WINDOW_TONE_FRACTION * total:
            return -1
        second_r, second_c = np.partition(rows, 2)[2], np.partition(cols, 2)[2]
        if pr < DOMINANCE * second_r or pc < DOMINANCE * second_c:
            return -1
        twist = _db(pr / pc)
        if not WINDOW_TWIST_DB[0] <= twist <= WINDOW_TWIST_DB[1]:
            return -1
        return r * 4 + c

    def _step(
        self, start: int, power: Floats, phase: npt.NDArray[np.complex128], total: float
    ) -> str | None:
        key = self._candidate(power, total)
        prev, self._prev_power = self._prev_power, power
        run = self._run
        if run is not None and key == run.key:
            run.add(start, power, phase)
            self._pending = None
        elif run is None:
            if key < 0:
                return None
            self._run = run = _Run(key)
            run.add_edge(prev)
            run.add(start, power, phase)
        else:
            run.misses += 1
            if run.misses >= GAP_WINDOWS:
                self._run = None
                if key < 0:
                    return None
            if key < 0:
                self._pending = None
                run.add_edge(power)
            else:
                # another key: a new press only if it holds, else one odd window of this one
                if self._pending is None or self._pending.key != key:
                    self._pending = _Run(key)
                    self._pending.add_edge(prev)
                self._pending.add(start, power, phase)
                if len(self._pending.starts) < SWITCH_WINDOWS and self._run is not None:
                    return None
                self._run, self._pending = self._pending, None
            run = self._run
        if run is None or run.emitted or run.tone_ms() < MIN_TONE_MS:
            return None
        fit = self._fit(run)
        if fit is None or not self._accept(fit):
            return None
        run.emitted = True
        digit = DTMF_KEYS[run.key // 4][run.key % 4]
        log.debug(
            "dtmf_digit",
            digit=digit,
            tone_ms=round(fit.tone_ms, 1),
            twist_db=round(fit.twist_db, 1),
            row_hz=round(fit.row_hz, 1),
            col_hz=round(fit.col_hz, 1),
        )
        return digit

    def _fit(self, run: _Run) -> ToneFit | None:
        """Measure the run's last strong windows: frequencies, levels, twist, purity."""
        peak = max(run.power)
        strong = [i for i in range(len(run.power)) if run.power[i] >= 0.5 * peak]
        first, last = strong[-CORE_WINDOWS:][0], strong[-1]
        a, b = run.starts[first], run.starts[last] + WINDOW
        x = self._buf[a - self._buf0 : b - self._buf0]
        if a < self._buf0 or len(x) != b - a or last == first:
            return None
        x = x - np.mean(x)
        total = float(np.mean(x**2))
        r, c = divmod(run.key, 4)
        nominal = np.array([DTMF_ROWS[r], DTMF_COLUMNS[c]])
        offsets = self._offsets(run, first, last, nominal)
        if np.max(np.abs(offsets) / nominal) > MAX_DETUNE:
            return None  # off frequency (and a fit could be degenerate)
        measured = nominal + offsets
        # the row's second harmonic can sit on the column tone: then it cannot be told apart
        freqs = [*measured, 2.0 * measured[1]]
        if abs(2.0 * measured[0] - measured[1]) > HARMONIC_CLASH_HZ:
            freqs.append(2.0 * measured[0])
        arg = 2.0 * np.pi * np.arange(len(x))[:, None] * np.array(freqs)[None, :] / RATE
        basis = np.concatenate([np.cos(arg), np.sin(arg)], axis=1)
        coef = np.linalg.lstsq(basis, x, rcond=None)[0]
        k = len(freqs)
        p = np.zeros(4)
        p[:k] = (coef[:k] ** 2 + coef[k:] ** 2) / 2.0  # row, col, 2*col, 2*row
        p += 1e-9
        other_db, prominence_db = self._other_peak(x, measured)
        return ToneFit(
            row_hz=float(measured[0]),
            col_hz=float(measured[1]),
            row_dbfs=_db(p[0] / FULL_SCALE_POWER),
            col_dbfs=_db(p[1] / FULL_SCALE_POWER),
            twist_db=_db(p[0] / p[1]),
            fraction=float(p[0] + p[1]) / max(total, 1e-9),
            harmonic_db=max(_db(p[3] / p[0]), _db(p[2] / p[1])),
            other_db=other_db,
            prominence_db=prominence_db,
            tone_ms=run.tone_ms(),
        )

    @staticmethod
    def _other_peak(x: Floats, tones: Floats) -> tuple[float, float]:
        """The strongest spectral peak in the voice band away from the tones and their harmonics:
        dB over the weaker tone, and dB over the band's median (how much it stands out).

        A voice has more harmonics that stand out; a keypad has none, noise has no peaks.
        """
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=FFT_SIZE)) ** 2
        f = np.fft.rfftfreq(FFT_SIZE, 1.0 / RATE)
        guard = 3.0 * RATE / len(x)  # past the Hann main lobe and first sidelobe
        away = (f >= OTHER_BAND_HZ[0]) & (f <= OTHER_BAND_HZ[1])
        levels = []
        for tone in (*tones, *(2.0 * tones)):
            away &= np.abs(f - tone) > guard
        for tone in tones:
            levels.append(float(np.max(spec[np.abs(f - tone) <= guard / 2.0])))
        if not np.any(away):
            return -99.0, 0.0
        peak = float(np.max(spec[away]))
        floor = float(np.median(spec[away]))
        return _db(peak / max(min(levels), 1e-9)), _db(peak / max(floor, 1e-9))

    @staticmethod
    def _offsets(run: _Run, first: int, last: int, nominal: Floats) -> Floats:
        """Each tone's frequency error from its phase advance over one hop (±78 Hz range)."""
        pairs = [
            run.phase[i] * np.conj(run.phase[i - 1])
            for i in range(first + 1, last + 1)
            if run.starts[i] - run.starts[i - 1] == HOP
        ]
        if not pairs:
            return np.zeros(2)
        turn = np.angle(np.sum(pairs, axis=0) * np.exp(-2j * np.pi * nominal * HOP / RATE))
        return np.asarray(turn * RATE / (2.0 * np.pi * HOP), dtype=np.float64)

    @staticmethod
    def _accept(fit: ToneFit) -> bool:
        """The strict checks (frequency was checked by `_fit`)."""
        return (
            min(fit.row_dbfs, fit.col_dbfs) >= MIN_TONE_DBFS
            and -MAX_REVERSE_TWIST_DB <= fit.twist_db <= MAX_NORMAL_TWIST_DB
            and fit.fraction >= MIN_TONE_FRACTION
            and fit.harmonic_db <= MAX_HARMONIC_DB
            and not (fit.other_db > MAX_OTHER_DB and fit.prominence_db > MAX_PROMINENCE_DB)
        )


def read_wav(path: Path) -> tuple[Pcm, int]:
    """A WAV file as int16 mono (channels mixed down) and its sample rate."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 16).astype(np.float64)
    elif width in (2, 4):
        ints = np.frombuffer(raw, dtype=np.int16 if width == 2 else np.int32)
        samples = ints.astype(np.float64) / (1 if width == 2 else 65536)
    else:
        raise ValueError(f"{path}: unsupported sample width {width} bytes")
    mono = samples.reshape(-1, channels).mean(axis=1)
    return np.clip(np.rint(mono), -32768, 32767).astype(np.int16), rate


def detect_wav(path: Path) -> str:
    """The DTMF digits heard in a WAV file (any rate, any channel count)."""
    pcm, rate = read_wav(path)
    detector = DtmfDetector(rate)
    return "".join(detector.feed(pcm) + detector.flush())
