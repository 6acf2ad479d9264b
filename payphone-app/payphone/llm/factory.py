"""Build the configured chat backend from settings, always behind a circuit breaker (one per
Ollama host when `llm.ollama_hosts` lists several: `payphone.llm.failover`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from payphone.config import LlmSettings, Settings
from payphone.llm.base import ChatBackend, ChatOptions, LlmError
from payphone.llm.breaker import CircuitBreaker
from payphone.llm.deadlines import Deadlines
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.failover import Failover
from payphone.llm.history import Conversation, TokenCounter, estimate_tokens
from payphone.llm.ollama_backend import OllamaBackend, keep_alive_value
from payphone.llm.prompt_style import (
    PROMPT_STYLE_KEY,
    ChosenStyle,
    Declared,
    choose,
    declared_style,
)
from payphone.log import current_phone_id


def chat_options(llm: LlmSettings) -> ChatOptions:
    """Generation options from settings."""
    return ChatOptions(
        num_predict=llm.num_predict, temperature=llm.temperature, num_ctx=llm.num_ctx
    )


# a breaker and what the phone's calls use: one host, or several with failover between them
Guarded = CircuitBreaker | Failover


def build_ollama(
    llm: LlmSettings,
    host: str | None = None,
    model: str | None = None,
    *,
    phone_id: str | None = None,
) -> OllamaBackend:
    """The Ollama client `[llm]` describes; `host` and `model` replace its (first) server and
    model. Requests name the phone: `phone_id`, else the one this process logs as."""
    return OllamaBackend(
        host=host or llm.hosts[0],
        model=model or llm.ollama_model,
        keep_alive=keep_alive_value(llm.keep_alive),
        connect_timeout_s=llm.connect_timeout_s,
        first_token_timeout_s=llm.first_token_timeout_s,
        token_timeout_s=llm.token_timeout_s,
        phone_id=phone_id or current_phone_id(),
    )


def build_embedded(llm: LlmSettings, gguf: Path) -> EmbeddedBackend:
    """The in-process backend for the resolved GGUF (`payphone.models.resolve_gguf`)."""
    return EmbeddedBackend(
        gguf, n_ctx=llm.num_ctx, n_threads=llm.n_threads, alone_threads=llm.n_threads_alone
    )


def build_backend(
    llm: LlmSettings, gguf: Path | None = None, *, phone_id: str | None = None
) -> Guarded:
    """The backend `llm.backend` names, wrapped in a breaker; call `await .start(prompt)` next.

    The embedded backend needs `gguf`, the resolved model file. Several Ollama hosts: a
    `Failover` over one breaker per host, each opening at its first failure (the turn moves on
    to the next host at once, so there is no reason to keep trying a failing one).
    """
    backend: ChatBackend
    host: str | None = None  # the breaker's name: its host, on /metrics and in its log events
    if llm.backend == "ollama" and len(llm.hosts) > 1:
        hosts = [build_ollama(llm, host, phone_id=phone_id) for host in llm.hosts]
        breakers = [
            CircuitBreaker(h, h.probe, failure_threshold=1, name=h.host.rstrip("/")) for h in hosts
        ]
        return Failover(breakers, first_token_s=llm.first_token_timeout_s)
    if llm.backend == "ollama":
        ollama_backend = build_ollama(llm, phone_id=phone_id)
        backend, probe = ollama_backend, ollama_backend.probe
        host = ollama_backend.host.rstrip("/")
    elif gguf is None:
        raise ValueError("llm.backend = embedded needs the GGUF path")
    else:
        embedded = build_embedded(llm, gguf)
        limits = llm.first_token_timeout_s, llm.token_timeout_s
        backend, probe = Deadlines(embedded, *limits), embedded.probe
    return CircuitBreaker(backend, probe, name=host)


def conversation(
    llm: LlmSettings,
    tag: str,
    prompt: str,
    count_tokens: TokenCounter = estimate_tokens,
    declared: Declared | None = None,
) -> Conversation:
    """A new call's memory for a persona: its tag or full prompt per `llm.prompt_style` and,
    for "auto", what the model `declared` (a backend's `declared_prompt_style`)."""
    system = choose(llm.prompt_style, declared).system_prompt(tag, prompt)
    return Conversation(system, llm.history_tokens, count_tokens)


def read_gguf_style(gguf: Path) -> Declared:
    """The prompt style a GGUF declares, read by llama.cpp with the vocabulary only (no weights,
    no context: ~0.1 s and nothing written to stderr)."""
    import ctypes

    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise ValueError(f"{gguf}: llama.cpp cannot read this GGUF")
    try:
        value = ctypes.create_string_buffer(64)
        found = llama_cpp.llama_model_meta_val_str(model, PROMPT_STYLE_KEY.encode(), value, 64)
    finally:
        llama_cpp.llama_model_free(model)
    metadata = {PROMPT_STYLE_KEY: value.value.decode()} if found >= 0 else {}
    return declared_style(metadata, f"GGUF {gguf.name}")


async def chosen_prompt_style(settings: Settings) -> ChosenStyle:
    """The style calls would use, asking the configured model as the phone does (`doctor`,
    `personas`): the GGUF's metadata, or Ollama's `show` for the model on Pi #2."""
    llm = settings.llm
    if llm.prompt_style != "auto":
        return choose(llm.prompt_style, None)
    if llm.backend == "embedded":
        from payphone.models import resolve_gguf

        return choose("auto", await asyncio.to_thread(read_gguf_style, resolve_gguf(settings)))
    backend = build_ollama(llm)
    backend.probe_timeout_s = llm.connect_timeout_s
    try:
        return choose("auto", await backend.ask_prompt_style())
    except LlmError as exc:
        return ChosenStyle("full", f"default: cannot ask Ollama for {llm.ollama_model} ({exc})")
    finally:
        await backend.aclose()
