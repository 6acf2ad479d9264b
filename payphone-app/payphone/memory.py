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

And one Python default makes the call loop stall now and then: a full collection of the cyclic
garbage collector walks every tracked object, on the thread that happened to allocate, which is
usually the event loop. Once the models are loaded that is ~126 k objects and ~90 ms.
"""

from __future__ import annotations

import ctypes
import gc
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>; setting it also turns off the dynamic adjustment
M_ARENA_MAX = -8
# glibc starts at 128 KB; so low, every one of Whisper's, Piper's and the turn model's mid-sized
# tensors came from a fresh mmap on every run, and its page faults cost a turn ~50 ms of Whisper
# (tiny.en on a 3 s line: 134-166 ms at 128 KB, 98 at 1 MB). Blocks over 1 MB still go back:
# `bench soak --calls 200` grew RSS 2.5 % from call 20 (3.1 % at 128 KB), ~28 MB higher from
# the start.
MMAP_THRESHOLD_BYTES = 1024 * 1024
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


def freeze_after_start() -> int:
    """Collect once, then put every object alive after start-up beyond the collector's reach
    (`gc.freeze`): the models, voices, personas and pre-rendered lines live as long as the
    process, and a full collection walked them all (~90 ms here), on the event loop, whenever it
    fell due: mid-call. Reference counting still frees them; only cycles among them would stay.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
