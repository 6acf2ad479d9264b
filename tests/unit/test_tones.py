"""Call-progress and DTMF tones: frequencies by FFT, cadences, levels, click-free edges, loops."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from payphone.speech import tones
from payphone.speech.dtmf import DtmfDetector
from payphone.speech.tones import (
    BUSY,
    DIAL,
    HOWLER,
    PLANS,
    REORDER,
    RINGBACK,
    SIT_NO_CIRCUIT,
    TonePlan,
    ToneStream,
)

RATES = [8000, 16000, 22050, 44100, 48000]
KEYS = "0123456789*#ABCD"


def peaks(x: npt.NDArray[np.int16], rate: int, count: int) -> list[float]:
    """The `count` strongest spectral peaks (Hz), finely resolved by zero-padding."""
    n = 1 << int(np.ceil(np.log2(len(x) * 8)))
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    found: list[float] = []
    for _ in range(count):
        i = int(np.argmax(spec))
        found.append(float(freqs[i]))
        spec[np.abs(freqs - freqs[i]) < 25.0] = 0.0  # knock out this peak's main lobe
    return sorted(found)


def segments(x: npt.NDArray[np.int16], rate: int) -> list[tuple[bool, float]]:
    """(sounding, seconds) runs: silence is zero samples for over 2 ms (not a zero crossing)."""
    on = x != 0
    edges = np.flatnonzero(np.diff(on.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(x)]
    runs: list[tuple[bool, int]] = []
    for a, b in itertools.pairwise(bounds):
        sounding = bool(on[a]) or b - a < rate // 500
        if runs and runs[-1][0] == sounding:
            runs[-1] = (sounding, runs[-1][1] + b - a)
        else:
            runs.append((sounding, b - a))
    return [(sounding, n / rate) for sounding, n in runs]


def max_slope(plan_freqs: tuple[float, ...], amplitude: float, rate: int) -> float:
    """The biggest sample-to-sample step a sum of these sines can take (no clicks beyond it)."""
    return sum(2.0 * np.pi * f / rate * amplitude for f in plan_freqs) * 1.01 + 1.0


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (DIAL, [350.0, 440.0]),
        (RINGBACK, [440.0, 480.0]),
        (BUSY, [480.0, 620.0]),
        (REORDER, [480.0, 620.0]),
        (HOWLER, [1400.0, 2060.0, 2450.0, 2600.0]),
    ],
)
def test_frequencies_by_fft(plan: TonePlan, expected: list[float], rate: int) -> None:
    on_s = plan.steps[0].on_s or 1.0
    x = tones.render(plan, rate, on_s)  # the first burst
    assert peaks(x, rate, len(expected)) == pytest.approx(expected, abs=2.0)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_sit_segments_in_order(rate: int) -> None:
    x = tones.render(SIT_NO_CIRCUIT, rate, 10.0)
    assert len(x) == 3 * round(0.380 * rate)
    seg = round(0.380 * rate)
    found = [peaks(x[i * seg : (i + 1) * seg], rate, 1)[0] for i in range(3)]
    assert found == pytest.approx([985.2, 1428.5, 1776.7], abs=2.0)
    assert len(list(ToneStream(SIT_NO_CIRCUIT, rate, 160))) == -(-len(x) // 160)


@pytest.mark.parametrize(
    ("plan", "seconds", "on_s", "off_s"),
    [(RINGBACK, 12.0, 2.0, 4.0), (BUSY, 4.0, 0.5, 0.5), (REORDER, 2.0, 0.25, 0.25)],
)
def test_cadence(plan: TonePlan, seconds: float, on_s: float, off_s: float) -> None:
    rate = 8000
    runs = segments(tones.render(plan, rate, seconds), rate)
    ons = [d for sounding, d in runs if sounding]
    offs = [d for sounding, d in runs if not sounding][:-1]  # the last one is cut short
    assert len(ons) == round(seconds / (on_s + off_s))
    assert ons == pytest.approx([on_s] * len(ons), abs=0.0015)  # ramps end on a zero sample
    assert offs == pytest.approx([off_s] * len(offs), abs=0.0015)


def test_howler_cadence_and_loudness() -> None:
    rate = 16000
    x = tones.render(HOWLER, rate, 2.0)
    runs = segments(x, rate)
    assert [d for s, d in runs if s] == pytest.approx([0.1] * 10, abs=0.0015)
    assert np.abs(x).max() < 32767  # loud, never clipped
    assert 20 * np.log10(np.sqrt(np.mean(x[x != 0].astype(float) ** 2)) / 32767) > -10.0


@pytest.mark.parametrize("plan", list(PLANS.values()), ids=list(PLANS))
@pytest.mark.parametrize("rate", [8000, 22050])
def test_no_clicks(plan: TonePlan, rate: int) -> None:
    x = tones.render(plan, rate, 7.0)
    amp = tones.dbm0_to_amplitude(plan.dbm0)
    freqs = tuple(f for step in plan.steps for f in step.freqs)
    steps = np.abs(np.diff(x.astype(np.int64), prepend=0, append=0))
    assert steps.max() <= max_slope(freqs, amp, rate)
    # every start and stop is a ramp: the samples next to silence are nearly silent
    runs = segments(x, rate)
    pos = 0
    for sounding, d in runs:
        n = round(d * rate)
        if sounding:
            assert abs(int(x[pos])) <= 0.02 * amp * len(freqs)
            assert abs(int(x[pos + n - 1])) <= 0.02 * amp * len(freqs)
        pos += n
    assert abs(int(x[0])) <= 0.02 * amp * len(freqs)
    assert abs(int(x[-1])) <= 0.02 * amp * len(freqs)


@pytest.mark.parametrize("rate", RATES)
def test_dial_tone_loops_seamlessly(rate: int) -> None:
    period = tones.period(DIAL, rate)
    assert len(period) == tones.loop_samples((350.0, 440.0), rate)
    assert len(period) == rate // 10  # 350 and 440 Hz share a 100 ms period
    looped = np.concatenate([period, period, period]).astype(np.int64)
    bound = max_slope((350.0, 440.0), tones.dbm0_to_amplitude(DIAL.dbm0), rate)
    assert np.abs(np.diff(looped)).max() <= bound
    # the loop is the continuous tone itself, not an approximation of it
    amp = tones.dbm0_to_amplitude(DIAL.dbm0)
    exact = tones.to_pcm(tones.sines((350.0, 440.0), [amp, amp], rate, 3 * len(period)))
    assert np.abs(looped - exact).max() <= 1


def test_tone_stream_frames_fade_in_and_out() -> None:
    rate, frame = 16000, 320
    stream = ToneStream(DIAL, rate, frame)
    frames = [next(stream) for _ in range(100)]  # 2 s, longer than any period
    x = np.concatenate([*frames, stream.fade_out()]).astype(np.int64)
    assert all(len(f) == frame for f in frames)
    amp = tones.dbm0_to_amplitude(DIAL.dbm0)
    assert abs(x[0]) <= 0.02 * amp and abs(x[-1]) <= 0.02 * 2 * amp
    assert np.abs(np.diff(x)).max() <= max_slope((350.0, 440.0), amp, rate)
    steady = x[rate // 100 : -(rate // 100)]
    exact = tones.sines((350.0, 440.0), [amp, amp], rate, len(x))[rate // 100 : -(rate // 100)]
    assert np.abs(steady - exact).max() <= 1.0


def test_levels_match_the_plan() -> None:
    rate = 8000
    x = tones.render(DIAL, rate, 1.0)[800:-800].astype(float)
    per_tone_dbfs = 10 * np.log10(np.mean(x**2) / 2 / (32767.0**2 / 2))
    assert per_tone_dbfs == pytest.approx(-13.0 - 3.14, abs=0.05)  # -13 dBm0, about -16 dBFS
    ring = tones.render(RINGBACK, rate, 1.9)[800:-800].astype(float)
    assert 10 * np.log10(np.mean(ring**2) / 2 / (32767.0**2 / 2)) == pytest.approx(-22.14, abs=0.05)
    louder = tones.render(DIAL, rate, 1.0, gain_db=6.0)[800:-800].astype(float)
    assert 10 * np.log10(np.mean(louder**2) / np.mean(x**2)) == pytest.approx(6.0, abs=0.05)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_dtmf_key_tones(rate: int) -> None:
    detector = DtmfDetector(rate)
    for key in KEYS:
        x = tones.dtmf(key, rate, 0.1)
        assert len(x) == round(0.1 * rate)
        assert peaks(x, rate, 2) == pytest.approx(list(tones.dtmf_freqs(key)), abs=3.0)
        assert abs(int(x[0])) < 200 and abs(int(x[-1])) < 200
        assert detector.feed(np.concatenate([x, tones.silence(0.1, rate)])) == [key]
    assert detector.flush() == []


def test_dtmf_frequencies_and_bad_keys() -> None:
    assert tones.dtmf_freqs("1") == (697.0, 1209.0)
    assert tones.dtmf_freqs("#") == (941.0, 1477.0)
    assert tones.dtmf_freqs("d") == (941.0, 1633.0)
    for bad in ("E", "", "12", " "):
        with pytest.raises(ValueError, match="not a DTMF key"):
            tones.dtmf_freqs(bad)


def test_short_bursts_still_ramp() -> None:
    x = tones.burst((1000.0,), 0.004, 8000, -13.0)  # shorter than two 5 ms ramps
    assert len(x) == 32
    assert abs(int(x[0])) < 100 and abs(int(x[-1])) < 100


@pytest.mark.parametrize("frame", [7, 40, 160, 1000])
def test_tone_stream_ramps_in_over_any_frame_size(frame: int) -> None:
    rate = 8000
    stream = ToneStream(DIAL, rate, frame)
    x = np.concatenate([next(stream) for _ in range(-(-800 // frame))])[:800]
    assert np.array_equal(x, tones.render(DIAL, rate, 1.0)[:800])
