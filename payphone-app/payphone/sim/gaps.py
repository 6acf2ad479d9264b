"""How long the caller waited, read off the recording itself: caller's last sound -> reply.

The simulator's `call.wav` holds the earpiece (left) and the caller (right) on one clock. A
reply gap is measured from the end of the caller's speech to the next sound in the earpiece,
when the earpiece was silent all the while (so dial tone, ringback after a key, or a persona
already talking do not count). Caller sounds shorter than `MIN_SPEECH_S` (key tones) are not
speech. No internal event is used: this is what a listener to the recording hears.

`dropouts` finds the other thing a listener hears: short holes of digital silence inside the
earpiece's sound (crackle), which a faithful recording of a phone that kept up has none of.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from payphone.pcm import Pcm
from payphone.speech.vad import frame_dbfs

WINDOW_S = 0.01
ACTIVE_DBFS = -45.0
MIN_SPEECH_S = 0.5  # a caller's sentence, not a key tone
JOIN_S = 1.2  # caller sounds closer than this are one stretch of speech (pauses to think)
MAX_GAP_S = 8.0


def _active(channel: Pcm, rate: int) -> npt.NDArray[np.bool_]:
    """Per 10 ms window: louder than ACTIVE_DBFS (the VAD's own level measure)."""
    size = max(1, int(rate * WINDOW_S))
    windows = channel[: len(channel) // size * size].reshape(-1, size)
    return np.array([frame_dbfs(window) > ACTIVE_DBFS for window in windows], dtype=bool)


def _stretches(active: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last+1) window indexes of active runs, runs closer than JOIN_S merged."""
    runs: list[tuple[int, int]] = []
    join = int(JOIN_S / WINDOW_S)
    for index in np.flatnonzero(active):
        if runs and index - runs[-1][1] <= join:
            runs[-1] = (runs[-1][0], int(index) + 1)
        else:
            runs.append((int(index), int(index) + 1))
    return runs


def read_stereo(path: Path) -> tuple[npt.NDArray[np.int16], int]:
    """A recording's samples as (frames, channels), and its rate."""
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return samples.reshape(-1, channels), rate


def reply_gaps(path: Path) -> list[float]:
    """Seconds from each stretch of caller speech to the earpiece's next sound."""
    stereo, rate = read_stereo(path)
    ear, caller = _active(stereo[:, 0], rate), _active(stereo[:, 1], rate)
    gaps: list[float] = []
    for first, end in _stretches(caller):
        if (end - first) * WINDOW_S < MIN_SPEECH_S:
            continue
        following = np.flatnonzero(ear[end:])
        if not len(following) or following[0] * WINDOW_S > MAX_GAP_S or ear[end - 1]:
            continue
        gaps.append(round(float(following[0]) * WINDOW_S, 2))
    return gaps


DROPOUT_MIN_S = 0.0002  # 4 samples at 22.05 kHz: longer than any run of zeros in real speech
DROPOUT_MAX_S = 0.02  # longer silences are pauses, tone cadences or underruns, not crackle
DROPOUT_CONTEXT_S = 0.0005  # the edges themselves: a tone ramping in is still quiet here
DROPOUT_LOUD_DBFS = -40.0


def dropouts(channel: Pcm, rate: int) -> list[tuple[float, float]]:
    """(start s, length ms) of each dropout: a short hole of digital silence cut into sound.

    A run of exact zeros `DROPOUT_MIN_S` to `DROPOUT_MAX_S` long with sound louder than
    `DROPOUT_LOUD_DBFS` right at both edges (`DROPOUT_CONTEXT_S`) is heard as a click or
    crackle (a buffer placed late), not as a pause: speech fades out before it falls silent and
    in after it, no tone cadence is that short, and a sound that starts after a cut (a key's
    tone after the dial tone stops) ramps in from silence.
    """
    zero = np.concatenate([[False], np.asarray(channel) == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    context = max(1, round(DROPOUT_CONTEXT_S * rate))
    found: list[tuple[float, float]] = []
    for start, end in zip(starts, ends, strict=True):
        if not DROPOUT_MIN_S * rate <= end - start <= DROPOUT_MAX_S * rate:
            continue
        if start < context or end + context > len(channel):
            continue
        before, after = channel[start - context : start], channel[end : end + context]
        if frame_dbfs(before) > DROPOUT_LOUD_DBFS and frame_dbfs(after) > DROPOUT_LOUD_DBFS:
            found.append((round(start / rate, 4), round((end - start) / rate * 1000, 2)))
    return found


def recording_dropouts(path: Path) -> list[tuple[float, float]]:
    """The dropouts in a call recording's earpiece (left) channel."""
    stereo, rate = read_stereo(path)
    return dropouts(stereo[:, 0], rate)
