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
from payphone.log import get_logger, ms
from payphone.personas.loader import PersonaBook, load_personas
from payphone.speech.dtmf_keypad import InbandKeypad
from payphone.stages import load_stages
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
            sink = PyAudioSink(settings.audio, stages.synthesizer.sample_rate)
            source = PyAudioSource(settings.audio, MIC_RATE, settings.vad.frame_ms)
            hook = GpioHookSwitch(
                settings.hook.pin,
                settings.hook.switch,
                pull_up=settings.hook.pull_up,
                debounce_ms=settings.hook.debounce_ms,
            )
            keypads = build_keypads(settings.keypad)
            phone = build_phone(
                stages.for_phone(settings.vad, settings.turn),
                PhoneHardware(hook, keypads, source, sink),
                self.book,
                CallOptions.from_settings(settings),
                lines=lines,
            )
            status = f"ready: llm {settings.llm.backend} {stages.llm_status.state}"
            self.notifier.ready(status)
        log.info(
            "service_ready",
            load_ms=ms(time.monotonic() - started),
            lines=rendered,
            llm_state=str(stages.llm_status.state),
            llm_cause=stages.llm_status.last_cause,
        )
        interval = watchdog_interval_s()
        async with asyncio.TaskGroup() as tg:
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
