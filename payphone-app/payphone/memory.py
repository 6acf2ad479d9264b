"""Keep a phone that runs for weeks at a flat memory footprint.

Two glibc malloc defaults make RSS climb call after call in a process like this one, without
any leak (measured with `python -m payphone bench soak`):

- the mmap threshold rises every time a large block is freed, so after a few calls the speech
  models' big per-call buffers (Whisper's features, Piper's audio tensors, whose sizes change
  with every utterance and sentence) come from the heap, where fragmentation keeps them; a fixed
  threshold keeps every block above it mmapped and hands it back to the kernel when freed;
- every new thread that allocates gets its own arena (up to 8 per core), and each arena keeps
  its own fragmented high-water mark; Whisper, Piper, llama.cpp and asyncio's helper threads
  made several. Two arenas are plenty for two or three busy threads.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>; setting it also turns off the dynamic adjustment
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value
ARENA_MAX = 2


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD_BYTES, arena_max: int = ARENA_MAX) -> bool:
    """Set both (call before threads start); False, and nothing changed, without glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = [mallopt(M_MMAP_THRESHOLD, mmap_threshold), mallopt(M_ARENA_MAX, arena_max)]
    return all(applied)  # both are tried: one refused does not skip the other
