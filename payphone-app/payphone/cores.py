"""Sharing the phone's few cores between the speech stages and the persona model.

A turn's CPU work mostly runs one stage at a time: the end-of-turn check, then Whisper, then the
model's prompt and first sentence, then Piper. llama.cpp on every core is twice as fast as on
half of them when nothing else runs (prompt of ~18 tokens: 66 vs 114 ms here), but its threads
wait for each other at every step, so beside Piper or the turn model it is slower than on its
share (243 vs 188 ms). So the stages say when they work (`working`), and the model takes every
core only while none of them does (`others_working`). One process is one machine: the count is
process-wide, like the cores. The model changes its thread count between evaluations only: a
stage that starts during a prompt shares the CPU with it until the prompt is done (~70 ms).
Between two speech stages the same holds: an end-of-turn check that meets a Whisper decode
waits for it (`wait_idle`) instead of halving both. And while Piper renders a reply's first
words (`FIRST_AUDIO`) the persona model waits between tokens (`yield_to_first_audio`): the
caller is waiting for that sound, while the rest of the reply has the first words' playing
time to get ready (Piper's 4-word chunk here: 181 ms alone, 251 ms beside the model on 1 thread).

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
import time
from collections import Counter
from collections.abc import Iterator

# the stage that marks Piper rendering a reply's first words, which nothing should slow down
FIRST_AUDIO = "first_audio"
# the persona model waits at most this long for them (a chunk of a sentence takes 0.1-0.4 s)
FIRST_AUDIO_WAIT_S = 1.0

_lock = threading.Lock()
_done = threading.Condition(_lock)  # some stage finished a piece of work
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
            _done.notify_all()


def busy(stage: str) -> bool:
    """Whether `stage` is working now."""
    with _lock:
        return _working[stage] > 0


def wait_idle(stage: str, timeout_s: float) -> float:
    """Block (a worker thread, never the loop) until no `stage` work runs, at most `timeout_s`;
    the seconds waited. Two stages on two cores slow each other more than they gain: one that
    can wait for the other starts when it is done and runs at full speed."""
    started = time.monotonic()
    with _done:
        _done.wait_for(lambda: _working[stage] == 0, timeout_s)
    return time.monotonic() - started


def yield_to_first_audio() -> float:
    """In the persona model's worker, between tokens: wait while a reply's first words are
    being rendered (at most `FIRST_AUDIO_WAIT_S`); the seconds waited."""
    return wait_idle(FIRST_AUDIO, FIRST_AUDIO_WAIT_S)


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
