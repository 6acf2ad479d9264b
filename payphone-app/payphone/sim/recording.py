"""What a simulated call leaves behind: `call.wav` and `report.json`.

`call.wav` is stereo at the earpiece's rate: left is what the caller heard, right what they said,
each placed at the moment it happened, so the recording shows the real gaps and overlaps.
"""

from __future__ import annotations

import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from payphone.call.session import CallLog
from payphone.hardware.memory_audio import HeardBuffer
from payphone.pcm import Pcm


@dataclass
class MicTape:
    """Everything fed into the simulated mic, with when it was fed."""

    rate: int
    started: float = field(default_factory=time.monotonic)
    pieces: list[tuple[float, Pcm]] = field(default_factory=list)

    def record(self, pcm: Pcm) -> None:
        self.pieces.append((time.monotonic(), pcm))


def _place(track: np.ndarray, at_s: float, pcm: np.ndarray, rate: int) -> np.ndarray:
    start = max(0, round(at_s * rate))
    end = start + len(pcm)
    if end > len(track):
        track = np.concatenate([track, np.zeros(end - len(track), dtype=np.int32)])
    track[start:end] += pcm.astype(np.int32)
    return track


def write_call_wav(path: Path, heard: list[HeardBuffer], tape: MicTape, rate: int) -> float:
    """Write the stereo recording; returns its length in seconds."""
    left = np.zeros(0, dtype=np.int32)
    for buffer in heard:
        left = _place(left, buffer.at - tape.started, buffer.pcm, rate)
    right = np.zeros(0, dtype=np.int32)
    for at, pcm in tape.pieces:
        if tape.rate != rate:
            pcm = soxr.resample(pcm.astype(np.float32), tape.rate, rate)
        right = _place(right, at - tape.started, np.asarray(pcm), rate)
    length = max(len(left), len(right))
    stereo = np.zeros((length, 2), dtype=np.int32)
    stereo[: len(left), 0] = left
    stereo[: len(right), 1] = right
    pcm16 = np.clip(stereo, -32768, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16.tobytes())
    return length / rate


def build_report(calls: list[CallLog]) -> dict[str, Any]:
    """The report's schema: every turn of every call in order, and every event with its call."""
    turns = [turn.as_report() for call in calls for turn in call.turns]
    events = [{"call_id": call.call_id, **event} for call in calls for event in call.events]
    return {"turns": turns, "events": events}


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
