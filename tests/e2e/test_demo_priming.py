"""The demo model (real SmolLM2 GGUF) primed and cut: a persona switch's warm-up evaluates the
system prompt and the examples, so the first reply evaluates only the caller's words; a reply
stopped by `num_predict` ends with `HIT_LIMIT` (embedded backend, and the Ollama client against
the protocol server backed by the same model), and the reply path then speaks only whole
sentences. A model that finishes on its own gives no mark."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import pytest

from payphone.config import Settings
from payphone.llm.base import ChatOptions, Message
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.history import Conversation
from payphone.llm.ollama_backend import OllamaBackend
from payphone.models import ModelNotFound, resolve_gguf
from payphone.personas.loader import load_personas
from payphone.reply.speakable import make_speakable
from payphone.streams import hit_limit
from tests.support.ollama_server import OllamaProtocolServer, embedded_reply

pytestmark = pytest.mark.models

STORY: list[Message] = [
    {"role": "system", "content": "You are Grandma Mae, a chatty grandmother."},
    {"role": "user", "content": "Tell me a long story about your cat Biscuit and the garden."},
]
SHORT: list[Message] = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "Is the sky blue? Answer yes or no."},
]
CUT = ChatOptions(num_predict=40, temperature=0.0)  # greedy: the same text every run


@pytest.fixture(scope="module")
def model() -> Iterator[EmbeddedBackend]:
    try:
        path = resolve_gguf(Settings())
    except ModelNotFound as exc:
        pytest.skip(f"demo GGUF not installed: {exc}")
    backend = EmbeddedBackend(path, n_ctx=2048, n_threads=1)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.aclose())


async def replay(pieces: list[str]) -> AsyncIterator[str]:
    for piece in pieces:
        yield piece


async def test_a_reply_cut_by_num_predict_ends_with_the_mark(model: EmbeddedBackend) -> None:
    pieces = [p async for p in model.stream(STORY, CUT)]
    assert hit_limit(pieces[-1]) and not any(hit_limit(p) for p in pieces[:-1])
    assert model.last_stats is not None and model.last_stats.generated_tokens >= CUT.num_predict - 1
    raw = "".join(pieces).strip()
    assert not re.search(r"[.!?…][\"')]*$", raw), f"ends a sentence after all: {raw!r}"

    spoken = " ".join([c async for c in make_speakable()(replay(pieces))])
    assert spoken and raw.startswith(spoken.split()[0])
    assert re.search(r"[.!?…]$", spoken), f"half a sentence spoken: {spoken!r}"
    assert len(spoken) < len(raw)  # the fragment is gone
    unmarked = " ".join([c async for c in make_speakable()(replay(pieces[:-1]))])
    assert len(unmarked) > len(spoken)  # without the mark the fragment would be spoken


async def test_a_reply_the_model_finishes_has_no_mark(model: EmbeddedBackend) -> None:
    pieces = [p async for p in model.stream(SHORT, ChatOptions(num_predict=64, temperature=0.0))]
    assert "".join(pieces).strip()
    assert not any(hit_limit(p) for p in pieces)


async def test_the_ollama_client_reads_done_reason_length(model: EmbeddedBackend) -> None:
    async with OllamaProtocolServer(reply=embedded_reply(model)) as srv:
        client = OllamaBackend(srv.url, "payphone-persona", first_token_timeout_s=60)
        cut = [p async for p in client.stream(STORY, CUT)]
        whole = [p async for p in client.stream(SHORT, ChatOptions(num_predict=64, temperature=0))]
        await client.aclose()
    assert hit_limit(cut[-1]) and "".join(cut).strip()
    assert not any(hit_limit(p) for p in whole)


async def test_the_warm_up_evaluates_the_examples_too(model: EmbeddedBackend) -> None:
    mae = load_personas().by_key("2")
    assert mae is not None
    convo = Conversation(mae.prompt, 1024, model.count_tokens, examples=mae.example_pairs)
    prefix_tokens = sum(model.count_tokens(m["content"]) for m in convo.prefix())
    await model.warm_up("Someone else entirely.")  # another persona in the cache
    await model.warm_up(convo.system_prompt, convo.examples)
    assert model.last_stats is not None
    assert model.last_stats.prompt_tokens >= prefix_tokens  # system prompt and every example
    caller = "Do you like gardening?"
    convo.add_user(caller)
    [_ async for _ in model.stream(convo.messages(), ChatOptions(num_predict=2, temperature=0))]
    assert model.last_stats.prompt_tokens <= model.count_tokens(caller) + 8  # only the caller


async def test_history_read_ahead_leaves_the_next_turn_only_the_callers_words(
    model: EmbeddedBackend,
) -> None:
    """A reply cut off by the caller is stored as they heard it, which is not what the model
    wrote; read ahead after the turn (as the call does), the next turn evaluates only the
    caller's new words."""
    mae = load_personas().by_key("2")
    assert mae is not None
    convo = Conversation(mae.prompt, 1024, model.count_tokens, examples=mae.example_pairs)
    await model.warm_up(convo.system_prompt, convo.examples)
    convo.add_user("Do you like gardening?")
    first_turn = convo.messages()
    pieces = [p async for p in model.stream(first_turn, CUT)]
    convo.add_interrupted("".join(pieces)[:20])  # cut off mid-reply
    caller = "What grows best in the shade?"

    async def next_turn_prompt_tokens() -> int:
        messages = [*convo.messages(), {"role": "user", "content": caller}]
        [_ async for _ in model.stream(messages, ChatOptions(num_predict=1, temperature=0))]
        assert model.last_stats is not None
        return model.last_stats.prompt_tokens

    await model.read_ahead(convo.messages())
    read_ahead = await next_turn_prompt_tokens()
    assert read_ahead <= model.count_tokens(caller) + 8  # only the caller's words
    # without it (the cache holds the reply as the model wrote it): the cut reply and its
    # mark are read again with the next turn
    [_ async for _ in model.stream(first_turn, CUT)]
    assert await next_turn_prompt_tokens() > read_ahead + 5
