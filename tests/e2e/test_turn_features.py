"""Smart Turn's features computed on the utterance alone are the features of the whole 8 s
window (the padding's frames filled in): the same input, so the same verdict, for less work."""

from __future__ import annotations

import numpy as np
import pytest

from payphone.config import Settings, load_settings
from payphone.models import resolve_turn_model
from payphone.pcm import Pcm
from payphone.speech.turn_model import SmartTurn, TurnFeatures, window
from tests.speech_fixtures import piper, silence

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def speech() -> Pcm:
    settings: Settings = load_settings()
    line = piper(settings, "Could you call me back in ten minutes? I will be at the station.")
    return np.concatenate([line, silence(0.2)])


def whole_window(features: TurnFeatures, pcm: Pcm) -> np.ndarray:
    audio = window(pcm)
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    return features.log_mel(audio)


@pytest.mark.parametrize("seconds", [0.05, 0.3, 1.0, 2.5, 7.97, 8.0, 12.0])
def test_features_of_the_utterance_are_those_of_the_whole_window(
    speech: Pcm, seconds: float
) -> None:
    features = TurnFeatures()
    pcm = np.resize(speech, int(seconds * 16000)).astype(np.int16)  # longer: speech repeated
    fast, slow = features(pcm), whole_window(features, pcm)
    assert fast.shape == slow.shape == (80, 800)
    assert np.abs(fast - slow).max() < 1e-4


def test_noise_and_a_dc_offset_too() -> None:
    features = TurnFeatures()
    rng = np.random.default_rng(3)
    for pcm in (
        (rng.standard_normal(16000) * 2000).astype(np.int16),
        (rng.standard_normal(24000) * 300 + 4000).astype(np.int16),  # a constant offset
        np.full(8000, 7, dtype=np.int16),  # a constant alone: the slow path
    ):
        assert np.abs(features(pcm) - whole_window(features, pcm)).max() < 1e-4


def test_the_verdict_is_the_same(speech: Pcm) -> None:
    path = resolve_turn_model(load_settings())
    assert path is not None
    model = SmartTurn(path)
    batch = whole_window(TurnFeatures(), speech)[np.newaxis]
    (slow,) = model._session.run(None, {"input_features": batch})
    assert model.predict(speech) == pytest.approx(float(np.asarray(slow).reshape(-1)[0]), abs=1e-4)
