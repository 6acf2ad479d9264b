"""`payphone dtmf FILE.wav`: the digits on one line and nothing else."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from payphone.speech import tones
from tests.helpers import run_module


def write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> Path:
    data = np.repeat(pcm[:, None], channels, axis=1) if channels > 1 else pcm
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(data, dtype=np.int16).tobytes())
    return path


def test_prints_only_the_digits(tmp_path: Path) -> None:
    pcm = tones.dtmf_sequence("5550123#", 44100, on_s=0.08, off_s=0.06)
    wav = write_wav(tmp_path / "keys.wav", pcm, 44100, channels=2)
    result = run_module("payphone", "dtmf", str(wav))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5550123#\n"


def test_silence_prints_an_empty_line(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(16000, dtype=np.int16), 16000)
    result = run_module("payphone", "dtmf", str(wav))
    assert result.returncode == 0
    assert result.stdout == "\n"


def test_not_a_wav_fails_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav at all")
    result = run_module("payphone", "dtmf", str(junk))
    assert result.returncode == 1
    assert "not a readable WAV file" in result.stderr
    assert "Traceback" not in result.stderr
