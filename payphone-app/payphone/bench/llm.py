"""`payphone bench llm`: how fast the persona model answers, and how fast failures are noticed.

Figures, never pass/fail:
- embedded (llama.cpp in-process) and ollama (the real `ollama` client against the test server
  that speaks Ollama's protocol, backed by the same embedded model): time to first token and
  tokens per second, after warm-up, with the demo model;
- for each failure type, the time from the fault to the `LlmError` (the moment the call loop
  starts the fallback the caller hears), with the configured limits (`llm.*_timeout_s`);
- an abandoned prompt: a caller hangs up 50 ms into a long prompt's evaluation; how long the
  model stays busy after that, and the next caller's first token (issue: one call's leftovers
  must not delay the next call).

The protocol server lives in `tests/support/`; the bench needs a source checkout for the ollama
half and says so when it is missing.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from payphone.config import Settings
from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.llm.breaker import CircuitBreaker
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.factory import build_embedded, build_ollama, chat_options
from payphone.models import resolve_gguf

SYSTEM = (
    "You are Mabel, a switchboard operator in 1952. You answer in one or two short sentences, "
    "warmly, and you never mention being a computer program."
)
QUESTIONS = [
    "Hello? Who is this?",
    "Can you put me through to the bakery on Main Street?",
    "What is the weather like today?",
]
MODEL = "payphone-persona"


def _messages(question: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def _timed_reply(backend: ChatBackend, question: str, options: ChatOptions) -> dict[str, Any]:
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    try:
        async for _ in backend.stream(_messages(question), options):
            pieces += 1
            if first is None:
                first = time.perf_counter()
    except LlmError as exc:  # e.g. a stall on an overloaded machine: a figure, not a crash
        return {"error": exc.cause, "pieces": pieces}
    ended = time.perf_counter()
    ttft = (first or ended) - started
    rate = (pieces - 1) / (ended - first) if first is not None and pieces > 1 else 0.0
    return {"ttft_ms": round(ttft * 1000, 1), "pieces": pieces, "pieces_per_s": round(rate, 1)}


def _summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    if not good:
        print(f"{name:9} no reply finished: {', '.join(errors)}")
        return {"runs": len(runs), "errors": errors}
    ttfts = [r["ttft_ms"] for r in good]
    rates = [r["pieces_per_s"] for r in good]
    out = {
        "ttft_ms_median": round(statistics.median(ttfts), 1),
        "ttft_ms_max": max(ttfts),
        "tokens_per_s_median": round(statistics.median(rates), 1),
        "runs": len(runs),
        "errors": errors,
    }
    print(
        f"{name:9} first token {out['ttft_ms_median']:7.1f} ms (max {out['ttft_ms_max']:.1f}), "
        f"{out['tokens_per_s_median']:6.1f} tokens/s over {len(good)} replies"
        + (f"; failed: {', '.join(errors)}" if errors else "")
    )
    return out


def _questions(trials: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(trials)]


async def _bench_embedded(
    model: EmbeddedBackend, options: ChatOptions, trials: int
) -> dict[str, Any]:
    await model.warm_up(SYSTEM)
    runs = []
    for question in _questions(trials):
        await model.warm_up(SYSTEM)  # each reply starts from the primed persona, as in a call
        run = await _timed_reply(model, question, options)
        stats = model.last_stats
        if stats is not None:
            run["prompt_tokens_evaluated"] = stats.prompt_tokens
        runs.append(run)
    result = _summary("embedded", runs)
    result["prompt_tokens_evaluated"] = [r.get("prompt_tokens_evaluated") for r in runs]
    return result


async def _abandoned_prompt(model: EmbeddedBackend, trials: int) -> dict[str, Any]:
    """Hang up 50 ms into ~1,800 prompt tokens; then time the model's release and a new reply."""
    long_question = "Tell me about the ocean and the weather. " * 200
    busy, next_first = [], []
    for _ in range(trials):
        stream = model.stream(_messages(long_question), ChatOptions(num_predict=2))
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        first.cancel()
        hung_up = time.perf_counter()
        await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
        await model.wait_idle()
        busy.append((time.perf_counter() - hung_up) * 1000)
        reply = await _timed_reply(model, QUESTIONS[0], ChatOptions(num_predict=4))
        next_first.append(reply.get("ttft_ms", float("nan")))
    figures = {
        "model_busy_after_hangup_ms_p50": round(statistics.median(busy), 1),
        "model_busy_after_hangup_ms_max": round(max(busy), 1),
        "next_first_token_ms_p50": round(statistics.median(next_first), 1),
    }
    print(
        f"abandoned prompt: model busy {figures['model_busy_after_hangup_ms_p50']} ms after the "
        f"hang-up (max {figures['model_busy_after_hangup_ms_max']}); next caller's first token "
        f"{figures['next_first_token_ms_p50']} ms"
    )
    return figures


async def _bench_ollama(
    settings: Settings, model: EmbeddedBackend, options: ChatOptions, trials: int
) -> dict[str, Any]:
    from tests.support.ollama_server import OllamaProtocolServer, embedded_reply

    async with OllamaProtocolServer(reply=embedded_reply(model)) as server:
        client = build_ollama(settings.llm, server.url, MODEL)
        await client.warm_up(SYSTEM)
        runs = []
        for question in _questions(trials):
            await client.warm_up(SYSTEM)
            runs.append(await _timed_reply(client, question, options))
        await client.aclose()
    return _summary("ollama", runs)


async def _fault_to_error(settings: Settings, fault_kind: str) -> dict[str, Any]:
    """Time from the fault (as the server logs it) to the LlmError at the client."""
    from tests.support.ollama_server import Fault, OllamaProtocolServer, free_port, scripted_reply

    options = chat_options(settings.llm)
    words = [f" word{i}" for i in range(60)]
    faults = {
        "model_not_found": Fault("status", status=404),
        "server_error": Fault("status", status=500),
        "stall_first_token": Fault("stall_first"),
        "stall_mid_stream": Fault("stall_mid", after=5),
        "error_line": Fault("error_line", after=5),
        "malformed": Fault("malformed", after=5),
    }
    if fault_kind == "refused":
        client = build_ollama(settings.llm, f"http://127.0.0.1:{free_port()}", MODEL)
        started = time.perf_counter()
        cause = await _drain(client, options)
        await client.aclose()
        return {
            "cause": cause,
            "fault_to_error_ms": round((time.perf_counter() - started) * 1000, 1),
        }
    async with OllamaProtocolServer(
        reply=scripted_reply(words, 0.01), fault=faults[fault_kind]
    ) as server:
        client = build_ollama(settings.llm, server.url, MODEL)
        cause = await _drain(client, options)
        failed = time.perf_counter()
        await client.aclose()
        fault_at = server.chats[-1].fault_at or failed
    return {"cause": cause, "fault_to_error_ms": round((failed - fault_at) * 1000, 1)}


async def _drain(client: ChatBackend, options: ChatOptions) -> str:
    try:
        async for _ in client.stream(_messages("Hello?"), options):
            pass
    except LlmError as exc:
        return exc.cause
    return "no error"


async def _circuit_open(settings: Settings) -> dict[str, Any]:
    """With the breaker open, how long until the caller gets the fallback."""
    from tests.support.ollama_server import free_port

    client = build_ollama(settings.llm, f"http://127.0.0.1:{free_port()}", MODEL)
    breaker = CircuitBreaker(client, client.probe, probe_interval_s=60)
    await breaker.start()  # refused: starts open
    started = time.perf_counter()
    cause = await _drain(breaker, chat_options(settings.llm))
    took = time.perf_counter() - started
    await breaker.aclose()
    return {"cause": cause, "fault_to_error_ms": round(took * 1000, 3)}


async def _run(settings: Settings, trials: int) -> dict[str, Any]:
    options = chat_options(settings.llm)
    llm = settings.llm
    print(
        f"model {llm.gguf}; num_predict {options.num_predict}, temperature {options.temperature}; "
        f"limits: connect {llm.connect_timeout_s} s, first token {llm.first_token_timeout_s} s, "
        f"between tokens {llm.token_timeout_s} s"
    )
    model = build_embedded(llm, resolve_gguf(settings))
    load_started = time.perf_counter()
    await model.load()
    result: dict[str, Any] = {
        "model": llm.gguf,
        "load_ms": round((time.perf_counter() - load_started) * 1000, 1),
        "embedded": await _bench_embedded(model, options, trials),
        "abandoned_prompt": await _abandoned_prompt(model, trials),
    }
    try:
        result["ollama"] = await _bench_ollama(settings, model, options, trials)
    except ImportError:
        print("ollama    skipped: tests/support (the protocol server) needs a source checkout")
        result["ollama"] = None
    failures: dict[str, Any] = {}
    if result["ollama"] is not None:
        kinds = [
            "refused",
            "model_not_found",
            "server_error",
            "error_line",
            "malformed",
            "stall_first_token",
            "stall_mid_stream",
        ]
        for kind in kinds:
            failures[kind] = await _fault_to_error(settings, kind)
        failures["circuit_open"] = await _circuit_open(settings)
        for kind, figure in failures.items():
            print(
                f"fault {kind:18} -> LlmError({figure['cause']}) after "
                f"{figure['fault_to_error_ms']:9.1f} ms"
            )
    result["fault_to_error"] = failures
    await model.aclose()
    return result


def main(settings: Settings, trials: int = 3) -> dict[str, Any]:
    """Run the LLM benchmark (`trials` replies per backend); prints lines, returns figures."""
    return asyncio.run(_run(settings, trials))
