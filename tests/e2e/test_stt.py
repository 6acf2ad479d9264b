"""Real Whisper hears real Piper (and espeak-ng) speech, in both windows; noise is not speech."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import structlog

from payphone.bench.stt import (
    WINDOWS,
    Rendition,
    normalize_text,
    number_words,
    pad_silence,
    question_set,
    word_edits,
    word_error_rate,
)
from payphone.config import Settings, load_settings
from payphone.models import resolve_whisper
from payphone.pcm import Pcm
from payphone.speech.base import Transcriber
from payphone.speech.stt import WhisperTranscriber, Window, cut_repetition, is_hallucination
from tests.speech_fixtures import SAMPLE_RATE, add_noise, silence, speak_piper

SENTENCES = (
    "Hello, who am I speaking to?",
    "What time does the library open tomorrow morning?",
    "Please tell me a story about the old lighthouse keeper.",
    "I would like to order a large pizza with mushrooms.",
)
SUBSET = (
    "Who am I speaking to?",
    "What time does the library open tomorrow morning?",
    "I would like to order a large pizza with mushrooms, please.",
    "How far is it to the train station from here?",
    "Could you call me back in ten minutes?",
    "Do you know any good songs about the sea?",
)
SPEAKERS = (
    Rendition("piper", speed=1.0, deterministic=True),
    Rendition("piper", speed=1.3, deterministic=True),
    Rendition("espeak", "en-us", 150),
)


@pytest.fixture(scope="module")
def app_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def stt(app_settings: Settings) -> WhisperTranscriber:
    return WhisperTranscriber(resolve_whisper(app_settings), app_settings.stt)


@pytest.fixture(scope="module")
def spoken(app_settings: Settings) -> list[tuple[str, Pcm]]:
    return [
        (text, pad_silence(speak_piper(app_settings, text, deterministic=True)))
        for text in SENTENCES
    ]


# -- pure helpers ----------------------------------------------------------------------------


def test_wer_counts_word_edits_after_normalising() -> None:
    assert normalize_text("Call me back in 10 minutes, OK?") == [
        "call",
        "me",
        "back",
        "in",
        "ten",
        "minutes",
        "okay",
    ]
    assert number_words(2047) == "two thousand forty seven"
    assert word_edits(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert word_error_rate(["What's up?"], ["whats up"]) == 0.0
    assert word_error_rate(["one two three four"], ["one three four five"]) == 50.0


def test_known_hallucinations_are_not_speech() -> None:
    for text in (
        "you",
        " You.",
        "Thank you for watching!",
        "[BLANK_AUDIO]",
        "(music)",
        "♪♪",
        "",
        "Subtitles by the Amara.org community",
        "...",
    ):
        assert is_hallucination(text), text
    for text in ("Thank you.", "Are you there?", "Yes.", "Hello, operator."):
        assert not is_hallucination(text), text


def test_a_decoding_loop_is_cut_back_to_one_pass() -> None:
    assert cut_repetition("Who is this? Who is this? Who is") == "Who is this?"
    assert cut_repetition("yes yes yes") == "yes"
    assert (
        cut_repetition("Hello, who am I speaking with? Hello,") == "Hello, who am I speaking with?"
    )
    assert cut_repetition("Is it you? Is it") == "Is it you?"
    # the last pass can break off inside a word (Whisper on "Excuse me" over the persona)
    assert cut_repetition("Excuse me. Excuse me. Exc") == "Excuse me."
    for answer in ("Now? No.", "Okay, ok.", "Sorry, so"):  # a short answer is not a loop
        assert cut_repetition(answer) == answer
    assert (
        cut_repetition("Stop. I need the number for a taxi. Stop. I")
        == "Stop. I need the number for a taxi."
    )
    assert cut_repetition("Stop it. Stop") == "Stop it."
    assert cut_repetition("I need a taxi. I need a tax") == "I need a taxi."
    # a loop that starts after a few words: one pass of its phrase stays
    assert cut_repetition("in the nature of the nature of the nature") == "in the nature of"
    assert cut_repetition("I said no no no no") == "I said no"
    assert cut_repetition("Is it you or you?") == "Is it you or you?"
    assert cut_repetition("Well, it is what it is.") == "Well, it is what it is."
    # a second sentence that merely starts like the first is the caller's
    assert cut_repetition("Hello, is anybody there? Hello, can you hear me?") == (
        "Hello, is anybody there? Hello, can you hear me?"
    )
    assert cut_repetition("Thanks. Bye") == "Thanks. Bye"
    assert cut_repetition("Could you call me back? Could you call me") == "Could you call me back?"
    assert cut_repetition("No, I said no.") == "No, I said no."
    assert (
        cut_repetition("I think I dialed the wrong number.") == "I think I dialed the wrong number."
    )


# -- with the model --------------------------------------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize("window", ["utterance", "full"])
def test_whisper_hears_piper_back(
    stt: WhisperTranscriber, spoken: list[tuple[str, Pcm]], window: Window
) -> None:
    heard = [stt.transcribe_sync(pcm, window).text for _, pcm in spoken]
    wer = word_error_rate([text for text, _ in spoken], heard)
    assert wer <= 10.0, heard


@pytest.mark.models
@pytest.mark.slow
def test_utterance_window_is_as_accurate_as_the_full_window(
    stt: WhisperTranscriber, app_settings: Settings
) -> None:
    clips = question_set(app_settings, SUBSET, SPEAKERS)
    refs = [clip.text for clip in clips]
    wer = {
        window: word_error_rate(refs, [stt.transcribe_sync(c.pcm, window).text for c in clips])
        for window in WINDOWS
    }
    assert abs(wer["utterance"] - wer["full"]) <= 2.0, wer
    assert wer["utterance"] <= 15.0, wer


@pytest.mark.models
@pytest.mark.parametrize("window", ["utterance", "full"])
def test_noise_and_silence_are_not_speech(stt: WhisperTranscriber, window: Window) -> None:
    rng = np.random.default_rng(5)
    white = (rng.standard_normal(2 * SAMPLE_RATE) * 1000).astype(np.int16)
    hum = (3000 * np.sin(2 * np.pi * 60 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.int16)
    for pcm in (silence(2.0), white, add_noise(hum, 30)):
        result = stt.transcribe_sync(pcm, window)
        assert result.text == "", result
        assert not result.is_speech
    assert stt.transcribe_sync(np.zeros(0, np.int16)).text == ""


@pytest.mark.models
async def test_transcribe_runs_off_the_loop_and_survives_cancellation(
    stt: WhisperTranscriber, spoken: list[tuple[str, Pcm]]
) -> None:
    transcriber: Transcriber = stt
    text, pcm = spoken[1]
    task = asyncio.create_task(transcriber.transcribe(pcm))
    ticks = 0
    while not task.done() and ticks < 3:
        await asyncio.sleep(0.01)  # the loop keeps turning while Whisper works
        ticks += 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await transcriber.transcribe(pcm)  # the model lock was released
    assert word_error_rate([text], [result.text]) <= 10.0
    assert result.duration_s == pytest.approx(len(pcm) / SAMPLE_RATE)


class CountingModel:
    """CTranslate2's Whisper, counting its encoder and decoder runs; `after_encode` runs after
    each encoder pass."""

    def __init__(self, model: Any, after_encode: Callable[[], None] = lambda: None) -> None:
        self._model = model
        self._after_encode = after_encode
        self.encoded = 0
        self.generated = 0

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.encoded += 1
        encoded = self._model.encode(*args, **kwargs)
        self._after_encode()
        return encoded

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.generated += 1
        return self._model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@pytest.mark.models
def test_a_dropped_transcript_stops_before_the_model_or_after_the_encoder(
    stt: WhisperTranscriber, spoken: list[tuple[str, Pcm]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eager transcript the caller talked past: not begun, it is never decoded; begun, it
    skips the decoder. Either way an empty transcript comes back, for nobody."""
    _, pcm = spoken[1]
    dropped = threading.Event()
    counting = CountingModel(stt._model.model, after_encode=dropped.set)
    monkeypatch.setattr(stt._model, "model", counting)
    assert stt.transcribe_sync(pcm, None, dropped).text == ""  # dropped during its encoder
    assert (counting.encoded, counting.generated) == (1, 0)
    assert stt.transcribe_sync(pcm, None, dropped).text == ""  # dropped before it began
    assert (counting.encoded, counting.generated) == (1, 0)


@pytest.mark.models
async def test_a_cancelled_transcript_waiting_for_the_model_is_never_decoded(
    stt: WhisperTranscriber, spoken: list[tuple[str, Pcm]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling `transcribe` reaches the thread queued behind another decode."""
    _, pcm = spoken[1]
    counting = CountingModel(stt._model.model)
    monkeypatch.setattr(stt._model, "model", counting)
    with stt._lock:  # another decode holds the model
        task = asyncio.create_task(stt.transcribe(pcm))
        await asyncio.sleep(0.05)  # in its thread, waiting for the model
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.3)  # its thread has the model now, and lets it go
    assert counting.encoded == 0


@pytest.mark.models
def test_long_utterances_fall_back_to_the_full_window(
    stt: WhisperTranscriber, spoken: list[tuple[str, Pcm]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stt, "full_after_s", 1.0)
    text, pcm = spoken[1]
    with structlog.testing.capture_logs() as logs:
        result = stt.transcribe_sync(pcm)
    windows = [entry["window"] for entry in logs if entry["event"] == "stt_done"]
    assert windows == ["full"]
    assert word_error_rate([text], [result.text]) <= 10.0


@pytest.mark.models
def test_noisy_speech_is_still_heard(
    stt: WhisperTranscriber, spoken: list[tuple[str, Pcm]]
) -> None:
    text, pcm = spoken[2]
    noisy = add_noise(pcm, snr_db=15, reference=pcm[pcm != 0])
    assert word_error_rate([text], [stt.transcribe_sync(noisy).text]) <= 20.0
