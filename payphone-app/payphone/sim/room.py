"""The room behind the caller: other people talking (a bar), as the mouthpiece picks them up.

Four talkers at once, each saying the `ROOM_TALK` sentences one after another with a short
breath between, in the demo's Piper voice at several speeds: babble without a common pause,
which webrtcvad calls speech all the way through. The handset (`sim/handset.py`) mixes it,
looped, under every mic frame, the caller's silence included, so the room goes on talking after
the caller stops, as it does in a bar.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from payphone.call.lines import render_line
from payphone.speech.base import Synthesizer, VoiceSpec

ROOM_TALK = (
    "So I told him, if you want the car you can pay for the gas yourself.",
    "No way, she moved to Denver last spring, didn't you hear?",
    "Two more of those, and a basket of fries for the table please.",
    "The game was unbelievable, they scored twice in the last minute.",
    "I keep telling you, the rent is going up again in March.",
    "Did you see who just walked in? Over by the jukebox.",
)
TALKERS = 4
SPEEDS = (0.85, 0.95, 1.05, 1.15)
BREATH_S = (0.1, 0.6)  # between one talker's sentences
MIN_DB, MAX_DB = 0.0, 40.0
RATE = 16000  # the mic's

Room = npt.NDArray[np.float32]


class RoomLevelError(ValueError):
    """A room level out of range; the message names the option and the allowed values."""


def room_level(db: float | None) -> float | None:
    """`--room-db` checked: None (a quiet room), or MIN_DB to MAX_DB under the caller."""
    if db is not None and not MIN_DB <= db <= MAX_DB:
        raise RoomLevelError(
            f"--room-db: {db:g} is out of range; allowed: {MIN_DB:g} to {MAX_DB:g} "
            "(dB under the caller's voice)"
        )
    return db


async def talking_room(synthesizer: Synthesizer, seconds: float, seed: int = 0) -> Room:
    """`seconds` of four people talking at once, at the mic's rate and unit RMS (scale it with
    `at_level`); the same room for the same `seed`."""
    rng = np.random.default_rng(seed)
    said = []
    for index, text in enumerate(ROOM_TALK):
        voice = VoiceSpec(length_scale=SPEEDS[index % len(SPEEDS)])
        pcm = (await render_line(synthesizer, text, voice)).astype(np.float32)
        said.append(soxr.resample(pcm, synthesizer.sample_rate, RATE))
    room = np.zeros(round(seconds * RATE), np.float32)
    for _ in range(TALKERS):
        at = int(rng.integers(0, RATE))
        while at < len(room):
            clip = said[int(rng.integers(len(said)))][: len(room) - at]
            room[at : at + len(clip)] += clip
            at += len(clip) + int(rng.uniform(*BREATH_S) * RATE)
    rms = float(np.sqrt(np.mean(np.square(room, dtype=np.float64))))
    return room / rms if rms > 0 else room


def at_level(room: Room, speech_rms: float, db_under: float) -> Room:
    """The room `db_under` dB under a caller whose speech has RMS `speech_rms`."""
    return (room * speech_rms * 10 ** (-db_under / 20)).astype(np.float32)


class RoomSound:
    """The room, looped, a frame at a time: what the mouthpiece picks up besides the caller."""

    def __init__(self, room: Room) -> None:
        self._room = room
        self._at = 0

    def take(self, samples: int) -> Room:
        if len(self._room) == 0:
            return np.zeros(samples, np.float32)
        index = (self._at + np.arange(samples)) % len(self._room)
        self._at = (self._at + samples) % len(self._room)
        return self._room[index]
