"""In-band DTMF as a keypad: the DTMF detector fed with the mic frames the call loop hears.

A keypad that makes tones into the handset needs no wiring: its digits arrive with the caller's
voice. The call loop (and the simulator) feed each mic frame to `InbandKeypad.feed`; the keys it
finds come out of `keys()` like those of the wired keypads in `payphone.hardware.keypad`.
"""

from __future__ import annotations

import asyncio

from payphone.hardware.keypad import QueueKeypad
from payphone.pcm import Pcm


class InbandKeypad(QueueKeypad):
    """DTMF tones heard in the handset audio; the call loop feeds it the mic frames."""

    def __init__(self, sample_rate: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        from payphone.speech.dtmf import DtmfDetector

        super().__init__(loop)
        self._detector = DtmfDetector(sample_rate)

    def feed(self, pcm: Pcm) -> None:
        """Look for digits in a mic frame (cheap: a few Goertzel filters)."""
        for key in self._detector.feed(pcm):
            self._queue.put_nowait(key)
