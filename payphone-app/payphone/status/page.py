"""One phone's status page: the board, its metrics, the health checks and the web server.

The service and the simulator build one, hand `page.on_call` / `page.on_state` to
`build_phone`, and run the rest with `async with page.serving():`. A tick a second sweeps the
board for new turns and re-evaluates health; a change of the health line is logged and handed to
`on_health` (the service tells systemd). Nothing here may take the phone down: a check that
raises reads as that part unhealthy, and an address that cannot be bound is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from payphone.call.events import CallState
from payphone.call.session import Call
from payphone.config import LlmSettings, Settings, StatusSettings
from payphone.llm.breaker import BreakerState, BreakerStatus
from payphone.llm.failover import host_states
from payphone.log import get_logger
from payphone.status.board import StatusBoard
from payphone.status.health import Check, CheckSource, Health, LlmWatch, fixed
from payphone.status.metrics import PhoneMetrics
from payphone.status.web import StatusServer

if TYPE_CHECKING:
    from payphone.stages import Stages

log = get_logger("status")

TICK_S = 1.0


def app_version() -> str:
    try:
        return metadata.version("payphone-ai")
    except metadata.PackageNotFoundError:
        return "unknown"


def models_words(settings: Settings) -> str:
    turn = settings.turn.model or "the silence rule"
    return f"Whisper {settings.stt.model}, Piper {settings.tts.voice}, end of turn: {turn}"


def devices_words(settings: Settings) -> str:
    audio = settings.audio
    mic = audio.input_device if audio.input_device is not None else "default"
    ear = audio.output_device if audio.output_device is not None else "default"
    return f"mic {mic}, earpiece {ear}, {audio.device_rate} Hz"


def gpio_words(settings: Settings, pins: str) -> str:
    return f"hook switch on BCM {settings.hook.pin}, keypad {settings.keypad.source} ({pins})"


def llm_watch(
    llm: LlmSettings,
    breaker: Callable[[], BreakerStatus],
    model: str,
    gguf: Path | None = None,
    hosts: Callable[[], dict[str, BreakerState]] = dict,
) -> LlmWatch:
    """The model check for `llm.backend`; `model`: the resolved GGUF's name for embedded,
    `gguf`: that file (hashed once for its digest); `hosts`: each Ollama host's breaker."""
    if llm.backend == "ollama" and len(llm.hosts) > 1:
        # probing the first host alone would call the phone down while the next serves its
        # calls: the failover's breakers judge the hosts (up while any is up)
        several = tuple(h.rstrip("/") for h in llm.hosts)
        watch = LlmWatch(breaker, backend="ollama", model=llm.ollama_model, failover=several)
    elif llm.backend == "ollama":
        watch = LlmWatch(
            breaker, backend="ollama", model=llm.ollama_model, host=str(llm.ollama_host)
        )
    else:
        watch = LlmWatch(breaker, backend="embedded", model=model, gguf=gguf)
    watch.host_states = hosts
    return watch


class StatusPage:
    """See the module doc. `checks`: audio, gpio and models by name; the LLM watch comes last."""

    def __init__(
        self,
        settings: StatusSettings,
        *,
        checks: Mapping[str, CheckSource],
        llm: LlmWatch,
        phone: dict[str, str],
        on_health: Callable[[Health], object] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = PhoneMetrics()
        self.board = StatusBoard(
            settings.keep_calls,
            show_transcripts=settings.transcripts != "off",
            metrics=self.metrics,
        )
        self.llm = llm
        self.checks: list[tuple[str, CheckSource]] = [
            *checks.items(),
            ("llm", llm),
        ]
        self.phone = {"version": app_version(), **phone}
        self.on_health = on_health
        self.server: StatusServer | None = None
        self._described: dict[str, Any] = {}
        self._json: tuple[int, str] = (-1, "")
        self.health = self.evaluate()
        self.board.set_health(self.health)
        self._export()

    # -- the call loop's callbacks ----------------------------------------------------------------

    def on_call(self, call: Call) -> None:
        self._safely(self.board.on_call, call)

    def on_state(self, state: CallState) -> None:
        self._safely(self.board.on_state, state)

    @staticmethod
    def _safely(callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception as exc:  # the status page never breaks a call
            log.exception("status_board_failed", error=repr(exc))

    # -- health -----------------------------------------------------------------------------------

    def evaluate(self) -> Health:
        results: list[Check] = []
        for name, check in self.checks:
            try:
                results.append(check())
            except Exception as exc:
                results.append(Check(name, False, f"{name} check failed ({exc!r})"))
        return Health(tuple(results))

    def tick(self) -> None:
        """Sweep for new turns, re-evaluate health, and tell whoever listens when it changed."""
        self.board.sweep()
        health, before = self.evaluate(), self.health
        self.health = health
        self.board.set_health(health)
        described = self._llm_described()
        if described != self._described:
            self._described = described
            self.board.touch()
        self._export()
        if health.line != before.line:
            log.info("health_changed", healthy=health.ok, health=health.line)
            if self.on_health is not None:
                self.on_health(health)

    def _llm_described(self) -> dict[str, Any]:
        try:
            return self.llm.describe()
        except Exception as exc:
            return {"backend": self.llm.backend, "model": self.llm.model, "words": repr(exc)}

    def _export(self) -> None:
        m = self.metrics
        for check in self.health.checks:
            m.healthy.labels(check.name).set(1 if check.ok else 0)
        m.healthy.labels("all").set(1 if self.health.ok else 0)
        with contextlib.suppress(Exception):
            m.breaker.state(str(self.llm.breaker().state))
            for host, state in self.llm.host_states().items():
                m.host_breaker.labels(host).state(str(state))
        described = self._described or self._llm_described()
        m.info.info(
            {
                "version": self.phone["version"],
                "backend": str(described.get("backend", "")),
                "model": str(described.get("model", "")),
                "digest": str(described.get("digest") or ""),
                "model_version": str(described.get("version") or ""),
            }
        )

    # -- what the page reads ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.board.snapshot(),
            "phone": self.phone,
            "llm": self._described or self._llm_described(),
        }

    def snapshot_json(self) -> str:
        """The snapshot as JSON, made once per board version however many pages are open."""
        version, text = self._json
        if version != self.board.version or not text:
            text = json.dumps(self.snapshot(), separators=(",", ":"))
            self._json = (self.board.version, text)
        return text

    def now_json(self) -> str:
        """Only what the phone is doing now: the update for a plain state change."""
        return json.dumps({"now": self.board.now()}, separators=(",", ":"))

    # -- running ----------------------------------------------------------------------------------

    async def _ticking(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception as exc:
                log.exception("status_tick_failed", error=repr(exc))

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[StatusPage]:
        """Health ticks, the Ollama watch and (with addresses to listen on) the web server."""
        tasks = [
            asyncio.create_task(self._ticking(), name="status-tick"),
            asyncio.create_task(self.llm.run(), name="status-llm-watch"),
        ]
        if self.settings.listen:
            self.server = StatusServer(self, list(self.settings.listen), self.settings.token)
            await self.server.start()
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.server is not None:
                await self.server.stop()
                self.server = None


@contextlib.asynccontextmanager
async def simulator_status(
    settings: Settings, stages: Stages, *, serve: bool, say: Callable[[str], object] = print
) -> AsyncIterator[StatusPage | None]:
    """`simulate --status ADDRESS`: the page over a simulated phone (mock pins, memory audio)."""
    if not serve:
        yield None
        return
    gguf = Path(settings.llm.gguf).name if settings.llm.backend == "embedded" else ""
    page = StatusPage(
        settings.status,
        checks={
            "audio": fixed("audio", "simulated (memory audio)"),
            "gpio": fixed("gpio", "simulated (gpiozero MockFactory pins)"),
            "models": fixed("models", models_words(settings) + ": loaded"),
        },
        llm=llm_watch(
            settings.llm,
            lambda: stages.backend.status,
            gguf,
            hosts=lambda: host_states(stages.backend),
        ),
        phone={"devices": "simulated"},
    )
    async with page.serving():
        for address in page.server.bound if page.server is not None else []:
            say(f"status page: http://{address}/")
        yield page
