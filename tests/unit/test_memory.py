"""glibc's malloc, tuned so freed model buffers go back to the kernel and threads share arenas.

Each check runs in a fresh interpreter: both settings only matter before memory is in use.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

SETUP = """
import ctypes, sys, threading
from payphone.memory import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert tune_malloc()
"""

# malloc a 4 MB buffer (a second of Whisper features), free it, malloc it again: was each mmapped?
MMAPPED = """
for _ in range(2):
    before = libc.mallinfo2().hblks
    block = libc.malloc(4_000_000)
    print(libc.mallinfo2().hblks - before, end=" ")
    libc.free(block)
"""

# four threads allocate at once and stay alive: how many arenas does malloc_info list?
ARENAS = """
import os, re, tempfile
ready, done = threading.Barrier(5), threading.Event()
def worker():
    libc.free(libc.malloc(1000))
    ready.wait()
    done.wait()
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
ready.wait()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
done.set()
print(len(re.findall(r'<heap nr="', open(path).read())))
"""


def probe(code: str, mode: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SETUP) + code, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.strip()


def test_glibc_by_default_keeps_a_freed_large_buffer_in_the_heap() -> None:
    """The behaviour the tuning exists for: after one free, the next big buffer is heap memory."""
    assert probe(MMAPPED, "default") == "1 0"


def test_tuned_every_large_buffer_is_mmapped() -> None:
    assert probe(MMAPPED, "tuned") == "1 1"


def test_tuned_threads_share_two_arenas() -> None:
    assert int(probe(ARENAS, "default")) >= 4  # the main arena and one per thread, by default
    assert int(probe(ARENAS, "tuned")) == 2


def test_start_up_objects_are_frozen_out_of_the_collectors_walks() -> None:
    """After start-up a full collection walks no model or persona object: the call loop does
    not stall for them. Garbage from start-up is collected first, not frozen."""
    code = textwrap.dedent(
        """
        import gc, weakref
        from payphone.memory import freeze_after_start

        class Node:
            pass

        kept = [[Node() for _ in range(100)] for _ in range(200)]  # lives as long as the process
        cycle = Node(); cycle.me = cycle; gone = weakref.ref(cycle); del cycle  # start-up garbage
        before = len(gc.get_objects())
        frozen = freeze_after_start()
        assert gone() is None, "garbage is collected before the freeze"
        assert frozen >= 200 * 101 and gc.get_freeze_count() == frozen
        assert len(gc.get_objects()) < before - 200 * 101  # the collector no longer walks them
        del kept  # reference counting still frees what a frozen object no longer needs
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
