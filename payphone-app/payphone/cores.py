"""Sharing the phone's few cores between the speech stages and the persona model.

A turn's CPU work mostly runs one stage at a time: the end-of-turn check, then Whisper, then the
model's prompt and first sentence, then Piper. llama.cpp on every core is twice as fast as on
half of them when nothing else runs (prompt of ~18 tokens: 66 vs 114 ms here), but its threads
wait for each other at every step, so beside Piper or the turn model it is slower than on its
share (243 vs 188 ms). So the stages say when they work (`working`), and the model takes every
core only while none of them does (`others_working`). One process is one machine: the count is
process-wide, like the cores. The model changes its thread count between evaluations only: a
stage that starts during a prompt shares the CPU with it until the prompt is done (~70 ms).

numpy's OpenBLAS keeps a worker per core spinning for a while after each call (the turn model's
features, Whisper's mel filterbank): on two cores that worker took the other core for the whole
of every end-of-turn check. The phone's matrices are small, so BLAS gets one thread
(`single_threaded_blas`, called by `payphone.cli.main` before numpy loads; not when the package
is used as a library, as the tests do).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator

_lock = threading.Lock()
_working: Counter[str] = Counter()


@contextlib.contextmanager
def working(stage: str) -> Iterator[None]:
    """Mark CPU work by `stage` (from any thread) for as long as the block runs."""
    with _lock:
        _working[stage] += 1
    try:
        yield
    finally:
        with _lock:
            _working[stage] -= 1


def others_working() -> bool:
    """Whether a speech stage is working now (the persona model is never counted)."""
    with _lock:
        return any(count > 0 for count in _working.values())


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity, a systemd `CPUAffinity=`), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def single_threaded_blas() -> None:
    """One OpenBLAS thread, unless the operator chose otherwise; takes effect when numpy loads."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
