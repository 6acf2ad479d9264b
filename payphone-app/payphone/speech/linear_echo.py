"""The words' echo canceller: speexdsp's linear echo filter, with no suppressor after it.

AEC3 (`echo_canceller`) is right for deciding whether the caller speaks: its suppressor takes the
earpiece's echo down by 50 dB or more, so our own voice never sounds like a caller. But at the
start of double talk the same suppressor has not yet noticed the caller and attenuates their
first syllable with the echo: over the persona, Whisper heard "Stop, I need a taxi" as "I need a
taxi" and "Hang on" as "And on" (issue 14). A linear adaptive filter only subtracts its estimate
of the echo and never touches the rest, so the caller's onset passes whole with the echo ~20 dB
down, under a voice ~10 dB above it: Whisper and the end-of-turn model hear this stream, the VAD
hears AEC3's.

Measured offline on one captured `bench bargein` stream (24 interruptions, -10 dB / 20 ms echo,
the same spans both ways): WER 6.4 % on AEC3's output, 2.1 % on this filter's, the same as the
clean clips; 0.02-0.03 ms CPU per 10 ms block on the 2-core dev machine. In `bench bargein`
itself (100 replies): WER 3.1-4.1 % over the echo vs 2.1 % clean (11.7 % before), and ERLE
23.4 dB once converged. A linear filter converges in seconds, not AEC3's tenths: the phone
never resets it, so it stays converged from call to call (the first reply after a start-up is
the weak spot).

speexdsp (Xiph) is a C library in every Debian and Raspberry Pi OS release (`libspeexdsp1`,
which ALSA's rate plugins already pull in). Its Python binding on PyPI is a source package that
needs SWIG and headers to build, so the five functions used are declared here with ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np

from payphone.pcm import Pcm

LIBRARY = "speexdsp"
SET_SAMPLING_RATE = 24  # SPEEX_ECHO_SET_SAMPLING_RATE from speex_echo.h


class LinearEchoUnavailable(Exception):
    """speexdsp cannot be loaded here; the message says why."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library(LIBRARY) or "libspeexdsp.so.1"
    try:
        lib = ctypes.CDLL(name)
        _declare(lib)
    except (OSError, AttributeError) as exc:  # not there; or a library without these functions
        raise LinearEchoUnavailable(
            f"{LIBRARY}: {exc} (install it: apt-get install libspeexdsp1)"
        ) from exc
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    """The C signatures of the functions used (speex/speex_echo.h)."""
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_cancellation.restype = None
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
    lib.speex_echo_ctl.restype = ctypes.c_int
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_state_reset.restype = None
    lib.speex_echo_state_reset.argtypes = [ctypes.c_void_p]
    lib.speex_echo_state_destroy.restype = None
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]


class LinearEchoFilter:
    """speexdsp's adaptive echo filter over `tail_ms` of echo path, in `block`-sample steps.

    Not thread-safe on its own (the owner, `EchoCanceller`, holds its lock around every call);
    ctypes releases the GIL while the library works.
    """

    def __init__(self, sample_rate: int, block: int, tail_ms: int) -> None:
        self._state: int | None = None
        self._destroy_lock = threading.Lock()
        if tail_ms <= 0:
            raise ValueError(f"tail_ms must be positive, got {tail_ms}")
        self._lib = _load()
        self.sample_rate = sample_rate
        self.block = block
        self.tail_ms = tail_ms
        tail = round(sample_rate * tail_ms / 1000)
        state = self._lib.speex_echo_state_init(block, tail)
        if not state:
            raise LinearEchoUnavailable(f"{LIBRARY}: speex_echo_state_init({block}, {tail}) failed")
        self._state = state
        rate = ctypes.c_int(sample_rate)
        self._lib.speex_echo_ctl(state, SET_SAMPLING_RATE, ctypes.byref(rate))

    def process(self, near: Pcm, far: Pcm) -> Pcm:
        """`near` without the linear estimate of `far`'s echo; both int16, whole blocks."""
        if self._state is None:
            raise RuntimeError("the linear echo filter is closed")
        near = np.ascontiguousarray(near, dtype=np.int16)
        far = np.ascontiguousarray(far, dtype=np.int16)
        if len(near) % self.block or len(far) != len(near):  # speexdsp reads whole blocks
            raise ValueError(
                f"near {len(near)} and far {len(far)} samples: need equal whole "
                f"{self.block}-sample blocks"
            )
        out = np.empty_like(near)
        for start in range(0, len(near), self.block):
            self._lib.speex_echo_cancellation(
                self._state,
                near[start:].ctypes.data,
                far[start:].ctypes.data,
                out[start:].ctypes.data,
            )
        return out

    def reset(self) -> None:
        if self._state is not None:
            self._lib.speex_echo_state_reset(self._state)

    def close(self) -> None:
        with self._destroy_lock:
            state, self._state = self._state, None
        if state is not None:
            self._lib.speex_echo_state_destroy(state)

    def __del__(self) -> None:
        self.close()
