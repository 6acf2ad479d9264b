"""The embedded backend with the real SmolLM2 GGUF, the protocol server backed by it, and history.

The model (135M parameters, ~0.1 s to load) is loaded once for the module. Prompt caching is
checked with llama.cpp's own counters (prompt tokens evaluated), never with time.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from payphone.config import Settings
from payphone.cores import FIRST_AUDIO, working
from payphone.llm.base import ChatOptions, LlmError, Message
from payphone.llm.breaker import BreakerState
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.factory import build_backend, chat_options, conversation
from payphone.llm.history import INTERRUPTED_MARKER, Conversation, choose_system_prompt
from payphone.llm.ollama_backend import OllamaBackend
from payphone.models import ModelNotFound, resolve_gguf
from tests.support.ollama_server import OllamaProtocolServer, embedded_reply

pytestmark = pytest.mark.models

GREEDY = ChatOptions(num_predict=16, temperature=0.0)
PROMPT_ONLY = ChatOptions(num_predict=2, temperature=0.0)  # for counting prompt tokens


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llm-embedded" and t.is_alive()]


async def threads_ended(timeout_s: float = 5.0) -> bool:
    """The worker reports idle just before its thread returns: give it a moment to exit."""
    deadline = time.monotonic() + timeout_s
    while worker_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return worker_threads() == []


@pytest.fixture(scope="module")
def model() -> Iterator[EmbeddedBackend]:
    try:
        path = resolve_gguf(Settings())
    except ModelNotFound as exc:
        pytest.skip(f"demo GGUF not installed: {exc}")
    backend = EmbeddedBackend(path, n_ctx=2048, n_threads=1)  # 2-core CI: one thread is faster
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.aclose())


def ask(system: str, user: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def streaming(
    model: EmbeddedBackend, messages: list[Message], options: ChatOptions, into: list[str]
) -> asyncio.Task[None]:
    """The reply consumed piece by piece into `into` by a task of its own, as a turn does."""

    async def consume() -> None:
        async for piece in model.stream(messages, options):
            into.append(piece)

    return asyncio.create_task(consume())


async def test_reply_streams_piece_by_piece(model: EmbeddedBackend) -> None:
    pieces = [
        p async for p in model.stream(ask("You are a friendly operator.", "Say hello."), GREEDY)
    ]
    assert len(pieces) > 3
    assert "".join(pieces).strip()
    assert model.last_stats is not None
    assert 0 < model.last_stats.generated_tokens <= GREEDY.num_predict + 1
    assert model.last_stats.ttft_ms is not None


async def test_each_reply_frees_its_native_sampler(model: EmbeddedBackend) -> None:
    """llama-cpp-python's sampler waits in a reference cycle for a full GC unless freed."""
    from llama_cpp._internals import LlamaSampler

    def holding_native_memory() -> int:
        return sum(
            1 for o in gc.get_objects() if isinstance(o, LlamaSampler) and o.sampler is not None
        )

    gc.disable()
    try:
        for question in ("Say hello.", "Say goodbye.", "Say thanks."):
            async for _ in model.stream(ask("You are an operator.", question), GREEDY):
                pass
        assert holding_native_memory() == 0
    finally:
        gc.enable()


async def test_cancel_between_tokens_stops_the_worker(model: EmbeddedBackend) -> None:
    long = ChatOptions(num_predict=400, temperature=0.0)
    got: list[str] = []
    task = streaming(model, ask("You are a storyteller.", "Tell a long story."), long, got)
    while len(got) < 3:
        await asyncio.sleep(0.005)
    task.cancel()  # hang-up
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await model.wait_idle(timeout_s=10)
    assert await threads_ended()
    assert model.last_stats is not None
    assert model.last_stats.generated_tokens < 100  # stopped well before num_predict
    # the next reply is whole and its own: nothing late from the cancelled one leaks in
    short = ChatOptions(num_predict=6, temperature=0.0)
    again = [p async for p in model.stream(ask("You are a friendly operator.", "Say hi."), short)]
    assert again and "".join(again).strip()


async def test_every_core_only_while_no_speech_stage_works(
    model: EmbeddedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    import payphone.llm.embedded as embedded

    monkeypatch.setattr(model, "alone_threads", 2)
    used: list[int] = []  # llama.cpp's thread count for each evaluation, read in the worker
    fit = model._fit_threads

    def fit_and_record(lib: Any, llm: Any) -> None:
        fit(lib, llm)
        used.append(int(lib.llama_n_threads(llm._ctx.ctx)))

    monkeypatch.setattr(model, "_fit_threads", fit_and_record)
    # Piper is at work for the prompt and the first two tokens, then finishes
    busy = iter([True, True, True])
    monkeypatch.setattr(embedded, "others_working", lambda: next(busy, False))
    options = ChatOptions(num_predict=8, temperature=0.0)
    async for _ in model.stream(ask("You are a storyteller.", "Tell a story."), options):
        pass
    assert used[:3] == [1, 1, 1]
    assert len(used) > 3 and set(used[3:]) == {2}
    assert llama_cpp.llama_n_threads_batch(model._llm._ctx.ctx) == 2  # prompts too


async def test_no_token_while_a_replys_first_words_render(model: EmbeddedBackend) -> None:
    """Piper renders the first words (the mark held on the loop, as a turn holds it): the model
    finishes at most the token it is on, then waits, and goes on once they are rendered."""
    options = ChatOptions(num_predict=60, temperature=0.0)
    got: list[str] = []
    task = streaming(model, ask("You are a storyteller.", "Tell a story."), options, got)
    async with asyncio.timeout(30):
        while len(got) < 2:
            await asyncio.sleep(0.005)
    with working(FIRST_AUDIO):
        at_start = len(got)
        await asyncio.sleep(0.5)  # ~20 tokens' time on one thread here; the wait's cap is 1 s
        during = len(got) - at_start
    await task
    # the token being written and one already on its way may still arrive
    assert during <= 2, f"{during} pieces arrived while the first words rendered"
    assert len(got) > at_start + during + 5  # and the reply went on afterwards


async def test_one_generation_at_a_time(model: EmbeddedBackend) -> None:
    async def reply(user: str) -> str:
        short = ChatOptions(num_predict=8, temperature=0.0)
        return "".join([p async for p in model.stream(ask("You are terse.", user), short)])

    first, second = await asyncio.gather(reply("Name a colour."), reply("Name a fruit."))
    assert first.strip() and second.strip()
    alone = await reply("Name a colour.")
    assert alone == first  # greedy: same prompt, same reply, so nothing was mixed up


async def test_warm_up_caches_the_system_prompt(model: EmbeddedBackend) -> None:
    persona = (
        "You are Mabel, a switchboard operator in 1952. You speak briefly and warmly, "
        "you call the caller 'dear', and you never mention being a computer program."
    )
    user = "Who am I speaking to?"
    # cold: a different persona was in the cache, so the whole prompt is evaluated
    await model.warm_up("You are someone else entirely.")
    [_ async for _ in model.stream(ask(persona, user), PROMPT_ONLY)]
    assert model.last_stats is not None
    cold = model.last_stats.prompt_tokens

    await model.warm_up("Another persona pushes Mabel out of the cache.")
    await model.warm_up(persona)
    assert model.last_stats is not None
    primed = model.last_stats.prompt_tokens
    [_ async for _ in model.stream(ask(persona, user), PROMPT_ONLY)]
    warm = model.last_stats.prompt_tokens

    user_tokens = model.count_tokens(user)
    assert primed >= model.count_tokens(persona) - 8  # warm-up evaluated the persona prompt
    assert warm <= user_tokens + 8  # after warm-up only the caller's words (and markers)
    assert warm < cold / 3


async def test_ollama_client_against_server_backed_by_the_model(model: EmbeddedBackend) -> None:
    async with OllamaProtocolServer(reply=embedded_reply(model)) as srv:
        client = OllamaBackend(
            srv.url, "payphone-persona", first_token_timeout_s=60, token_timeout_s=30
        )
        await client.warm_up("You are a friendly operator.")
        pieces = [
            p async for p in client.stream(ask("You are a friendly operator.", "Hi!"), GREEDY)
        ]
        await client.aclose()
    assert len(pieces) > 3 and "".join(pieces).strip()
    assert srv.chats[-1].finished


async def test_factory_builds_a_breaker_around_the_embedded_model(model: EmbeddedBackend) -> None:
    settings = Settings(
        llm={"backend": "embedded", "num_predict": 16, "temperature": 0.0, "n_threads": 1}
    )
    breaker = build_backend(settings.llm, model.model_path)
    status = await breaker.start("You are terse.")
    assert status.state is BreakerState.CLOSED
    options = chat_options(settings.llm)
    text = "".join([p async for p in breaker.stream(ask("You are terse.", "Hello?"), options)])
    assert text.strip()
    await breaker.aclose()


async def test_missing_gguf_starts_degraded(tmp_path: object) -> None:
    backend = EmbeddedBackend(__import__("pathlib").Path("/nonexistent/persona.gguf"))
    with pytest.raises(LlmError) as failure:
        await backend.load()
    assert failure.value.cause == "load_failed"


# --- conversation memory -------------------------------------------------------------------


def test_history_trims_oldest_turns_with_the_models_tokenizer(model: EmbeddedBackend) -> None:
    convo = Conversation("You are Mabel.", budget_tokens=120, count_tokens=model.count_tokens)
    for i in range(12):
        convo.add_user(f"Question number {i}: what is the weather like in town today?")
        convo.add_assistant(f"Answer number {i}: sunny with a light breeze, dear.")
    convo.add_user("And tomorrow?")
    sent = convo.messages()
    assert sent[0] == {"role": "system", "content": "You are Mabel."}
    assert sent[-1] == {"role": "user", "content": "And tomorrow?"}
    assert sent[1]["role"] == "user"  # never starts with a reply to a forgotten question
    assert sum(convo.tokens(m) for m in sent) <= 120
    assert len(sent) < 1 + 25
    assert "Answer number 11" in sent[-2]["content"]  # the newest turns are the ones kept


def test_history_never_drops_system_or_latest_user() -> None:
    convo = Conversation("S" * 400, budget_tokens=64)
    convo.add_user("old")
    convo.add_assistant("old reply")
    convo.add_user("x" * 800)
    sent = convo.messages()
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[1]["content"] == "x" * 800


def test_interrupted_reply_is_what_was_spoken_plus_a_marker() -> None:
    convo = Conversation("You are Mabel.", budget_tokens=500)
    convo.add_user("Tell me about the exchange.")
    convo.add_interrupted("Well, dear, the exchange opened in ")
    assert convo.turns[-1] == {
        "role": "assistant",
        "content": f"Well, dear, the exchange opened in — {INTERRUPTED_MARKER}",
    }
    convo.add_user("Wait.")
    convo.add_interrupted("")
    assert convo.turns[-1]["content"] == INTERRUPTED_MARKER


def test_new_persona_new_history_and_cancelled_turns_are_forgotten() -> None:
    convo = Conversation(choose_system_prompt("full", "<mabel>", "You are Mabel."), 500)
    assert convo.system_prompt == "You are Mabel."
    convo.add_user("Hello")
    convo.add_assistant("Hello, dear.")
    convo.add_user("half a question that was cancel")
    convo.discard_unanswered()
    assert [m["role"] for m in convo.messages()] == ["system", "user", "assistant"]
    convo.reset(choose_system_prompt("tag", "<captain>", "You are the Captain."))
    assert convo.messages() == [{"role": "system", "content": "<captain>"}]


def test_prompt_style_setting_picks_tag_or_full_prompt() -> None:
    tagged = conversation(Settings(llm={"prompt_style": "tag"}).llm, "<mabel>", "You are Mabel.")
    full = conversation(Settings(llm={"prompt_style": "full"}).llm, "<mabel>", "You are Mabel.")
    assert tagged.system_prompt == "<mabel>"
    assert full.system_prompt == "You are Mabel."


async def test_a_hang_up_during_a_long_prompt_frees_the_model_at_once(
    model: EmbeddedBackend,
) -> None:
    """A previous call's abandoned prompt evaluation must not delay the next caller."""
    long_prompt = ask("You are Mabel.", "Tell me about the ocean and the weather. " * 200)
    stream = model.stream(long_prompt, PROMPT_ONLY)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)  # the worker is evaluating ~1,800 prompt tokens (seconds)
    first.cancel()  # hang-up
    await asyncio.gather(first, return_exceptions=True)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await model.wait_idle(0.5)  # llama.cpp's abort callback stopped the evaluation
    reply = [p async for p in model.stream(ask("You are Mabel.", "Hello!"), GREEDY)]
    assert "".join(reply).strip()  # the KV cache is usable after the abort
