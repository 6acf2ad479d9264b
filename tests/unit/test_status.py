"""The status page's data: a scripted call through the rig (stand-in stages, real loop, mock pins)
fills the board and the metrics; /healthz follows the sound card and Pi #2; transcripts stay out
of the journal; bad [status] settings exit 2 naming the setting."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState
from payphone.call.options import CallOptions
from payphone.config import StatusSettings, load_settings
from payphone.llm.breaker import BreakerState, BreakerStatus
from payphone.settings_errors import SettingsError
from payphone.sim.rig import Rig, build_rig
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
)
from payphone.status import health as health_module
from payphone.status.health import LlmWatch, SoundCardWatch, fixed
from payphone.status.page import StatusPage
from payphone.systemd_notify import Notifier
from tests.support.ollama_server import OllamaProtocolServer, free_port
from tests.unit.test_call_loop import FAST, running, speak, switch_off

PATIENT = FAST.model_copy(update={"idle_prompt_s": 30})
UP = BreakerStatus(BreakerState.CLOSED, 0, None, "", None, 0)


def breaker_up() -> BreakerStatus:
    return UP


def status_settings(**changes: Any) -> StatusSettings:
    return StatusSettings.model_validate({"listen": [], **changes})


def make_page(settings: StatusSettings | None = None, **kwargs: Any) -> StatusPage:
    """A page over simulated parts (what `simulate --status` builds)."""
    checks = kwargs.pop(
        "checks",
        {
            "audio": fixed("audio", "memory audio"),
            "gpio": fixed("gpio", "mock pins"),
            "models": fixed("models", "stand-in speech stages"),
        },
    )
    llm = kwargs.pop("llm", LlmWatch(breaker_up, backend="embedded", model="stand-in"))
    return StatusPage(settings or status_settings(), checks=checks, llm=llm, phone={}, **kwargs)


def rig_for(
    page: StatusPage,
    texts: list[str],
    backend: ScriptedBackend | None = None,
    *,
    sink_speed: float = 4.0,
    on_state: Callable[[CallState], None] | None = None,
) -> Rig:
    """The rig with stand-in stages, its calls observed by `page` (or by `on_state`)."""
    stages = PhoneStages(
        ScriptedTranscriber(deque(texts)),
        backend or ScriptedBackend(reply="Hello there. Nice evening."),
        ToneSynthesizer(),
        EnergyEndpointer,
    )
    return build_rig(
        stages,
        CallOptions(PATIENT),
        sink_speed=sink_speed,
        on_call=page.on_call,
        on_state=on_state or page.on_state,
    )


async def answered(rig: Rig) -> None:
    """The caller speaks; the persona answers and listens again."""
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING)


def metric(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in /metrics")


async def test_a_scripted_call_fills_the_board_and_the_metrics() -> None:
    page = make_page()
    backend = ScriptedBackend(reply="Hello there. Nice evening.")
    rig = rig_for(page, ["good evening", "are you there", "tell me a story"], backend)
    assert page.board.now()["state"] == "idle"
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    assert page.board.now()["state"] == "listening"
    assert page.board.now()["persona"] == "The Operator"
    await answered(rig)
    backend.fail_cause = "connection_refused"  # Pi #2 refuses: the busy line
    await speak(rig)
    await rig.wait_state(CallState.THINKING)
    await rig.wait_state(CallState.LISTENING, timeout=8)
    backend.fail_cause, backend.token_delay_s = None, 0.2  # a slow reply, cut off by '#'
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    rig.keypad.press("#")
    await rig.wait_state(CallState.LISTENING)
    rig.replace()
    async with asyncio.timeout(3):
        while page.board.now()["state"] != "idle":
            await asyncio.sleep(0.01)
    await switch_off(rig, task)
    page.tick()

    snap = json.loads(page.snapshot_json())
    [call] = snap["calls"]
    assert call["ended"] is not None and call["personas"] == ["The Operator"]
    first, busy, cut = call["turns"]
    assert first["heard"] == "good evening" and first["reply"] == "Hello there. Nice evening."
    assert first["voice_to_voice_ms"] > 0 and first["first_audio_ms"] > 0
    assert first["first_token_ms"] is not None and first["fallback"] is None
    assert busy["fallback"] == "connection_refused"
    assert cut["interrupted"] and cut["heard"] == "tell me a story"
    assert snap["totals"] == {"calls": 1, "turns": 3, "interruptions": 1, "fallbacks": 1}
    assert snap["fallbacks"] == {"connection_refused": 1}
    assert len(snap["chart"]["t"]) == 2  # the two turns that were heard (not the busy line)
    assert snap["chart"]["v2v_p50"][0] == first["voice_to_voice_ms"]

    text = page.metrics.render().decode()
    assert metric(text, "payphone_calls_total") == 1
    assert metric(text, 'payphone_turns_total{persona="operator"}') == 3
    assert metric(text, 'payphone_fallbacks_total{cause="connection_refused"}') == 1
    assert metric(text, "payphone_interruptions_total") == 1
    assert metric(text, "payphone_voice_to_voice_seconds_count") == 2
    assert metric(text, "payphone_first_audio_seconds_count") == 2
    assert metric(text, "payphone_model_first_token_seconds_count") == 2
    assert metric(text, 'payphone_llm_breaker{payphone_llm_breaker="closed"}') == 1
    assert metric(text, 'payphone_phone_state{payphone_phone_state="idle"}') == 1
    assert metric(text, "payphone_audio_underruns") == 0
    assert metric(text, "process_resident_memory_bytes") > 10_000_000


async def test_transcripts_off_are_never_copied_and_the_journal_gets_none_by_default() -> None:
    from payphone.log import setup_logging

    stream = io.StringIO()
    setup_logging("info", "json", stream)
    page = make_page(status_settings(transcripts="off"))
    rig = rig_for(page, ["my name is Ada Lovelace"])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    await answered(rig)
    rig.replace()
    await asyncio.sleep(0.1)
    await switch_off(rig, task)
    setup_logging()
    page.tick()
    [turn] = page.board.snapshot()["calls"][0]["turns"]
    assert "heard" not in turn and "reply" not in turn
    assert "Lovelace" not in page.snapshot_json()
    done = [json.loads(line) for line in stream.getvalue().splitlines() if "turn_done" in line]
    assert done and "Lovelace" not in stream.getvalue()
    assert done[0]["heard_words"] == 5 and "heard" not in done[0]


def test_transcripts_reach_the_journal_only_when_the_setting_says_so() -> None:
    journal = load_settings(overrides={"status": {"transcripts": "journal"}})
    assert CallOptions.from_settings(journal).log_transcripts
    assert not CallOptions.from_settings(load_settings()).log_transcripts


def test_the_board_keeps_only_the_last_calls() -> None:
    page = make_page(status_settings(keep_calls=2))

    class FakeCall:
        def __init__(self, n: int) -> None:
            from payphone.call.session import CallLog
            from payphone.personas.loader import load_personas

            self.call_id = f"call-{n}"
            self.personas = load_personas()
            self.persona = self.personas.operator
            self.log = CallLog(self.call_id)

    for n in range(3):
        page.on_call(FakeCall(n))  # type: ignore[arg-type]
        page.on_state(CallState.ENDED)
    assert [c["call_id"] for c in page.board.snapshot()["calls"]] == ["call-2", "call-1"]
    assert page.board.snapshot()["totals"]["calls"] == 3


class Counter:
    """A capture thread's frame counter that the test starts and stops."""

    def __init__(self) -> None:
        self.frames = 0
        self.running = True

    async def run(self) -> None:
        while True:
            if self.running:
                self.frames += 1
            await asyncio.sleep(0.03)


async def healthz(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url + "/healthz") as response:
        return response.status, await response.text()


async def until(
    session: aiohttp.ClientSession, url: str, status: int, limit_s: float
) -> tuple[float, str]:
    started = time.monotonic()
    while True:
        code, body = await healthz(session, url)
        if code == status:
            return time.monotonic() - started, body
        assert time.monotonic() - started < limit_s, f"/healthz still {code}: {body}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_healthz_follows_the_sound_card_and_pi2_within_5_s(
    http: aiohttp.ClientSession,
) -> None:
    mic = Counter()
    earpiece_ok = [True]
    pumping = asyncio.create_task(mic.run())
    ollama = await OllamaProtocolServer(models=["payphone-persona"]).start()
    port = free_port()
    llm = LlmWatch(breaker_up, backend="ollama", model="payphone-persona", host=ollama.url)
    seen: list[str] = []
    page = make_page(
        status_settings(listen=[f"127.0.0.1:{port}"]),
        checks={
            "audio": SoundCardWatch(lambda: mic.frames, lambda: earpiece_ok[0], "test card"),
            "gpio": fixed("gpio", "mock pins"),
        },
        llm=llm,
        on_health=lambda health: seen.append(health.line),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with page.serving():
            await until(http, url, 200, 5)
            mic.running = False  # the USB sound card is pulled
            _, body = await until(http, url, 503, 5)
            assert "no sound from the microphone" in body and "test card" in body
            mic.running = True
            await until(http, url, 200, 5)
            earpiece_ok[0] = False
            _, body = await until(http, url, 503, 5)
            assert "earpiece" in body
            earpiece_ok[0] = True
            await until(http, url, 200, 5)
            assert llm.digest  # read from Pi #2's model list
            ollama_port = ollama.port
            await ollama.stop()  # Pi #2 goes down
            _, body = await until(http, url, 503, 5)
            assert "payphone-persona not answering" in body
            ollama = OllamaProtocolServer(models=["payphone-persona"], port=ollama_port)
            await ollama.start()  # and comes back
            await until(http, url, 200, 5)
    finally:
        pumping.cancel()
        await ollama.stop()
    assert any(line.startswith("UNHEALTHY: ") for line in seen)
    assert seen[-1].startswith("healthy: ")


async def test_the_llm_check_speaks_plain_words() -> None:
    down = BreakerStatus(BreakerState.OPEN, 3, "connection_refused", "refused", 12.0, 2)
    starting = BreakerStatus(BreakerState.STARTING, 0, None, "", None, 0)
    assert LlmWatch(breaker_up, backend="embedded", model="m")().detail == "model m up"
    check = LlmWatch(lambda: down, backend="embedded", model="m")()
    assert not check.ok and "down (connection_refused)" in check.detail
    assert "closed" not in check.detail
    assert "starting" in LlmWatch(lambda: starting, backend="embedded", model="m")().detail


def test_a_failing_check_reads_as_unhealthy_never_as_a_crash() -> None:
    def broken() -> Any:
        raise RuntimeError("sensor gone")

    page = make_page(checks={"audio": broken})
    assert not page.health.ok and "audio check failed" in page.health.line


async def test_the_token_guards_the_data_but_not_the_page_shell(
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    token = "0123456789abcdef"
    page = make_page(status_settings(listen=[f"127.0.0.1:{port}"], token=token))
    url = f"http://127.0.0.1:{port}"
    async with page.serving():
        for path in ("/api/status", "/metrics", "/healthz"):
            async with http.get(url + path) as response:
                assert response.status == 401
            async with http.get(url + path, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        async with http.get(url + "/api/status?token=" + token) as response:
            assert (await response.json())["now"]["state"] == "idle"
        async with http.get(url + "/api/status?token=wrong-token-000000") as response:
            assert response.status == 401
        async with http.get(url + "/") as response:
            assert response.status == 200 and "Payphone" in await response.text()
        async with http.get(url + "/static/uPlot.iife.min.js") as response:
            assert response.status == 200 and len(await response.read()) > 40_000


async def test_events_stream_a_snapshot_then_each_change(http: aiohttp.ClientSession) -> None:
    port = free_port()
    page = make_page(status_settings(listen=[f"127.0.0.1:{port}"]))
    url = f"http://127.0.0.1:{port}/events"
    async with page.serving(), http.get(url) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")

        async def next_update() -> dict[str, Any]:
            while True:
                line = (await response.content.readline()).decode()
                if line.startswith("data: "):
                    return dict(json.loads(line[6:]))

        first = await asyncio.wait_for(next_update(), 2)
        assert first["now"]["state"] == "idle" and first["health"]["ok"]
        started = time.monotonic()
        page.on_state(CallState.THINKING)
        update = await asyncio.wait_for(next_update(), 1)
        assert time.monotonic() - started < 0.5
        assert update == {"now": page.board.now()}  # a state change sends only the state
        assert update["now"]["state"] == "thinking"
        page.board.touch()  # anything else: the whole snapshot again
        assert "calls" in await asyncio.wait_for(next_update(), 1)


async def test_a_taken_port_leaves_the_phone_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        page = make_page(status_settings(listen=[f"127.0.0.1:{port}"]))
        async with page.serving():
            assert page.server is not None and page.server.bound == []


def test_the_link_address_can_be_bound_before_the_link_is_up() -> None:
    from payphone.status.web import listening_sockets

    [sock] = listening_sockets("10.254.253.252", free_port())  # on no interface of this machine
    try:
        assert sock.getsockname()[0] == "10.254.253.252"
    finally:
        sock.close()


def test_the_health_line_reaches_systemd_once_per_change(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.settimeout(1)
        notifier = Notifier(str(path))
        assert notifier.ready("healthy: all good")
        assert not notifier.status("healthy: all good")  # unchanged: nothing sent
        assert notifier.status("UNHEALTHY: no sound from the microphone for 3 s")
        got = [systemd.recv(4096).decode(), systemd.recv(4096).decode()]
    assert got == [
        "READY=1\nSTATUS=healthy: all good",
        "STATUS=UNHEALTHY: no sound from the microphone for 3 s",
    ]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("listen", "pi.local:8080", "not an IP address"),
        ("listen", "127.0.0.1:70000", "port from 1 to 65535"),
        ("listen", "0.0.0.0:8080", "set [status] token too"),
        ("token", "short", "16 or more"),
        ("tokn", "x", "unknown setting; allowed here: token, listen"),
    ],
)
def test_a_bad_status_setting_names_the_setting(
    tmp_path: Path, field: str, value: str, says: str
) -> None:
    toml = tmp_path / "payphone.toml"
    toml.write_text(f'[status]\n{field} = "{value}"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(toml)
    [problem] = caught.value.problems
    assert problem.startswith(f"[status] {field} (in {toml})") and says in problem


def test_simulate_status_with_a_bad_address_exits_2_naming_the_setting(tmp_path: Path) -> None:
    from payphone.cli import app

    script = tmp_path / "call.yaml"
    script.write_text("- offhook\n- onhook\n")
    result = CliRunner().invoke(app, ["simulate", str(script), "--status", "localhost:99999"])
    assert result.exit_code == 2
    assert "status.listen" in result.output and "port from 1 to 65535" in result.output


async def test_simulate_serves_the_page_during_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    from rich.console import Console

    from payphone.config import Settings
    from payphone.sim import simulate
    from tests.unit.test_wiring import scripted_load

    port = free_port()
    settings = Settings.model_validate(
        {
            "call": {"dial_tone_s": 0.2, "default_persona_key": "2"},
            "status": {"listen": [f"127.0.0.1:{port}"]},
        }
    )
    monkeypatch.setattr(simulate, "load_stages", scripted_load)
    script = tmp_path / "call.yaml"
    script.write_text("- offhook\n- wait: 1.5\n- onhook\n")
    console = Console(file=io.StringIO())
    states: set[str] = set()

    async def watch() -> None:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/api/status") as response:
                    states.add((await response.json())["now"]["state"])
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        await simulate.simulate(settings, script, tmp_path / "out", True, console, status=True)
    finally:
        watcher.cancel()
    assert {"dial_tone", "listening"} & states
    assert f"status page: http://127.0.0.1:{port}/" in console.file.getvalue()  # type: ignore[attr-defined]


def test_mic_silence_limit_fits_the_5_s_target() -> None:
    worst = health_module.MIC_SILENT_S + 1.0  # plus one tick
    pi2 = health_module.OLLAMA_EVERY_S + health_module.OLLAMA_TIMEOUT_S + 1.0
    assert worst < 5 and pi2 < 5
