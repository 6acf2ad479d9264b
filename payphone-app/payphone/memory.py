"""Keep a phone that runs for weeks at a flat memory footprint.

glibc's malloc raises its mmap threshold every time a large block is freed, so after a few calls
the speech models' big per-call buffers (Whisper's features, Piper's audio tensors, whose sizes
change with every utterance and sentence) come from the heap, where fragmentation keeps RSS
climbing call after call without any leak. A fixed threshold keeps every block above it mmapped
and hands it back to the kernel when freed. Measured with `python -m payphone bench soak`.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>; setting it also turns off the dynamic adjustment
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def fix_malloc_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold; False (and nothing changed) where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
