"""Leaf stages take their own settings group (and resolved model paths), not the whole Settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from payphone.config import LlmSettings, SttSettings, TtsSettings
from payphone.llm.deadlines import Deadlines
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.factory import build_backend
from payphone.llm.ollama_backend import OllamaBackend
from payphone.speech.stt import WhisperTranscriber
from payphone.speech.tts import PiperSynthesizer


async def test_the_backend_is_built_from_the_llm_group_and_the_gguf_path() -> None:
    gguf = Path("/models/persona.gguf")
    llm = LlmSettings(
        num_ctx=1024, n_threads=3, n_threads_alone=5, first_token_timeout_s=1.5, token_timeout_s=0.5
    )
    limited = build_backend(llm, gguf).backend
    assert isinstance(limited, Deadlines)  # the embedded model gets Ollama's limits too
    assert (limited.first_token_s, limited.token_s) == (1.5, 0.5)
    model = limited.backend
    assert isinstance(model, EmbeddedBackend)
    assert (model.model_path, model.n_ctx, model.n_threads, model.alone_threads) == (
        gguf,
        1024,
        3,
        5,
    )
    with pytest.raises(ValueError, match="GGUF path"):
        build_backend(LlmSettings(backend="embedded"))
    ollama = build_backend(LlmSettings(backend="ollama", ollama_model="persona"))
    assert isinstance(ollama.backend, OllamaBackend) and ollama.backend.model == "persona"
    await ollama.aclose()


def test_piper_takes_the_tts_group_and_a_voice_resolver(tmp_path: Path) -> None:
    asked: list[str] = []

    def resolve(name: str) -> Path:
        asked.append(name)
        onnx = tmp_path / f"{name}.onnx"
        onnx.with_suffix(".onnx.json").write_text(json.dumps({"audio": {"sample_rate": 16000}}))
        return onnx

    tts = TtsSettings(voice="en_GB-alba-medium", telephone_filter=False, target_dbfs=-20.0)
    piper = PiperSynthesizer(tts, resolve)
    assert (piper.sample_rate, piper.telephone, piper.target_dbfs) == (16000, False, -20.0)
    assert piper.voice_path("en_US-joe-medium") == tmp_path / "en_US-joe-medium.onnx"
    piper.voice_path("en_US-joe-medium")
    piper.voice_path("en_GB-alba-medium")
    assert asked == ["en_GB-alba-medium", "en_US-joe-medium"]  # each name resolved once


def test_whisper_takes_the_stt_group_and_the_model_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(WhisperTranscriber, "load", lambda self: None)  # no model here
    stt = SttSettings(window="full")
    whisper = WhisperTranscriber(tmp_path, stt)
    assert (whisper.model_dir, whisper.settings, whisper.window) == (tmp_path, stt, "full")
