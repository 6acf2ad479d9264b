"""Smart Turn v3 hears whether Piper's sentence is finished; without a usable model, None."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from payphone.config import Settings, load_settings
from payphone.models import resolve_voice
from payphone.pcm import Pcm
from payphone.speech.turn_model import WINDOW_SAMPLES, SmartTurn, load_turn_model
from tests.speech_fixtures import piper, silence

pytestmark = pytest.mark.models

PAUSE_S = 0.2  # the model is asked after a short pause (turn.pause_ms)

# (finished, the same sentence cut off): in Piper's demo voice the finished ones score about
# 0.95-0.99 and the cut ones about 0.01-0.08, at 1.0 and 1.3 times the speed
PAIRS = (
    (
        "I would like to order a large pizza with mushrooms.",
        "I would like to order a large pizza with mushrooms and",
    ),
    ("Could you call me back in ten minutes?", "Could you call me back in"),
    ("My name is John and I live in Boston.", "My name is John and"),
)
# ...except where the CPU does the int8 maths another way: on an AVX2 box without VNNI (AMD
# EPYC) "My name is John and" scores 0.59, the same audio every run (0.98 for the whole
# sentence). The model alone then calls it finished; the phone still waits, because the words
# end in "and" (payphone/call/endings.py). Only the order is a property of the model everywhere.
SCORE_VARIES_BY_CPU = frozenset({"My name is John and"})
# not every finished sentence sounds finished in Piper's voice: "I was wondering if you could
# help me." scores about 0.03, like its cut-off "I was wondering if you could" (about 0.01)


@pytest.fixture(scope="module")
def app_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def model(app_settings: Settings) -> SmartTurn:
    loaded = load_turn_model(app_settings)
    assert loaded is not None, "the demo Smart Turn model (pipecat-ai) is installed"
    return loaded


def utterance(settings: Settings, text: str) -> Pcm:
    """What the phone hands the model: a little lead-in, the words, the short pause."""
    return np.concatenate([silence(0.3), piper(settings, text), silence(PAUSE_S)])


@pytest.mark.parametrize(("finished", "cut"), PAIRS, ids=["pizza-and", "back-in", "john-and"])
def test_a_finished_sentence_scores_high_and_a_cut_one_lower(
    model: SmartTurn, app_settings: Settings, finished: str, cut: str
) -> None:
    complete = model.predict(utterance(app_settings, finished))
    incomplete = model.predict(utterance(app_settings, cut))
    assert complete > 0.5, f"{finished!r}: {complete:.3f}"
    if cut not in SCORE_VARIES_BY_CPU:
        assert incomplete < 0.5, f"{cut!r}: {incomplete:.3f}"
    assert complete - incomplete > 0.3, f"{finished!r} {complete:.3f}, {cut!r} {incomplete:.3f}"


def test_only_the_last_eight_seconds_count(model: SmartTurn, app_settings: Settings) -> None:
    speech = utterance(app_settings, "Could you call me back in ten minutes?")
    # a shorter utterance is padded with silence at the start to 8 s
    padded = np.concatenate([silence(1.0), speech])
    np.testing.assert_allclose(model.features(padded), model.features(speech), atol=1e-6)
    # a longer one loses its beginning
    long = np.concatenate([utterance(app_settings, "Hello there."), silence(8.0), speech])
    assert len(long) > WINDOW_SAMPLES
    assert model.predict(long) == model.predict(long[-WINDOW_SAMPLES:])
    assert model.features(speech).shape == (80, 800)


IDLE_AFTER_A_CHECK = """
import resource, sys, time
import numpy as np
from payphone.config import load_settings
from payphone.speech.turn_model import load_turn_model
model = load_turn_model(load_settings())
pcm = (np.random.default_rng(0).standard_normal(32000) * 3000).astype(np.int16)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
worst = 0.0
for _ in range(3):
    model.predict(pcm)
    before = cpu()
    time.sleep(0.3)
    worst = max(worst, cpu() - before)
print(worst)
"""


def test_its_threads_spin_through_a_check_and_stop_when_it_returns(model: SmartTurn) -> None:
    """Spinning, the check's threads skip a wake-up per operator (44 -> 30 ms a check here); left
    spinning after it, they took ~45 ms of CPU in every 300 ms from Whisper (0.1 with the stop).
    Measured in a process of its own, with one BLAS thread, as the service runs."""
    options = model._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", IDLE_AFTER_A_CHECK], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 0.015  # seconds of CPU in 0.3 s after a check


def _warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "turn_model_unavailable"]


def test_an_empty_setting_means_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", "")
    with structlog.testing.capture_logs() as logs:
        assert load_turn_model(load_settings()) is None
    (warning,) = _warnings(logs)
    assert warning["log_level"] == "warning"
    assert "turn.model is empty" in warning["reason"]


def test_a_missing_file_means_no_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", str(tmp_path / "gone.onnx"))
    with structlog.testing.capture_logs() as logs:
        assert load_turn_model(load_settings()) is None
    (warning,) = _warnings(logs)
    assert "turn.model (PAYPHONE_TURN__MODEL)" in warning["reason"]
    assert "gone.onnx" in warning["reason"]


def test_an_unknown_name_means_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", "smart-turn-v9")
    with structlog.testing.capture_logs() as logs:
        assert load_turn_model(load_settings()) is None
    (warning,) = _warnings(logs)
    assert "models --download" in warning["reason"]


@pytest.mark.parametrize("content", ["garbage", "piper voice"])
def test_a_file_that_is_no_turn_model_means_no_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_settings: Settings, content: str
) -> None:
    broken = tmp_path / "broken.onnx"
    if content == "garbage":
        broken.write_bytes(np.random.default_rng(0).bytes(4096))
    else:  # a real ONNX model, but not this one
        broken.write_bytes(resolve_voice(app_settings).read_bytes())
    monkeypatch.setenv("PAYPHONE_TURN__MODEL", str(broken))
    with structlog.testing.capture_logs() as logs:
        assert load_turn_model(load_settings()) is None
    (warning,) = _warnings(logs)
    assert "does not load" in warning["reason"]
