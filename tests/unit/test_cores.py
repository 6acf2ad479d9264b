"""The process-wide count of speech stages at work, which lets the persona model take every core."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from payphone.call.listen import STT_WAIT_S, _verdict
from payphone.cores import busy, others_working, single_threaded_blas, wait_idle, working


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


def _whisper_for(seconds: float) -> threading.Thread:
    """A stand-in decode: the "stt" stage at work for `seconds` in another thread."""
    inside = threading.Event()

    def decode() -> None:
        with working("stt"):
            inside.set()
            threading.Event().wait(seconds)

    worker = threading.Thread(target=decode)
    worker.start()
    assert inside.wait(5)
    return worker


def test_waiting_for_a_stage_ends_when_it_does_or_at_the_limit() -> None:
    assert wait_idle("stt", 1.0) < 0.05  # nothing to wait for
    worker = _whisper_for(0.2)
    waited = wait_idle("stt", 2.0)
    assert 0.1 < waited < 1.0 and not busy("stt")
    worker.join(5)
    worker = _whisper_for(1.0)
    assert 0.05 < wait_idle("stt", 0.1) < 0.5  # the limit: then it runs beside it
    worker.join(5)


def test_an_end_of_turn_check_runs_after_the_whisper_decode_it_met() -> None:
    class Model:
        whisper_at_predict: bool | None = None

        def predict(self, pcm: object) -> float:
            self.whisper_at_predict = busy("stt")
            return 0.9

    model = Model()
    worker = _whisper_for(0.2)
    verdict = _verdict(model, np.zeros(1600, np.int16), STT_WAIT_S)
    worker.join(5)
    assert model.whisper_at_predict is False
    assert verdict.waited_ms > 100 and verdict.probability == 0.9


def test_blas_gets_one_thread_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    single_threaded_blas()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    single_threaded_blas()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
