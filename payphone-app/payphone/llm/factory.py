"""Build the configured chat backend from settings, always behind a circuit breaker."""

from __future__ import annotations

from payphone.config import LlmSettings, Settings
from payphone.llm.base import ChatBackend, ChatOptions
from payphone.llm.breaker import CircuitBreaker
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.history import Conversation, TokenCounter, choose_system_prompt, estimate_tokens
from payphone.llm.ollama_backend import OllamaBackend, keep_alive_value
from payphone.models import resolve_gguf


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


def build_embedded(settings: Settings) -> EmbeddedBackend:
    """The in-process backend; raises `ModelNotFound` when the GGUF cannot be found."""
    return EmbeddedBackend(
        resolve_gguf(settings), n_ctx=settings.llm.num_ctx, n_threads=settings.llm.n_threads
    )


def build_backend(settings: Settings) -> CircuitBreaker:
    """The backend `llm.backend` names, wrapped in a breaker; call `await .start(prompt)` next."""
    backend: ChatBackend
    if settings.llm.backend == "ollama":
        ollama_backend = build_ollama(settings.llm)
        backend, probe = ollama_backend, ollama_backend.probe
    else:
        embedded = build_embedded(settings)
        backend, probe = embedded, embedded.probe
    return CircuitBreaker(backend, probe)


def conversation(
    llm: LlmSettings, tag: str, prompt: str, count_tokens: TokenCounter = estimate_tokens
) -> Conversation:
    """A new call's memory for a persona: its tag or full prompt per `llm.prompt_style`."""
    system = choose_system_prompt(llm.prompt_style, tag, prompt)
    return Conversation(system, llm.history_tokens, count_tokens)
