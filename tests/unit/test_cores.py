"""The process-wide count of speech stages at work, which lets the persona model take every core."""

from __future__ import annotations

import os
import threading

import pytest

from payphone.cores import others_working, single_threaded_blas, working


def test_a_stage_counts_while_its_block_runs_in_any_thread() -> None:
    assert not others_working()
    inside = threading.Event()
    leave = threading.Event()

    def piper() -> None:
        with working("tts"):
            inside.set()
            leave.wait(5)

    worker = threading.Thread(target=piper)
    worker.start()
    assert inside.wait(5)
    with working("stt"):
        assert others_working()
    assert others_working()  # Piper is still at it after Whisper finished
    leave.set()
    worker.join(5)
    assert not others_working()


def test_a_failing_stage_stops_counting() -> None:
    with pytest.raises(RuntimeError), working("turn_model"):
        raise RuntimeError("model file vanished")
    assert not others_working()


def test_blas_gets_one_thread_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    single_threaded_blas()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    single_threaded_blas()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
