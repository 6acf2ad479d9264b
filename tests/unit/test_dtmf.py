"""The in-band DTMF detector: the limits it must keep, and the sounds that must never dial."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import signal

from payphone.speech import tones
from payphone.speech.dtmf import DtmfDetector, detect_wav, read_wav

KEYS = "0123456789*#ABCD"
Pcm = npt.NDArray[np.int16]


def decode(pcm: Pcm, rate: int, frame: int | None = None) -> str:
    """All digits in `pcm`, fed whole or in frames of `frame` samples."""
    detector = DtmfDetector(rate)
    step = frame or max(len(pcm), 1)
    found = [d for i in range(0, len(pcm), step) for d in detector.feed(pcm[i : i + step])]
    return "".join(found + detector.flush())


def pad(x: Pcm, rate: int, before_s: float = 0.1, after_s: float = 0.1) -> Pcm:
    return np.concatenate([tones.silence(before_s, rate), x, tones.silence(after_s, rate)])


def pair(key: str, rate: int, seconds: float, twist_db: float = 0.0, detune: float = 0.0) -> Pcm:
    """A key's tone pair, both tones detuned by `detune` (a fraction), row louder by twist_db."""
    row, col = tones.dtmf_freqs(key)
    levels = (tones.DTMF_DBM0 + twist_db / 2, tones.DTMF_DBM0 - twist_db / 2)
    return tones.burst((row * (1 + detune), col * (1 + detune)), seconds, rate, levels)


def write_wav(path: Path, pcm: Pcm, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm[:, None], channels, axis=1).tobytes())
    return path


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_detect_wav_any_rate(tmp_path: Path, rate: int) -> None:
    digits = "5551234*#0ABCD9876"
    pcm = pad(tones.dtmf_sequence(digits, rate, on_s=0.06, off_s=0.05), rate)
    assert detect_wav(write_wav(tmp_path / "keys.wav", pcm, rate)) == digits


def test_detect_wav_stereo_mixes_down(tmp_path: Path) -> None:
    pcm = pad(tones.dtmf_sequence("2468", 48000, on_s=0.08, off_s=0.08), 48000)
    path = write_wav(tmp_path / "stereo.wav", pcm, 48000, channels=2)
    mono, rate = read_wav(path)
    assert rate == 48000 and np.array_equal(mono, pcm)
    assert detect_wav(path) == "2468"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_duration_limits(rate: int) -> None:
    for key in KEYS:
        for offset_ms in (0, 3):  # start the tone at different points of the analysis grid
            lead = 0.1 + offset_ms / 1000
            assert decode(pad(pair(key, rate, 0.040), rate, lead), rate) == key
            assert decode(pad(pair(key, rate, 0.020), rate, lead), rate) == ""


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize(
    ("twist_db", "accepted"), [(8.0, True), (-4.0, True), (10.0, False), (-6.0, False)]
)
def test_twist_limits(rate: int, twist_db: float, accepted: bool) -> None:
    for key in KEYS:
        expected = key if accepted else ""
        assert decode(pad(pair(key, rate, 0.08, twist_db=twist_db), rate), rate) == expected


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize(
    ("detune", "accepted"), [(0.015, True), (-0.015, True), (0.035, False), (-0.035, False)]
)
def test_detune_limits(rate: int, detune: float, accepted: bool) -> None:
    for key in KEYS:
        expected = key if accepted else ""
        assert decode(pad(pair(key, rate, 0.08, detune=detune), rate), rate) == expected


def test_row_and_column_detuned_apart() -> None:
    rate = 8000
    for key in KEYS:
        row, col = tones.dtmf_freqs(key)
        for r, c in ((0.985, 1.015), (1.015, 0.985)):
            x = tones.burst((row * r, col * c), 0.06, rate, tones.DTMF_DBM0)
            assert decode(pad(x, rate), rate) == key


def test_short_tone_at_worst_case_limits() -> None:
    """40 ms, 8 dB twist and 1.5% off frequency at once still dials."""
    for key in KEYS:
        for twist, detune in ((8.0, 0.015), (-4.0, -0.015)):
            x = pair(key, 8000, 0.04, twist_db=twist, detune=detune)
            assert decode(pad(x, 8000), 8000) == key


@pytest.mark.parametrize("rate", [8000, 16000])
def test_white_noise_at_12_db_snr(rate: int) -> None:
    rng = np.random.default_rng(7)
    digits = "0123456789*#ABCD"
    clean = pad(tones.dtmf_sequence(digits, rate, on_s=0.06, off_s=0.06), rate).astype(float)
    tone_power = tones.dbm0_to_amplitude(tones.DTMF_DBM0) ** 2  # two tones of A^2/2 each
    noise = rng.normal(0.0, np.sqrt(tone_power / 10 ** (12 / 10)), len(clean))
    assert decode(tones.to_pcm(clean + noise), rate, frame=rate // 50) == digits


def test_quiet_tones_dial_and_faint_ones_do_not() -> None:
    quiet = tones.burst((770.0, 1336.0), 0.08, 8000, -30.0)  # -33 dBFS per tone
    faint = tones.burst((770.0, 1336.0), 0.08, 8000, -45.0)
    assert decode(pad(quiet, 8000), 8000) == "5"
    assert decode(pad(faint, 8000), 8000) == ""


def test_dc_offset_does_not_matter() -> None:
    x = pad(tones.dtmf_sequence("147*", 8000, 0.05, 0.05), 8000).astype(float) + 6000.0
    assert decode(tones.to_pcm(x), 8000) == "147*"


def test_held_key_is_one_digit() -> None:
    assert decode(pad(pair("7", 16000, 3.0), 16000), 16000, frame=320) == "7"


def test_short_dropout_in_a_held_key_is_still_one_digit() -> None:
    x = pair("9", 8000, 0.5)
    x[2000:2080] = 0  # 10 ms
    assert decode(pad(x, 8000), 8000) == "9"


def test_repeated_key_with_gaps_counts_each_press() -> None:
    assert decode(pad(tones.dtmf_sequence("5555", 8000, 0.05, 0.04), 8000), 8000) == "5555"
    assert decode(pad(tones.dtmf_sequence("##", 44100, 0.2, 0.2), 44100), 44100) == "##"


def test_keys_back_to_back_without_gap() -> None:
    x = np.concatenate([pair(key, 8000, 0.08) for key in "123"])
    assert decode(pad(x, 8000), 8000) == "123"


def test_frame_size_does_not_matter() -> None:
    pcm = pad(tones.dtmf_sequence(KEYS, 16000, 0.045, 0.045), 16000)
    for frame in (1, 37, 160, 320, 4096, None):
        assert decode(pcm, 16000, frame) == KEYS


def test_digits_come_out_while_the_key_is_held() -> None:
    rate = 8000
    detector = DtmfDetector(rate)
    x = pair("3", rate, 1.0)
    got_at = next(i for i in range(0, len(x), 80) if detector.feed(x[i : i + 80]) == ["3"])
    assert got_at / rate < 0.1  # reported during the press, not at release
    assert detector.feed(x[got_at + 80 :]) == []
    assert detector.flush() == []
    assert detector.feed(pad(pair("4", rate, 0.1), rate)) == ["4"]  # reusable after flush


def test_no_digits_from_noise_hum_and_clicks() -> None:
    rate = 8000
    rng = np.random.default_rng(3)
    t = np.arange(rate * 5) / rate
    sounds: dict[str, npt.NDArray[np.float64]] = {
        "hiss": rng.normal(0, 3000, len(t)),
        "loud hiss": rng.normal(0, 12000, len(t)),
        "red noise": signal.lfilter([1.0], [1.0, -0.98], rng.normal(0, 1000, len(t))),
        "clicks": np.zeros(len(t)),
    }
    sounds["clicks"][rng.integers(0, len(t), 40)] = 30000
    for f0 in (50.0, 60.0):
        phases = rng.uniform(0, 2 * np.pi, 80)
        harmonics = [k for k in range(1, 80) if k * f0 < rate / 2]
        sounds[f"hum {f0}"] = sum(
            8000 / k * np.sin(2 * np.pi * k * f0 * t + phases[k]) for k in harmonics
        )
        sounds[f"buzz {f0}"] = sum(
            1500 * np.sin(2 * np.pi * k * f0 * t + phases[k]) for k in harmonics
        )
        sounds[f"square {f0}"] = 6000 * np.sign(np.sin(2 * np.pi * f0 * t))
    for name, x in sounds.items():
        assert decode(tones.to_pcm(x), rate, frame=160) == "", name


def test_no_digits_from_call_progress_tones() -> None:
    for plan in tones.PLANS.values():
        assert decode(tones.render(plan, 8000, 6.0), 8000) == "", plan.name


ESPEAK_TEXT = (
    "Hello, operator speaking. How may I direct your call today? "
    "Ninety nine bottles of beer on the wall. Whoooo eeee aaaah ooooh mmmm, la la laaaa. "
    "One two three four five six seven eight nine zero star pound."
)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
@pytest.mark.parametrize("voice", ["en-us", "en-us+f3", "en-gb+klatt"])
def test_no_digits_from_espeak_speech(tmp_path: Path, voice: str) -> None:
    for pitch in ("20", "99"):  # a low voice and a very high one (the hardest case)
        wav = tmp_path / f"{pitch}.wav"
        with wav.open("wb") as out:
            subprocess.run(
                ["espeak-ng", "-v", voice, "-p", pitch, "--stdout", ESPEAK_TEXT],
                stdout=out,
                check=True,
            )
        assert detect_wav(wav) == "", (voice, pitch)


@pytest.fixture(scope="module")
def piper_speech() -> tuple[Pcm, int]:
    """A few sentences in the real Piper voice (loaded once for the module)."""
    from piper import PiperVoice

    from payphone.config import load_settings
    from payphone.models import resolve_voice

    voice = PiperVoice.load(resolve_voice(load_settings()))
    text = (
        "Well hello there, dear. Grandma Mae baked cookies this morning. "
        "Number five, seven, nine. Oooh, eeee, aaah, hmmm."
    )
    pcm = np.concatenate([chunk.audio_int16_array for chunk in voice.synthesize(text)])
    return pcm, int(voice.config.sample_rate)


@pytest.mark.models
def test_no_digits_from_piper_speech(piper_speech: tuple[Pcm, int], tmp_path: Path) -> None:
    pcm, rate = piper_speech
    assert len(pcm) > rate * 3
    assert decode(pcm, rate, frame=rate // 50) == ""
    # the same speech squeezed into the phone band at 8 kHz, and louder, still never dials
    assert detect_wav(write_wav(tmp_path / "speech.wav", pcm, rate)) == ""
    louder = tones.to_pcm(pcm.astype(float) * 4.0)
    assert decode(louder, rate) == ""


@pytest.mark.models
def test_digits_heard_over_speech_pauses(piper_speech: tuple[Pcm, int]) -> None:
    """Speech, then a keyed number, then speech: only the number comes out."""
    pcm, rate = piper_speech
    keyed = tones.dtmf_sequence("5550123", rate, on_s=0.07, off_s=0.07)
    assert decode(np.concatenate([pcm, keyed, pcm]), rate, frame=rate // 50) == "5550123"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    presses=st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.integers(min_value=40, max_value=150),  # tone ms
            st.integers(min_value=40, max_value=150),  # gap ms
        ),
        min_size=1,
        max_size=8,
    ),
    rate=st.sampled_from([8000, 16000]),
    frame=st.sampled_from([80, 160, 320, 441, None]),
)
def test_random_digit_strings_decode_exactly(
    presses: list[tuple[str, int, int]], rate: int, frame: int | None
) -> None:
    parts = [tones.silence(0.05, rate)]
    for key, on_ms, off_ms in presses:
        parts += [tones.dtmf(key, rate, on_ms / 1000), tones.silence(off_ms / 1000, rate)]
    expected = "".join(key for key, _, _ in presses)
    assert decode(np.concatenate(parts), rate, frame) == expected
