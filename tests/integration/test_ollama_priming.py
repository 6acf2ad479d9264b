"""The real `ollama` client: the warm-up primes the persona's examples after its system prompt,
and a reply Ollama stopped at `num_predict` (done_reason "length") ends with `HIT_LIMIT`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from payphone.llm.base import ChatOptions, Message
from payphone.llm.history import Conversation
from payphone.llm.ollama_backend import OllamaBackend
from payphone.streams import hit_limit
from tests.support.ollama_server import OllamaProtocolServer, scripted_reply

WORDS = [f" word{i}." for i in range(20)]


@pytest.fixture
async def server() -> AsyncIterator[OllamaProtocolServer]:
    async with OllamaProtocolServer(reply=scripted_reply(WORDS, interval_s=0.001)) as srv:
        yield srv


async def test_warm_up_primes_system_prompt_and_examples(server: OllamaProtocolServer) -> None:
    convo = Conversation("You are Mae.", 500, examples=[("Hi", "Hello, sweetie.")])
    client = OllamaBackend(server.url, "payphone-persona")
    await client.warm_up(convo.system_prompt, convo.examples)
    await client.aclose()
    _preload, prime = server.chats
    assert prime.messages == convo.prefix()
    assert [m["role"] for m in prime.messages] == ["system", "user", "assistant"]
    assert prime.options == {"num_predict": 1}


async def test_a_reply_stopped_at_num_predict_ends_with_the_mark(
    server: OllamaProtocolServer,
) -> None:
    client = OllamaBackend(server.url, "payphone-persona")
    hello: list[Message] = [{"role": "user", "content": "Hello?"}]
    cut = [p async for p in client.stream(hello, ChatOptions(num_predict=5))]
    whole = [p async for p in client.stream(hello, ChatOptions(num_predict=50))]
    await client.aclose()
    assert cut[:-1] == WORDS[:5] and hit_limit(cut[-1])
    assert whole == WORDS  # finished on its own: no mark
