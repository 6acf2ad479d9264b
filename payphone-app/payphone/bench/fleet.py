"""`payphone bench fleet --phones 1,2,4`: several phones sharing two model hosts, one killed
midway; first-token times and fallbacks as the number of phones grows.

Text-level turns: each simulated phone takes its turns through the same LLM path a real phone's
turn takes (`build_backend` from the settings with `llm.ollama_hosts` = two hosts: a breaker per
host and failover between them, the real `ollama` client, Ollama's HTTP protocol), with its own
`phone_id` in its requests and log events. Whisper, Piper and the audio are left out: N whole
phones do not fit a 2-core machine, and they add the same time with or without a second host.

The hosts are two protocol servers from `tests/support` (a source checkout is needed) at a
Pi-5-like pace: the first piece after PROMPT_S (prompt evaluation), then one every PIECE_S, each
with OLLAMA_NUM_PARALLEL = PARALLEL slots. Phones list the hosts in turn order (phone 1 prefers
host 1, phone 2 host 2, ...), as an operator spreads the load. KILL_AT_S into each run, host 1
is stopped: open streams are cut and new connections refused, as when a Pi #2 loses power.

A turn's outcome: a reply; a fallback (the turn's `LlmError`: the busy line when it came before
the first token, the stall line after it, both in the persona's voice); or a hang (no outcome
within a generous watchdog). Hangs must be 0. Figures, never pass/fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from payphone.bench.caller_lines import LINES
from payphone.bench.hangup import percentile
from payphone.config import LlmSettings, Settings
from payphone.llm.base import ChatOptions, LlmError, Message
from payphone.llm.factory import build_backend, chat_options
from payphone.llm.failover import Failover
from payphone.log import bind_call, setup_logging
from payphone.personas.loader import load_personas

MODEL = "payphone-persona"
PHONES = (1, 2, 4)
TURNS = 6  # per phone
PROMPT_S = 0.35  # prompt evaluation before the first piece (a warm prefix on a Pi 5)
PIECE_S = 0.08  # ~12 pieces a second
PIECES = 16  # a short spoken reply
PARALLEL = 2  # OLLAMA_NUM_PARALLEL on each host
CALLER_S = (0.5, 1.2)  # the caller speaking (and Whisper) between turns
KILL_AT_S = 5.0


@dataclass
class Turn:
    phone: str
    started: float
    first_token_ms: float | None = None
    cause: str | None = None  # the fallback's cause; None: a reply
    spoken: bool = False  # some of the reply was heard before the fallback
    hang: bool = False


@dataclass
class Run:
    phones: int
    turns: list[Turn] = field(default_factory=list)
    killed_at: float = 0.0
    host_failures: int = 0

    def figures(self) -> dict[str, Any]:
        ttft = [t.first_token_ms for t in self.turns if t.first_token_ms is not None]
        after = [
            t.first_token_ms
            for t in self.turns
            if t.first_token_ms is not None and t.started >= self.killed_at
        ]
        causes = Counter(t.cause for t in self.turns if t.cause is not None)
        return {
            "phones": self.phones,
            "turns": len(self.turns),
            "replies": sum(1 for t in self.turns if t.cause is None and not t.hang),
            "first_token_ms_p50": percentile(ttft, 50) if ttft else None,
            "first_token_ms_p95": percentile(ttft, 95) if ttft else None,
            "first_token_ms_p95_after_kill": percentile(after, 95) if after else None,
            "fallbacks": sum(causes.values()),
            "fallback_causes": dict(causes),
            "busy_lines": sum(1 for t in self.turns if t.cause and not t.spoken),
            "stall_lines": sum(1 for t in self.turns if t.cause and t.spoken),
            "hangs": sum(1 for t in self.turns if t.hang),
            "host_failures": self.host_failures,
        }


@contextlib.contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    """Log events at info as JSON into a buffer, then the logging that was set up before."""
    before, handlers, level = structlog.get_config(), logging.root.handlers[:], logging.root.level
    logs = io.StringIO()
    setup_logging("info", "json", logs)
    try:
        yield logs
    finally:
        structlog.configure(**before)
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


def _llm_for(settings: Settings, hosts: list[str]) -> LlmSettings:
    """The phone's `[llm]` with these hosts (validated like any setting)."""
    data = settings.llm.model_dump(exclude={"ollama_host", "ollama_hosts"})
    return LlmSettings.model_validate(
        {**data, "backend": "ollama", "ollama_model": MODEL, "ollama_hosts": hosts}
    )


def _messages(system: str, line: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": line}]


async def _turn(
    backend: Failover, phone: str, messages: list[Message], options: ChatOptions, watchdog_s: float
) -> Turn:
    loop = asyncio.get_running_loop()
    turn = Turn(phone, loop.time())
    try:
        async with asyncio.timeout(watchdog_s):
            async for _piece in backend.stream(messages, options):
                if turn.first_token_ms is None:
                    turn.first_token_ms = round((loop.time() - turn.started) * 1000, 1)
                turn.spoken = True
    except LlmError as exc:
        turn.cause = exc.cause
    except TimeoutError:
        turn.hang = True
    return turn


async def _phone(
    index: int,
    settings: Settings,
    urls: list[str],
    system: str,
    run: Run,
    rng: random.Random,
    t0: float,
) -> None:
    phone_id = f"fleet-{index + 1}"
    hosts = urls[index % len(urls) :] + urls[: index % len(urls)]
    llm = _llm_for(settings, hosts)
    options = chat_options(llm)
    watchdog_s = llm.first_token_timeout_s + llm.token_timeout_s * (PIECES + 2) + 5.0
    with bind_call(phone_id=phone_id):
        backend = build_backend(llm, phone_id=phone_id)
        assert isinstance(backend, Failover)
        try:
            await backend.start(system)
            await asyncio.sleep(rng.uniform(0, 0.5))
            for n in range(TURNS):
                with bind_call(turn=n + 1):
                    turn = await _turn(
                        backend,
                        phone_id,
                        _messages(system, LINES[n % len(LINES)]),
                        options,
                        watchdog_s,
                    )
                turn.started -= t0
                run.turns.append(turn)
                await asyncio.sleep(rng.uniform(*CALLER_S))
            run.host_failures += backend.host_failures
        finally:
            await backend.aclose()


async def _one_run(settings: Settings, phones: int, system: str, seed: int) -> Run:
    from tests.support.ollama_server import OllamaProtocolServer, scripted_reply

    words = [f" word{i}" for i in range(PIECES)]
    reply = scripted_reply(words, PIECE_S, first_s=PROMPT_S)
    servers = [OllamaProtocolServer(reply=reply, parallel=PARALLEL) for _ in range(2)]
    for server in servers:
        await server.start()
    run = Run(phones)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def kill() -> None:
        await asyncio.sleep(KILL_AT_S)
        run.killed_at = loop.time() - t0
        await servers[0].stop()

    killer = asyncio.ensure_future(kill())
    try:
        await asyncio.gather(
            *(
                _phone(i, settings, [s.url for s in servers], system, run, rng, t0)
                for i in range(phones)
            )
        )
    finally:
        if not killer.done():  # the run ended before the kill: still counts as killed at the end
            killer.cancel()
            run.killed_at = loop.time() - t0
        await asyncio.gather(killer, return_exceptions=True)
        for server in servers:
            await server.stop()
    return run


def _row(fig: dict[str, Any]) -> str:
    causes = ", ".join(f"{k} {v}" for k, v in sorted(fig["fallback_causes"].items())) or "-"
    return (
        f"{fig['phones']:>6} {fig['turns']:>5} {fig['replies']:>7} "
        f"{fig['first_token_ms_p50']!s:>8} {fig['first_token_ms_p95']!s:>8} "
        f"{fig['first_token_ms_p95_after_kill']!s:>10} {fig['fallbacks']:>9} "
        f"{fig['hangs']:>5} {fig['host_failures']:>8}  {causes}"
    )


async def _run(settings: Settings, phone_counts: tuple[int, ...]) -> dict[str, Any]:
    book = load_personas(settings.personas.user_dir)
    persona = book.operator
    system = persona.prompt
    llm = settings.llm
    print(
        "text-level turns (the LLM path of each phone: breakers, failover, ollama client, "
        "Ollama's protocol; no Whisper, Piper or audio)"
    )
    print(
        f"2 hosts, each OLLAMA_NUM_PARALLEL={PARALLEL}, first piece after {PROMPT_S * 1000:.0f} ms "
        f"then one per {PIECE_S * 1000:.0f} ms, {PIECES} pieces; host 1 killed {KILL_AT_S:g} s "
        f"into each run; {TURNS} turns a phone; limits: connect {llm.connect_timeout_s:g} s, "
        f"first token {llm.first_token_timeout_s:g} s, between tokens {llm.token_timeout_s:g} s"
    )
    print(
        f"a fallback is heard as SIT tones and the persona's busy line ({persona.busy_line!r}), "
        f"or, after part of a reply, its stall line ({persona.stall_line!r})"
    )
    print(
        f"{'phones':>6} {'turns':>5} {'replies':>7} {'ttft p50':>8} {'ttft p95':>8} "
        f"{'p95 killed':>10} {'fallbacks':>9} {'hangs':>5} {'host err':>8}  causes"
    )
    results = []
    for seed, phones in enumerate(phone_counts):
        started = time.perf_counter()
        with _captured_logs() as logs:  # each phone's events, to check they name the phone
            run = await _one_run(settings, phones, system, seed)
        events = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
        fig = run.figures()
        fig["seconds"] = round(time.perf_counter() - started, 1)
        fig["killed_at_s"] = round(run.killed_at, 1)
        fig["log_events"] = len(events)
        fig["log_events_without_phone_id"] = sum(1 for e in events if not e.get("phone_id"))
        fig["log_phone_ids"] = sorted({str(e["phone_id"]) for e in events if e.get("phone_id")})
        print(_row(fig), flush=True)
        results.append(fig)
    print(
        "ttft: request to first piece (ms), over the turns that got one; p95 killed: turns "
        "started after the kill; host err: attempts a host failed (the turn went on to the next)"
    )
    hangs = sum(r["hangs"] for r in results)
    unnamed = sum(r["log_events_without_phone_id"] for r in results)
    print(f"hangs: {hangs}; log events without a phone_id: {unnamed}")
    return {
        "mode": "text-level turns",
        "hosts": 2,
        "parallel": PARALLEL,
        "turns_per_phone": TURNS,
        "kill_at_s": KILL_AT_S,
        "runs": results,
    }


def main(settings: Settings, phones: tuple[int, ...] = PHONES) -> dict[str, Any]:
    """Run `bench fleet` for each phone count; prints a table, returns the figures."""
    try:
        import tests.support.ollama_server  # noqa: F401
    except ImportError:
        print("fleet skipped: tests/support (the protocol server) needs a source checkout")
        return {"mode": "skipped"}
    return asyncio.run(_run(settings, tuple(phones)))
