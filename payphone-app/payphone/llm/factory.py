"""Build the configured chat backend from settings, always behind a circuit breaker."""

from __future__ import annotations

from pathlib import Path

from payphone.config import LlmSettings
from payphone.llm.base import ChatBackend, ChatOptions
from payphone.llm.breaker import CircuitBreaker
from payphone.llm.deadlines import Deadlines
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.history import Conversation, TokenCounter, choose_system_prompt, estimate_tokens
from payphone.llm.ollama_backend import OllamaBackend, keep_alive_value


def chat_options(llm: LlmSettings) -> ChatOptions:
    """Generation options from settings."""
    return ChatOptions(
        num_predict=llm.num_predict, temperature=llm.temperature, num_ctx=llm.num_ctx
    )


def build_ollama(
    llm: LlmSettings, host: str | None = None, model: str | None = None
) -> OllamaBackend:
    """The Ollama client `[llm]` describes; `host` and `model` replace its server and model."""
    return OllamaBackend(
        host=host or str(llm.ollama_host),
        model=model or llm.ollama_model,
        keep_alive=keep_alive_value(llm.keep_alive),
        connect_timeout_s=llm.connect_timeout_s,
        first_token_timeout_s=llm.first_token_timeout_s,
        token_timeout_s=llm.token_timeout_s,
    )


def build_embedded(llm: LlmSettings, gguf: Path) -> EmbeddedBackend:
    """The in-process backend for the resolved GGUF (`payphone.models.resolve_gguf`)."""
    return EmbeddedBackend(gguf, n_ctx=llm.num_ctx, n_threads=llm.n_threads)


def build_backend(llm: LlmSettings, gguf: Path | None = None) -> CircuitBreaker:
    """The backend `llm.backend` names, wrapped in a breaker; call `await .start(prompt)` next.

    The embedded backend needs `gguf`, the resolved model file.
    """
    backend: ChatBackend
    if llm.backend == "ollama":
        ollama_backend = build_ollama(llm)
        backend, probe = ollama_backend, ollama_backend.probe
    elif gguf is None:
        raise ValueError("llm.backend = embedded needs the GGUF path")
    else:
        embedded = build_embedded(llm, gguf)
        limits = llm.first_token_timeout_s, llm.token_timeout_s
        backend, probe = Deadlines(embedded, *limits), embedded.probe
    return CircuitBreaker(backend, probe)


def conversation(
    llm: LlmSettings, tag: str, prompt: str, count_tokens: TokenCounter = estimate_tokens
) -> Conversation:
    """A new call's memory for a persona: its tag or full prompt per `llm.prompt_style`."""
    system = choose_system_prompt(llm.prompt_style, tag, prompt)
    return Conversation(system, llm.history_tokens, count_tokens)
