"""The small contracts the call loop depends on for the phone's hardware.

Audio is `payphone.pcm.Pcm` (16-bit signed mono, numpy int16) at the object's `sample_rate`.
Implementations: PyAudio (real), WAV file (simulator), in-memory (tests).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from payphone.pcm import Pcm


class AudioSource(ABC):
    """Microphone frames, one fixed-size frame at a time, never dropped."""

    sample_rate: int
    frame_samples: int

    @abstractmethod
    def frames(self) -> AsyncIterator[Pcm]:
        """Frames of exactly `frame_samples` samples, as they arrive."""

    async def frames_with_reference(self) -> AsyncIterator[tuple[Pcm, Pcm | None]]:
        """Each frame with what the earpiece played over the same span (an echo canceller's
        reference, same rate and length), or None where this source cannot tell."""
        async for frame in self.frames():
            yield frame, None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class AudioSink(ABC):
    """The earpiece: paced by the device, stoppable within one buffer."""

    sample_rate: int

    @abstractmethod
    async def play(self, pcm: Pcm) -> None:
        """Queue audio; returns once it is accepted (back-pressure keeps the queue short)."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until everything queued has been played."""

    @abstractmethod
    def stop(self) -> None:
        """Drop everything queued at once: silence within one buffer, and no mute left over (what
        is played next is heard). Safe in cancel handlers."""

    def mute(self, muted: bool) -> None:
        """Silence the earpiece at once without dropping what is queued, or sound again (the
        caller may be talking over the persona; it may have been only "mm-hm"). What plays while
        muted is lost, as if heard. A sink that cannot mute stops instead."""
        if muted:
            self.stop()

    @property
    @abstractmethod
    def playing(self) -> bool:
        """Whether queued audio is still being heard (gates the mic against echo)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class HookState(enum.Enum):
    ON_HOOK = "on_hook"
    OFF_HOOK = "off_hook"


class HookSwitch(ABC):
    """The cradle switch: debounced state changes as an async stream."""

    @property
    @abstractmethod
    def state(self) -> HookState:
        """The current debounced state."""

    @abstractmethod
    def events(self) -> AsyncIterator[HookState]:
        """Each debounced change, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release pins."""


class Keypad(ABC):
    """Key presses ('0'-'9', '*', '#', 'A'-'D') as an async stream, one per press."""

    @abstractmethod
    def keys(self) -> AsyncIterator[str]:
        """Each key press, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release pins."""
