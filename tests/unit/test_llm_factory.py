"""One function builds the Ollama client from `[llm]`: for the service, `doctor` and the bench."""

from __future__ import annotations

from typing import Any

import pytest

from payphone.bench import llm as bench_llm
from payphone.config import LlmSettings, Settings
from payphone.doctor import check_ollama
from payphone.llm import factory
from payphone.llm.ollama_backend import OllamaBackend, keep_alive_value
from tests.support.ollama_server import free_port


async def test_build_ollama_takes_every_limit_from_the_settings() -> None:
    llm = LlmSettings(
        ollama_host="http://pi2:11434",
        ollama_model="persona",
        keep_alive="5m",
        first_token_timeout_s=9.0,
        token_timeout_s=3.0,
    )
    backend = factory.build_ollama(llm)
    other = factory.build_ollama(llm, "http://127.0.0.1:1", "smol")
    try:
        assert (backend.host, backend.model) == ("http://pi2:11434/", "persona")
        assert (other.host, other.model) == ("http://127.0.0.1:1", "smol")
        for made in (backend, other):
            assert made.keep_alive == keep_alive_value("5m")
            assert (made.first_token_timeout_s, made.token_timeout_s) == (9.0, 3.0)
    finally:
        await backend.aclose()
        await other.aclose()


async def test_doctor_and_the_bench_build_their_client_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[tuple[Any, ...]] = []
    real = factory.build_ollama

    def spy(*args: Any) -> OllamaBackend:
        built.append(args)
        return real(*args)

    monkeypatch.setattr(factory, "build_ollama", spy)
    monkeypatch.setattr(bench_llm, "build_ollama", spy)
    refused = f"http://127.0.0.1:{free_port()}"
    settings = Settings(llm={"backend": "ollama", "ollama_host": refused})

    [check] = await check_ollama(settings.llm)
    assert check.status == "fail" and "refused" in check.detail
    assert built == [(settings.llm, refused)]

    figure = await bench_llm._circuit_open(settings)
    assert figure["cause"] == "circuit_open"
    assert len(built) == 2 and built[1][0] is settings.llm
