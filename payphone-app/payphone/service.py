"""`payphone run`: the service. Load everything, tell systemd, take calls until told to stop.

The watchdog is fed from the event loop itself, so a stuck loop stops the pings and systemd
restarts the service. SIGTERM ends a call in progress (after its goodbye, briefly) and exits 0;
SIGHUP reloads the persona files.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from payphone.call.assembly import PhoneHardware, build_phone
from payphone.call.crisis import prerender_help
from payphone.call.lines import LineBook
from payphone.call.options import CallOptions, first_persona
from payphone.config import KeypadSettings, Settings
from payphone.hardware.audio import PyAudioSink, PyAudioSource
from payphone.hardware.base import Keypad
from payphone.hardware.hook import GpioHookSwitch
from payphone.hardware.keypad import MatrixKeypad, Mt8870Keypad
from payphone.llm.failover import host_states
from payphone.log import get_logger, ms
from payphone.memory import freeze_after_start
from payphone.models import resolve_gguf
from payphone.personas.loader import PersonaBook, load_personas
from payphone.speech.dtmf_keypad import InbandKeypad
from payphone.stages import Stages, load_stages
from payphone.status.health import SoundCardWatch, fixed
from payphone.status.page import (
    StatusPage,
    devices_words,
    gpio_words,
    llm_watch,
    models_words,
)
from payphone.systemd_notify import Notifier, extending_start, watchdog_interval_s

log = get_logger("service")

MIC_RATE = 16000
GOODBYE_GRACE_S = 3.0


def build_keypads(settings: KeypadSettings, pin_factory: Any = None) -> list[Keypad]:
    """The keypad `keypad.source` names (in-band DTMF reads the mic and needs no pins)."""
    if settings.source == "matrix":
        return [
            MatrixKeypad(
                settings.row_pins,
                settings.column_pins,
                settings.layout,
                debounce_ms=settings.debounce_ms,
                scan_interval_ms=settings.scan_interval_ms,
                pin_factory=pin_factory,
            )
        ]
    if settings.source == "mt8870":
        pins, std = settings.mt8870_pins, settings.mt8870_std_pin
        return [Mt8870Keypad(pins, std, pin_factory=pin_factory)]
    if settings.source == "inband":
        return [InbandKeypad(MIC_RATE)]
    return []


def pin_factory_name() -> str:
    """gpiozero's pin factory in use (lgpio on a Pi 5, MockFactory in tests)."""
    from gpiozero import Device

    factory = Device.pin_factory
    return type(factory).__name__ if factory is not None else "no pin factory"


async def feed_watchdog(notifier: Notifier, interval_s: float) -> None:
    """Ping systemd from the loop: if the loop stalls, the pings stop and systemd restarts us."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)


class Service:
    """Owns the phone and the process-level concerns: signals, systemd, reloads."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.book: PersonaBook = load_personas(settings.personas.user_dir)
        self.stop = asyncio.Event()

    def reload_personas(self) -> None:
        """SIGHUP: re-read persona files; a broken file keeps its previous version out."""
        fresh = load_personas(self.settings.personas.user_dir)
        for problem in fresh.errors:
            log.error("persona_file_problem", problem=problem)
        if fresh.personas:
            self.book.personas = fresh.personas
            self.book.errors = fresh.errors
        log.info("personas_reloaded", count=len(self.book.personas))

    def status_page(self, stages: Stages, source: PyAudioSource, sink: PyAudioSink) -> StatusPage:
        """The status page and health checks; the health line goes to `systemctl status`."""
        settings = self.settings
        # the file the model was loaded from (a version's, behind the one-Pi current.gguf link)
        gguf = resolve_gguf(settings).resolve() if settings.llm.backend == "embedded" else None
        return StatusPage(
            settings.status,
            checks={
                "audio": SoundCardWatch(
                    lambda: source.frames_captured,
                    lambda: sink.device_ok,
                    devices_words(settings),
                ),
                "gpio": fixed("gpio", gpio_words(settings, pin_factory_name())),
                "models": fixed("models", models_words(settings) + ": loaded"),
            },
            llm=llm_watch(
                settings.llm,
                lambda: stages.backend.status,
                gguf.name if gguf else "",
                gguf,
                hosts=lambda: host_states(stages.backend),
            ),
            phone={"devices": devices_words(settings)},
            on_health=lambda health: self.notifier.status(health.line),
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_personas)
        for problem in self.book.errors:
            log.error("persona_file_problem", problem=problem)
        started = time.monotonic()
        async with extending_start(self.notifier):
            self.notifier.send(status="loading models")
            settings = self.settings
            first = first_persona(self.book, settings.call)
            stages = await load_stages(settings, first, list(self.book))
            lines = LineBook(stages.synthesizer)
            rendered = await lines.prerender(self.book)
            rendered += await prerender_help(lines, self.book, settings.help)
            sink = PyAudioSink(
                settings.audio, stages.synthesizer.sample_rate, reference_rate=MIC_RATE
            )
            # the mic's frames come with what the earpiece really played: the echo reference
            source = PyAudioSource(settings.audio, MIC_RATE, settings.vad.frame_ms, tap=sink.tap)
            hook = GpioHookSwitch(
                settings.hook.pin,
                settings.hook.switch,
                pull_up=settings.hook.pull_up,
                debounce_ms=settings.hook.debounce_ms,
            )
            keypads = build_keypads(settings.keypad)
            page = self.status_page(stages, source, sink)
            phone = build_phone(
                stages.for_phone(settings.vad, settings.turn),
                PhoneHardware(hook, keypads, source, sink),
                self.book,
                CallOptions.from_settings(settings),
                lines=lines,
                on_call=page.on_call,
                on_state=page.on_state,
            )
            frozen = freeze_after_start()
            self.notifier.ready(page.health.line)
        log.info(
            "service_ready",
            load_ms=ms(time.monotonic() - started),
            lines=rendered,
            gc_frozen=frozen,
            llm_state=str(stages.llm_status.state),
            llm_cause=stages.llm_status.last_cause,
            health=page.health.line,
        )
        interval = watchdog_interval_s()
        async with page.serving(), asyncio.TaskGroup() as tg:
            phone_task = tg.create_task(phone.run(), name="phone")
            dog = tg.create_task(feed_watchdog(self.notifier, interval)) if interval else None
            await self.stop.wait()
            self.notifier.stopping()
            await phone.shut_down(GOODBYE_GRACE_S)
            phone_task.cancel()
            if dog is not None:
                dog.cancel()
        for keypad in keypads:
            keypad.close()
        hook.close()
        await source.aclose()
        await sink.aclose()
        await stages.aclose()
        log.info("service_stopped")
        return 0
