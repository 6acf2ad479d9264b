"""The real `ollama` client (through OllamaBackend) against a server speaking Ollama's protocol.

Every failure the payphone must survive is injected by the server with exact timings, and each
must become the right `LlmError` cause within the configured limit (small limits here). Hang-ups
must close the connection so the server stops generating. The breaker must open, fail fast and
recover by itself. Two tests put the far end in a network namespace (root only): one cuts the
cable mid-reply, one looks up a host name with no network at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import ollama
import pytest

from payphone.config import Settings
from payphone.llm.base import ChatOptions, LlmError, Message
from payphone.llm.breaker import CIRCUIT_OPEN, BreakerState, CircuitBreaker
from payphone.llm.history import Conversation
from payphone.llm.ollama_backend import OllamaBackend, keep_alive_value
from tests.helpers import REPO
from tests.support.ollama_server import (
    ChatLog,
    Fault,
    OllamaProtocolServer,
    free_port,
    scripted_reply,
)

MODEL = "payphone-persona"
CONNECT_S = 0.3
FIRST_S = 0.4
TOKEN_S = 0.3
ROOMY_S = 5.0  # limits for tests about something else: a loaded CI box once took > 0.4 s
SLACK_S = 1.5  # scheduling slack on a busy 2-core CI machine; the limits themselves are tiny
HELLO: list[Message] = [
    {"role": "system", "content": "You are Mabel, the operator."},
    {"role": "user", "content": "Hello?"},
]
OPTIONS = ChatOptions(num_predict=64, temperature=0.2, num_ctx=1024, stop=("\n\n",))
LONG_REPLY = [f" word{i}" for i in range(400)]


def backend(
    url: str,
    model: str = MODEL,
    first_s: float = ROOMY_S,
    connect_s: float = ROOMY_S,
    token_s: float = ROOMY_S,
) -> OllamaBackend:
    """A client whose limits are roomy unless a test is about them (loaded CI boxes are slow)."""
    return OllamaBackend(
        url,
        model,
        connect_timeout_s=connect_s,
        first_token_timeout_s=first_s,
        token_timeout_s=token_s,
        probe_timeout_s=0.5,
    )


@dataclass
class Outcome:
    pieces: list[str]
    error: LlmError | None
    elapsed_s: float


async def collect(
    client: OllamaBackend | CircuitBreaker, messages: list[Message] = HELLO
) -> Outcome:
    pieces: list[str] = []
    started = time.perf_counter()
    try:
        async for piece in client.stream(messages, OPTIONS):
            pieces.append(piece)
    except LlmError as exc:
        return Outcome(pieces, exc, time.perf_counter() - started)
    return Outcome(pieces, None, time.perf_counter() - started)


async def wait_done(log: ChatLog, limit_s: float = 5.0) -> None:
    async with asyncio.timeout(limit_s):
        await log.done.wait()


@pytest.fixture
async def server() -> AsyncIterator[OllamaProtocolServer]:
    async with OllamaProtocolServer() as srv:
        yield srv


async def test_normal_stream_sends_what_ollama_expects(server: OllamaProtocolServer) -> None:
    client = backend(server.url)
    outcome = await collect(client)
    await client.aclose()

    assert outcome.error is None
    assert outcome.pieces == ["Hello", " there", ",", " caller", "."]
    chat = server.chats[-1]
    assert chat.stream is True
    assert chat.think is False
    assert chat.keep_alive == -1
    assert chat.model == f"{MODEL}:latest"
    assert chat.messages == HELLO
    assert chat.options == {
        "num_predict": 64,
        "temperature": 0.2,
        "num_ctx": 1024,
        "stop": ["\n\n"],
    }
    assert chat.finished and not chat.client_closed


@pytest.mark.parametrize(
    ("fault", "cause", "pieces_before"),
    [
        (Fault("status", status=404), "model_not_found", 0),
        (Fault("status", status=500), "server_error", 0),
        (Fault("status", status=503), "server_error", 0),
        (Fault("error_line", after=2), "error_line", 2),
        (Fault("malformed", after=3), "malformed", 3),
    ],
)
async def test_server_faults_become_llm_errors(
    server: OllamaProtocolServer, fault: Fault, cause: str, pieces_before: int
) -> None:
    server.fault = fault
    client = backend(server.url)
    outcome = await collect(client)
    await client.aclose()

    assert outcome.error is not None
    assert outcome.error.cause == cause
    assert len(outcome.pieces) == pieces_before
    assert outcome.elapsed_s < SLACK_S


async def test_unknown_model_is_model_not_found(server: OllamaProtocolServer) -> None:
    client = backend(server.url, model="no-such-persona")
    outcome = await collect(client)
    assert outcome.error is not None and outcome.error.cause == "model_not_found"
    assert "no-such-persona" in outcome.error.detail
    with pytest.raises(LlmError) as probe_error:
        await client.probe()
    assert probe_error.value.cause == "model_not_found"
    assert await client.has_model() is False
    await client.aclose()


async def test_refused_connection() -> None:
    client = backend(f"http://127.0.0.1:{free_port()}", connect_s=CONNECT_S)
    outcome = await collect(client)
    assert outcome.error is not None and outcome.error.cause == "refused"
    assert outcome.elapsed_s < CONNECT_S + SLACK_S
    with pytest.raises(LlmError) as probe_error:
        await client.probe()
    assert probe_error.value.cause == "refused"
    await client.aclose()


@pytest.mark.parametrize(
    ("fault", "cause", "limit_s", "pieces_before"),
    [
        (Fault("stall_first"), "stall_first_token", FIRST_S, 0),
        (Fault("stall_mid", after=3), "stall_mid_stream", TOKEN_S, 3),
    ],
)
async def test_stalls_end_within_the_limit_and_close_the_stream(
    server: OllamaProtocolServer, fault: Fault, cause: str, limit_s: float, pieces_before: int
) -> None:
    server.fault = fault
    client = backend(server.url, first_s=FIRST_S, token_s=TOKEN_S)
    outcome = await collect(client)
    chat = server.chats[-1]
    await wait_done(chat)
    await client.aclose()

    assert outcome.error is not None and outcome.error.cause == cause
    assert len(outcome.pieces) == pieces_before
    assert chat.fault_at is not None  # the server really stalled
    assert outcome.elapsed_s >= limit_s * 0.9  # the limit, not something else, ended it
    assert outcome.elapsed_s < limit_s + SLACK_S
    # the client hung up on the stalled stream: the server stopped generating
    assert chat.client_closed and not chat.finished


async def test_server_dying_mid_stream_is_disconnected() -> None:
    srv = await OllamaProtocolServer(reply=scripted_reply(LONG_REPLY, 0.02)).start()
    client = backend(srv.url)
    pieces: list[str] = []

    async def listen() -> None:
        async for piece in client.stream(HELLO, OPTIONS):
            pieces.append(piece)
            if len(pieces) == 3:
                await srv.stop()  # Pi #2 loses power: the connection is reset

    with pytest.raises(LlmError) as failure:
        await listen()
    await client.aclose()
    assert failure.value.cause == "disconnected"
    assert len(pieces) == 3


async def test_first_token_limit_counts_from_the_request_not_per_piece() -> None:
    # pieces every 0.25 s but the first one late: 0.25 < FIRST_S, so the deadline must hold
    async with OllamaProtocolServer(reply=scripted_reply(["a", "b"], 0.25)) as srv:
        srv.fault = Fault("stall_first", stall_s=FIRST_S * 0.8)
        client = backend(srv.url, first_s=FIRST_S, token_s=TOKEN_S)
        outcome = await collect(client)
        await client.aclose()
    assert outcome.error is not None and outcome.error.cause == "stall_first_token"


async def test_cancel_mid_stream_closes_the_connection() -> None:
    async with OllamaProtocolServer(reply=scripted_reply(LONG_REPLY, 0.02)) as srv:
        client = backend(srv.url)
        got: list[str] = []

        async def consume() -> None:
            async for piece in client.stream(HELLO, OPTIONS):
                got.append(piece)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.01)
        task.cancel()  # the caller hung up
        with pytest.raises(asyncio.CancelledError):
            await task
        chat = srv.chats[-1]
        await wait_done(chat)
        sent_at_close = chat.pieces_sent
        await asyncio.sleep(0.2)
        await client.aclose()

    assert chat.client_closed and not chat.finished
    assert chat.pieces_sent == sent_at_close < len(LONG_REPLY)


async def test_leaving_early_closes_the_connection() -> None:
    async with OllamaProtocolServer(reply=scripted_reply(LONG_REPLY, 0.02)) as srv:
        client = backend(srv.url)
        stream = client.stream(HELLO, OPTIONS)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for _ in stream:
                break  # e.g. the output guard has enough words
        chat = srv.chats[-1]
        await wait_done(chat)
        await client.aclose()
    assert chat.client_closed and not chat.finished


async def test_warm_up_preloads_and_primes_the_system_prompt(server: OllamaProtocolServer) -> None:
    client = backend(server.url)
    await client.warm_up("You are Mabel, the operator.")
    await client.aclose()

    preload, prime = server.chats
    assert preload.messages == [] and preload.stream is False
    assert prime.messages == [{"role": "system", "content": "You are Mabel, the operator."}]
    assert prime.options == {"num_predict": 1}
    assert preload.keep_alive == prime.keep_alive == -1


async def test_server_answers_show_and_version_like_ollama(server: OllamaProtocolServer) -> None:
    client = ollama.AsyncClient(host=server.url)
    shown = await client.show(MODEL)
    listed = await client.list()
    await client.close()
    assert shown.details is not None and shown.details.format == "gguf"
    assert [m.model for m in listed.models] == [f"{MODEL}:latest"]
    assert "/api/show" in server.requests


def test_keep_alive_numbers_go_over_as_numbers() -> None:
    assert keep_alive_value("-1") == -1
    assert keep_alive_value("30m") == "30m"


async def test_breaker_opens_fails_fast_and_recovers_on_the_same_port() -> None:
    srv = await OllamaProtocolServer().start()
    port = srv.port
    inner = backend(srv.url)
    breaker = CircuitBreaker(
        inner, inner.probe, failure_threshold=3, probe_interval_s=0.2, probe_max_interval_s=0.4
    )
    await breaker.warm_up("You are Mabel.")  # remembered; re-primed after recovery
    srv.fault = Fault("status", status=503)

    causes = [(await collect(breaker)).error for _ in range(3)]
    assert [e.cause for e in causes if e] == ["server_error"] * 3
    assert breaker.state is not BreakerState.CLOSED
    chats_before = len(srv.chats)

    fast = await collect(breaker)
    assert fast.error is not None and fast.error.cause == CIRCUIT_OPEN
    assert "server_error" in fast.error.detail
    assert len(srv.chats) == chats_before  # failing fast touched no network

    await srv.stop()  # Pi #2 reboots: now connections are refused
    async with asyncio.timeout(10):
        while breaker.status.last_cause != "refused":
            await asyncio.sleep(0.02)
    assert breaker.status.state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
    assert breaker.status.probes >= 1

    async with OllamaProtocolServer(port=port) as back:
        async with asyncio.timeout(10):
            await breaker.wait_closed()
        assert breaker.status.state is BreakerState.CLOSED
        assert back.chats[0].messages == []  # re-primed: preload ...
        assert back.chats[1].messages == [{"role": "system", "content": "You are Mabel."}]
        outcome = await collect(breaker)
        assert outcome.error is None and "".join(outcome.pieces) == "Hello there, caller."
    await breaker.aclose()


async def test_breaker_counts_only_consecutive_failures(server: OllamaProtocolServer) -> None:
    inner = backend(server.url)
    breaker = CircuitBreaker(inner, inner.probe, failure_threshold=3, probe_interval_s=0.05)
    for fault in (Fault("error_line", after=1), Fault("error_line", after=1), Fault()):
        server.fault = fault
        await collect(breaker)
    server.fault = Fault("error_line", after=1)
    await collect(breaker)
    await collect(breaker)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.status.failures == 2
    await breaker.aclose()


async def test_service_starts_degraded_without_pi2_and_recovers() -> None:
    port = free_port()
    inner = backend(f"http://127.0.0.1:{port}")
    breaker = CircuitBreaker(inner, inner.probe, probe_interval_s=0.05, probe_max_interval_s=0.2)
    status = await breaker.start("You are Mabel.")
    assert status.state is BreakerState.OPEN
    assert status.last_cause == "refused"
    assert "down" in status.explain() and "refused" in status.explain()
    fast = await collect(breaker)
    assert fast.error is not None and fast.error.cause == CIRCUIT_OPEN

    async with OllamaProtocolServer(port=port) as srv:
        async with asyncio.timeout(10):
            await breaker.wait_closed()
        outcome = await collect(breaker)
        assert outcome.error is None and outcome.pieces
        assert srv.chats[1].messages[0]["content"] == "You are Mabel."
        assert breaker.status.explain() == "LLM backend: up"
    await breaker.aclose()


async def test_history_feeds_the_stream_and_keeps_an_interrupted_reply(
    server: OllamaProtocolServer,
) -> None:
    convo = Conversation("You are Mabel.", budget_tokens=200)
    convo.add_user("Hello?")
    client = backend(server.url)
    spoken = (await collect(client, convo.messages())).pieces[:2]
    convo.add_interrupted("".join(spoken))
    convo.add_user("Sorry, go on.")
    await collect(client, convo.messages())
    await client.aclose()
    sent = server.chats[-1].messages
    assert sent[0] == {"role": "system", "content": "You are Mabel."}
    assert sent[2]["content"].startswith("Hello there — [")
    assert sent[-1] == {"role": "user", "content": "Sorry, go on."}


# --- two hosts: the server in a network namespace ------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted afterwards; skips where netns is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    name = f"pptest{os.getpid() % 100000}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"ip netns add not permitted: {made.stderr.strip()}")
    try:
        yield name
    finally:
        _ip("netns", "del", name, check=False)


@dataclass
class Link:
    namespace: str
    host_if: str
    server_ip: str


@pytest.fixture
def link(netns: str) -> Iterator[Link]:
    """A veth pair: 10.231.N.1 here, 10.231.N.2 inside the namespace (a second host)."""
    subnet = os.getpid() % 250 + 1
    host_if, ns_if = f"pph{os.getpid() % 100000}", f"ppn{os.getpid() % 100000}"
    made = _ip(
        "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", netns, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"veth pair not permitted: {made.stderr.strip()}")
    try:
        _ip("addr", "add", f"10.231.{subnet}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", netns, "ip", "addr", "add", f"10.231.{subnet}.2/30", "dev", ns_if)
        _ip("netns", "exec", netns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield Link(netns, host_if, f"10.231.{subnet}.2")
    finally:
        _ip("link", "del", host_if, check=False)


def _start_server_in(namespace: str, host: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            sys.executable,
            "-m",
            "tests.support.ollama_server",
            "--host",
            host,
            "--port",
            "11434",
            "--pieces",
            "400",
            "--interval",
            "0.02",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        pytest.fail(
            f"server in netns did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc


async def test_two_hosts_cable_cut_mid_stream_is_a_stall(link: Link) -> None:
    proc = _start_server_in(link.namespace, link.server_ip)
    try:
        client = backend(f"http://{link.server_ip}:11434", token_s=TOKEN_S)
        pieces: list[str] = []
        cut_at: float | None = None

        async def listen() -> None:
            nonlocal cut_at
            async for piece in client.stream(HELLO, ChatOptions(num_predict=400)):
                pieces.append(piece)
                if len(pieces) == 5:  # someone trips over the cable
                    cut = await asyncio.create_subprocess_exec(
                        "ip", "link", "set", link.host_if, "down"
                    )
                    await cut.wait()
                    cut_at = time.perf_counter()

        with pytest.raises(LlmError) as failure:
            await listen()
        failed_after = time.perf_counter() - (cut_at or 0.0)
        await client.aclose()
    finally:
        proc.kill()
        proc.wait(timeout=10)

    assert failure.value.cause == "stall_mid_stream"
    assert cut_at is not None
    assert len(pieces) < 400
    assert failed_after < TOKEN_S + SLACK_S


def test_unknown_host_with_no_network(netns: str) -> None:
    """Name lookup inside an empty namespace: no packet leaves this machine."""
    code = (
        "import asyncio\n"
        "from payphone.llm.ollama_backend import OllamaBackend\n"
        "from payphone.llm.base import ChatOptions, LlmError\n"
        "async def main():\n"
        "    b = OllamaBackend('http://payphone-pi2.invalid:11434', 'm', connect_timeout_s=2)\n"
        "    try:\n"
        "        async for _ in b.stream([{'role': 'user', 'content': 'hi'}], ChatOptions()):\n"
        "            pass\n"
        "    except LlmError as exc:\n"
        "        print('CAUSE', exc.cause)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert "CAUSE unknown_host" in done.stdout, done.stderr[-2000:]


@pytest.mark.models
async def test_a_model_host_that_never_answers_does_not_hold_the_phone_start() -> None:
    """Pi #2 accepts the connection but its /api/chat hangs: the phone's own models load, the
    phone is ready, and callers get the busy line while the warm-up goes on in the background."""
    from payphone.personas.loader import load_personas
    from payphone.stages import load_stages

    async with OllamaProtocolServer(fault=Fault("hang")) as srv:
        settings = Settings.model_validate(
            {"llm": {"backend": "ollama", "ollama_host": srv.url, "ollama_model": MODEL}}
        )
        operator = load_personas().operator
        started = time.monotonic()
        stages = await load_stages(settings, operator, [operator])
        loaded_s = time.monotonic() - started
        try:
            assert stages.llm_status.state is BreakerState.STARTING
            assert loaded_s < 60  # Whisper and Piper only, not Ollama's 120 s warm-up limit
            with pytest.raises(LlmError, match="circuit_open"):
                await anext(stages.backend.stream([], ChatOptions()))
            async with asyncio.timeout(5):
                while not srv.chats:  # the warm-up is under way in the background
                    await asyncio.sleep(0.02)
        finally:
            await stages.aclose()
