"""Several phones, several model hosts: the real `ollama` client against servers speaking
Ollama's protocol.

A turn whose first host is down is answered by the second within the same turn; when the first
comes back its breaker closes and turns go to it again; a hang-up during a failover closes the
request in flight; every request names the phone in a header, every log event and /metrics
carry it; `bench fleet` with a host killed midway leaves no turn unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from pathlib import Path

import pytest
import typer

from payphone.bench import fleet
from payphone.cli import phones_or_exit
from payphone.config import LlmSettings, Settings, StatusSettings
from payphone.llm.base import ChatOptions, LlmError, Message
from payphone.llm.breaker import BreakerState, CircuitBreaker
from payphone.llm.factory import build_backend
from payphone.llm.failover import Failover, host_states
from payphone.llm.ollama_backend import PHONE_HEADER
from payphone.log import set_phone_id, setup_logging
from payphone.status.metrics import PhoneMetrics
from payphone.status.page import StatusPage, llm_watch
from tests.helpers import run_module
from tests.support.ollama_server import Fault, OllamaProtocolServer, free_port, scripted_reply

MODEL = "payphone-persona"
HELLO: list[Message] = [
    {"role": "system", "content": "You are Mabel, the operator."},
    {"role": "user", "content": "Hello?"},
]
OPTIONS = ChatOptions(num_predict=32)
FIRST_S = 2.0


def failover(urls: list[str], phone_id: str = "bar-left") -> Failover:
    """What the factory builds for `llm.ollama_hosts`, with short limits and quick probes."""
    llm = LlmSettings(
        backend="ollama",
        ollama_hosts=urls,
        ollama_model=MODEL,
        connect_timeout_s=0.5,
        first_token_timeout_s=FIRST_S,
        token_timeout_s=0.5,
    )
    built = build_backend(llm, phone_id=phone_id)
    assert isinstance(built, Failover)
    for breaker in built.breakers:
        breaker.probe_interval_s = breaker.probe_max_interval_s = 0.1
    return built


async def reply(backend: Failover | CircuitBreaker) -> str:
    return "".join([piece async for piece in backend.stream(HELLO, OPTIONS)])


async def test_a_turn_goes_on_to_the_second_host_when_the_first_is_down() -> None:
    down = f"http://127.0.0.1:{free_port()}"  # refused, like a Pi #2 that is off
    async with OllamaProtocolServer(reply=scripted_reply(["Number", " please."])) as second:
        fleet = failover([down, second.url])
        started = time.perf_counter()
        text = await reply(fleet)  # the first host has not been probed yet: tried, refused
        took = time.perf_counter() - started
        assert text == "Number please."
        assert took < FIRST_S  # within the same turn's deadline, not after it
        states = fleet.host_states()
        assert states[down] is not BreakerState.CLOSED  # marked down at its first failure
        assert fleet.state is BreakerState.CLOSED  # the phone as a whole is up
        assert fleet.serving == second.url
        assert [c.headers.get(PHONE_HEADER.lower()) for c in second.chats] == ["bar-left"]
        chats = len(second.chats)
        assert await reply(fleet) == "Number please."  # the next turn skips the down host
        assert len(second.chats) == chats + 1
        await fleet.aclose()


async def test_metrics_show_each_hosts_breaker() -> None:
    """The operator sees which Pi #2 is down while the phone, failing over, is still up."""
    down = f"http://127.0.0.1:{free_port()}"
    async with OllamaProtocolServer(reply=scripted_reply(["Number", " please."])) as second:
        fleet = failover([down, second.url])
        await reply(fleet)
        llm = LlmSettings(backend="ollama", ollama_hosts=[down, second.url], ollama_model=MODEL)
        watch = llm_watch(llm, lambda: fleet.status, "", hosts=lambda: host_states(fleet))
        page = StatusPage(StatusSettings(listen=[]), checks={}, llm=watch, phone={})
        page.tick()
        text = page.metrics.render().decode()
        await fleet.aclose()
    assert 'payphone_llm_breaker{payphone_llm_breaker="closed"} 1.0' in text
    assert (
        f'payphone_llm_host_breaker{{host="{second.url}",payphone_llm_host_breaker="closed"}} 1.0'
        in text
    )
    assert (
        f'payphone_llm_host_breaker{{host="{down}",payphone_llm_host_breaker="closed"}} 0.0' in text
    )


async def test_turns_go_back_to_the_first_host_when_it_recovers() -> None:
    port = free_port()
    first_url = f"http://127.0.0.1:{port}"
    async with OllamaProtocolServer(reply=scripted_reply(["From", " two."])) as second:
        fleet = failover([first_url, second.url])
        await fleet.warm_up("You are Mabel.")  # the first is refused: the second is primed
        assert fleet.host_states()[first_url] is not BreakerState.CLOSED
        assert await reply(fleet) == "From two."
        async with OllamaProtocolServer(port=port, reply=scripted_reply(["From", " one."])) as one:
            async with asyncio.timeout(10):  # half-open probe, then closed
                await fleet.breakers[0].wait_closed()
            assert one.chats[1].messages == [{"role": "system", "content": "You are Mabel."}]
            assert await reply(fleet) == "From one."
            assert fleet.serving == first_url
        await fleet.aclose()


async def test_a_stalled_first_host_uses_the_turn_budget_and_no_more() -> None:
    async with (
        OllamaProtocolServer(fault=Fault("stall_first")) as stalled,
        OllamaProtocolServer() as other,
    ):
        fleet = failover([stalled.url, other.url])
        started = time.perf_counter()
        with pytest.raises(LlmError) as failed:  # the caller hears the busy line
            await reply(fleet)
        assert failed.value.cause == "stall_first_token"
        assert FIRST_S - 0.1 < time.perf_counter() - started < FIRST_S + 1.5
        async with asyncio.timeout(3):
            await stalled.chats[0].done.wait()
        assert stalled.chats[0].client_closed  # the stalled request was given up, not left open
        assert fleet.host_states()[stalled.url] is not BreakerState.CLOSED
        assert await reply(fleet) == "Hello there, caller."  # the next turn: the other host
        await fleet.aclose()


async def test_hanging_up_during_a_failover_closes_the_request_in_flight() -> None:
    async with (
        OllamaProtocolServer(fault=Fault("stall_first")) as stalled,
        OllamaProtocolServer() as other,
    ):
        fleet = failover([stalled.url, other.url])
        turn = asyncio.ensure_future(reply(fleet))
        async with asyncio.timeout(5):
            while not stalled.chats:
                await asyncio.sleep(0.01)
        turn.cancel()  # the caller hangs up while the first host says nothing
        with contextlib.suppress(asyncio.CancelledError):
            await turn
        async with asyncio.timeout(3):
            await stalled.chats[0].done.wait()
        assert stalled.chats[0].client_closed
        assert other.chats == []  # nothing more was asked of anyone
        await fleet.aclose()


async def test_phone_id_rides_on_every_log_event_and_every_request() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    set_phone_id("bar-left")
    try:
        down = f"http://127.0.0.1:{free_port()}"
        async with OllamaProtocolServer() as server:
            fleet = failover([down, server.url], phone_id="bar-left")
            await reply(fleet)
            await fleet.aclose()
            assert {h.get(PHONE_HEADER.lower()) for h in server.headers} == {"bar-left"}
    finally:
        set_phone_id(None)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [e for e in events if e["event"] == "llm_host_failed"]
    assert failed and failed[0]["host"] == down and failed[0]["cause"] == "refused"
    assert {e.get("phone_id") for e in events} == {"bar-left"}


def test_an_empty_host_list_exits_2_naming_the_setting(tmp_path: Path) -> None:
    toml = tmp_path / "payphone.toml"
    toml.write_text('[llm]\nbackend = "ollama"\nollama_hosts = []\n', encoding="utf-8")
    result = run_module("payphone", "--config", str(toml), "config")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "[llm] ollama_hosts" in line
    assert "at least one Ollama server" in line
    assert "Traceback" not in result.stderr


def test_metrics_name_the_phone() -> None:
    text = PhoneMetrics("bar-left").render().decode()
    assert 'payphone_phone_info{phone_id="bar-left"} 1.0' in text


def test_bench_fleet_with_a_host_killed_midway_leaves_no_turn_unanswered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fleet, "TURNS", 3)
    monkeypatch.setattr(fleet, "KILL_AT_S", 1.5)
    monkeypatch.setattr(fleet, "CALLER_S", (0.2, 0.4))
    result = fleet.main(Settings(), phones=(2,))
    [run] = result["runs"]
    assert result["mode"] == "text-level turns"
    assert run["turns"] == 6
    assert run["hangs"] == 0
    assert run["replies"] + run["fallbacks"] == 6  # a reply or an in-character fallback each
    assert run["replies"] >= 3  # the second host kept answering after the kill
    assert run["log_events_without_phone_id"] == 0
    assert run["log_phone_ids"] == ["fleet-1", "fleet-2"]
    assert "hangs: 0" in capsys.readouterr().out


def test_bench_phones_must_be_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert phones_or_exit("fleet", "1, 2,4") == (1, 2, 4)
    for bench, phones in (("fleet", "2,0"), ("fleet", "two"), ("llm", "2")):
        with pytest.raises(typer.Exit) as bad:
            phones_or_exit(bench, phones)
        assert bad.value.exit_code == 2
        assert "--phones" in capsys.readouterr().err


async def test_the_status_page_calls_the_phone_up_while_any_host_serves() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    async with OllamaProtocolServer() as server:
        fleet = failover([down, server.url])
        llm = LlmSettings(backend="ollama", ollama_hosts=[down, server.url])
        watch = llm_watch(llm, lambda: fleet.status, "")
        await reply(fleet)  # the first host is found down, the second answers
        assert watch().ok
        assert down in watch.describe()["where"]
        await fleet.aclose()


def test_ollama_host_stays_the_one_host_shorthand(tmp_path: Path) -> None:
    assert LlmSettings(ollama_host="http://pi2:11434").hosts == ["http://pi2:11434/"]
    both = LlmSettings(ollama_hosts=["http://a:1", "http://b:1"])
    assert (both.hosts, str(both.ollama_host)) == (["http://a:1/", "http://b:1/"], "http://a:1/")
    toml = tmp_path / "payphone.toml"
    toml.write_text('[llm]\nollama_host = "http://c:1"\nollama_hosts = ["http://a:1"]\n')
    result = run_module("payphone", "--config", str(toml), "config")
    assert result.returncode == 2
    assert "[llm] ollama_hosts" in result.stderr and "not in this list" in result.stderr
