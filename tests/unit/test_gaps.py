"""Reply gaps read off a stereo recording: caller's last sound -> the earpiece's next sound."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from payphone.sim.gaps import dropouts, reply_gaps
from payphone.speech import tones

RATE = 16000


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def recording(
    tmp_path: Path, ear: list[tuple[float, float]], caller: list[tuple[float, float]]
) -> Path:
    stereo = np.zeros((RATE * 12, 2), dtype=np.int16)
    for channel, spans in ((0, ear), (1, caller)):
        for start, seconds in spans:
            begin = int(start * RATE)
            stereo[begin : begin + int(seconds * RATE), channel] = tone(seconds)
    path = tmp_path / "call.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(stereo.tobytes())
    return path


def test_gaps_from_the_callers_last_sound_to_the_reply(tmp_path: Path) -> None:
    path = recording(
        tmp_path,
        ear=[(0.0, 0.5), (3.2, 1.0), (8.0, 1.0), (10.0, 0.5)],
        caller=[(1.0, 0.8), (2.2, 0.5), (5.0, 0.1), (7.0, 1.0), (9.5, 1.0)],
    )
    # 1.0-1.8 and 2.2-2.7 are one sentence with a pause: the reply at 3.2 is 0.5 s after it;
    # the key tone at 5.0 is not speech; the caller talking over the earpiece at 9.5 is no gap
    assert reply_gaps(path) == [0.5, 0.0]


def test_dropouts_are_holes_in_sound_not_pauses_or_tone_cadences() -> None:
    rate = 22050
    t = np.arange(rate * 2) / rate
    sound = (np.sin(2 * np.pi * 300 * t) * 6000).astype(np.int16)
    assert dropouts(sound, rate) == []  # a sine's own zero crossings are single samples
    holed = sound.copy()
    for at_s in (0.25, 0.5, 0.75):
        start = int(at_s * rate)
        holed[start : start + 22] = 0  # 1 ms where a buffer came late
    holed[int(1.2 * rate) : int(1.3 * rate)] = 0  # a 100 ms cadence gap is a pause
    holed[int(1.6 * rate) :] = 0  # and silence after the sound ends
    found = dropouts(holed, rate)
    assert [at for at, _ in found] == [pytest.approx(s, abs=0.001) for s in (0.25, 0.5, 0.75)]
    assert [ms for _, ms in found] == [1.0, 1.0, 1.0]


def test_a_sound_cut_off_and_a_tone_starting_just_after_is_no_dropout() -> None:
    rate = 22050
    dial = tones.render(tones.DIAL, rate, 0.3)
    cut = int(0.21 * rate)  # mid-wave: a stop
    key = tones.dtmf("0", rate, 0.1)  # ramps in, as every tone does
    gap = np.zeros(55, dtype=np.int16)
    assert dropouts(np.concatenate([dial[:cut], gap, key]), rate) == []
    late = np.concatenate([dial[:cut], gap, dial[cut:]])  # the same tone, a buffer placed late
    assert len(dropouts(late, rate)) == 1
