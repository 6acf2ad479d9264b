"""glibc's mmap threshold, pinned so freed model buffers go back to the kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# In a fresh interpreter: malloc a 4 MB buffer (a second of Whisper features), free it, malloc it
# again, and print whether each one was mmapped (glibc's mallinfo2 counts mmapped blocks).
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from payphone.memory import fix_malloc_threshold

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "fixed":
        assert fix_malloc_threshold()
    for _ in range(2):
        before = libc.mallinfo2().hblks
        block = libc.malloc(4_000_000)
        print(libc.mallinfo2().hblks - before, end=" ")
        libc.free(block)
    """
)


def mmapped(mode: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


def test_glibc_by_default_keeps_a_freed_large_buffer_in_the_heap() -> None:
    """The behaviour the fix exists for: after one free, the next large buffer is heap memory."""
    assert mmapped("default") == "1 0"


def test_with_the_threshold_pinned_every_large_buffer_is_mmapped() -> None:
    assert mmapped("fixed") == "1 1"
