"""What a simulated call leaves behind: `call.wav` and `report.json`.

`call.wav` is stereo at the earpiece's rate: left is what the caller heard, right what they said,
each placed at the moment it happened, so the recording shows the real gaps and overlaps (and
the earpiece's real underruns, which `report.json` counts per turn).
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
from payphone.hardware.memory_audio import MemorySink, Underrun
from payphone.pcm import Pcm


@dataclass
class MicTape:
    """Everything fed into the simulated mic, with when it was fed."""

    rate: int
    started: float = field(default_factory=time.monotonic)
    pieces: list[tuple[float, Pcm]] = field(default_factory=list)

    def record(self, pcm: Pcm) -> None:
        self.pieces.append((time.monotonic(), pcm))


def _track(pieces: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Mix (first sample, pcm) pieces onto one int32 track; anything before sample 0 is cut."""
    length = max((at + len(pcm) for at, pcm in pieces), default=0)
    track = np.zeros(max(0, length), dtype=np.int32)
    for at, pcm in pieces:
        skip = max(0, -at)
        if skip < len(pcm):
            track[at + skip : at + len(pcm)] += pcm[skip:].astype(np.int32)
    return track


def write_call_wav(path: Path, sink: MemorySink, tape: MicTape) -> float:
    """Write the stereo recording at the earpiece's rate; returns its length in seconds.

    The earpiece's buffers lie on its own sample clock, end to end as they were heard, and the
    clock is placed on the tape's once: no rounding per buffer, so the recording adds no gaps or
    overlaps of its own. Needs a real-time earpiece (`speed` 1).
    """
    if sink.speed != 1:
        raise ValueError(f"a call recording needs a real-time earpiece, not speed {sink.speed}")
    rate = sink.sample_rate
    offset = round((sink.epoch - tape.started) * rate)
    left = _track([(offset + buffer.sample, buffer.pcm) for buffer in sink.heard])
    caller = []
    for at, pcm in tape.pieces:
        if tape.rate != rate:
            pcm = soxr.resample(pcm.astype(np.float32), tape.rate, rate)
        caller.append((round((at - tape.started) * rate), np.asarray(pcm)))
    right = _track(caller)
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


def build_report(calls: list[CallLog], underruns: list[Underrun] | None = None) -> dict[str, Any]:
    """The report's schema: every turn of every call in order (with the earpiece underruns in it),
    every event with its call, and every underrun with its call and time in the call."""
    found = underruns or []
    turns: list[dict[str, Any]] = []
    listed: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        ends = calls[index + 1].started if index + 1 < len(calls) else float("inf")
        mine = [u for u in found if call.started <= u.at < ends]
        listed += [
            {
                "call_id": call.call_id,
                "t_ms": round((u.at - call.started) * 1000),
                "gap_ms": round(u.gap_s * 1000, 1),
            }
            for u in mine
        ]
        for number, turn in enumerate(call.turns):
            until = call.turns[number + 1].speech_end if number + 1 < len(call.turns) else ends
            inside = sum(turn.speech_end <= u.at < until for u in mine)
            turns.append({**turn.as_report(), "underruns": inside})
    events = [{"call_id": call.call_id, **event} for call in calls for event in call.events]
    return {"turns": turns, "events": events, "underruns": listed}


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
