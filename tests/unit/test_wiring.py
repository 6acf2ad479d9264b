"""One wiring: every call setting reaches the call in the service, the simulator and interactive
mode alike. Each mode runs for real with scripted stages in place of the models, and the call it
makes reports the options it ran with."""

from __future__ import annotations

import asyncio
import io
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from gpiozero.pins.mock import MockFactory
from rich.console import Console

from payphone.call.assembly import PhoneStages
from payphone.call.options import CallOptions
from payphone.config import Settings, TurnSettings, VadSettings
from payphone.hardware.memory_audio import MemorySink, MemorySource
from payphone.hardware.played_tap import PlayedTap
from payphone.llm.breaker import BreakerState, BreakerStatus
from payphone.personas.loader import Persona
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
)

SETTINGS = Settings.model_validate(
    {
        "llm": {"prompt_style": "tag", "history_tokens": 333},
        "vad": {"barge_in": True, "hangover_ms": 700, "barge_in_min_ms": 330},
        "turn": {
            "pause_ms": 240,
            "speculate_ms": 600,
            "max_silence_ms": 1500,
            "threshold": 0.7,
            "complete_ms": 900,
        },
        "call": {"dial_tone_s": 0.2, "max_call_s": 99, "default_persona_key": "2"},
        "keypad": {"source": "none"},
    }
)
EXPECTED = CallOptions.from_settings(SETTINGS).as_report()
LISTENER_SETTINGS: list[tuple[VadSettings, TurnSettings]] = []


@dataclass
class ScriptedStages:
    """What `load_stages` returns, with the models replaced by scripted stages."""

    synthesizer: ToneSynthesizer = field(default_factory=ToneSynthesizer)
    llm_status: BreakerStatus = field(
        default_factory=lambda: BreakerStatus(BreakerState.CLOSED, 0, None, "", None, 0)
    )

    def for_phone(self, vad: VadSettings, turn: TurnSettings) -> PhoneStages:
        LISTENER_SETTINGS.append((vad, turn))  # what each call's endpointer is built with
        return PhoneStages(
            ScriptedTranscriber(deque()), ScriptedBackend(), self.synthesizer, EnergyEndpointer
        )

    async def aclose(self) -> None:
        pass


async def scripted_load(settings: Settings, first: Persona, voices: list[Persona]) -> Any:
    assert first.id == "grandma_mae"  # the first persona is chosen from the settings too
    LISTENER_SETTINGS.clear()  # only this mode's phone counts
    return ScriptedStages()


def off_hook(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The call's report of its options; the end-of-turn settings went to its listener."""
    assert LISTENER_SETTINGS[-1] == (SETTINGS.vad, SETTINGS.turn)
    return next(e for e in events if e["event"] == "off_hook")


async def test_the_simulator_passes_every_setting_to_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from payphone.sim import simulate

    monkeypatch.setattr(simulate, "load_stages", scripted_load)
    script = tmp_path / "call.yaml"
    script.write_text("- offhook\n- wait: 0.3\n- onhook\n")
    report = await simulate.simulate(
        SETTINGS, script, tmp_path / "out", fast=True, console=Console(file=io.StringIO())
    )
    event = off_hook(report["events"])
    assert event["options"] == EXPECTED
    assert event["persona"] == "grandma_mae"


async def test_interactive_mode_passes_every_setting_to_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from payphone.sim import interactive

    async def typed() -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        for line in ("o", "w 0.3", "h", None):
            queue.put_nowait(line)
        return queue

    monkeypatch.setattr(interactive, "load_stages", scripted_load)
    monkeypatch.setattr(interactive, "has_device", lambda direction: False)
    monkeypatch.setattr(interactive, "_lines", typed)
    await interactive.interactive(SETTINGS, tmp_path, Console(file=io.StringIO()))
    report = json.loads((tmp_path / "report.json").read_text())
    event = off_hook(report["events"])
    assert event["options"] == EXPECTED
    assert event["persona"] == "grandma_mae"


async def test_the_service_passes_every_setting_to_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from payphone import service
    from payphone.hardware.hook import GpioHookSwitch

    phones: list[Any] = []
    real_build = service.build_phone

    def spy(*args: Any, **kwargs: Any) -> Any:
        phones.append(real_build(*args, **kwargs))
        return phones[-1]

    pins = MockFactory()  # the hook pin's pull-up reads high: off-hook, a call starts at once
    monkeypatch.setattr(service, "load_stages", scripted_load)
    monkeypatch.setattr(service, "build_phone", spy)
    sinks: list[Any] = []
    taps: list[Any] = []

    def earpiece(audio: Any, rate: int, reference_rate: int) -> MemorySink:
        sink: Any = MemorySink(rate)
        sink.tap = PlayedTap(audio.device_rate, reference_rate)  # the real one's echo reference
        sinks.append(sink)
        return cast(MemorySink, sink)

    def mic(audio: Any, rate: int, frame_ms: int, tap: Any) -> MemorySource:
        taps.append(tap)
        return MemorySource(rate, frame_ms)

    monkeypatch.setattr(service, "PyAudioSink", earpiece)
    monkeypatch.setattr(service, "PyAudioSource", mic)
    monkeypatch.setattr(
        service,
        "GpioHookSwitch",
        lambda *args, **kwargs: GpioHookSwitch(*args, **kwargs, pin_factory=pins),
    )
    svc = service.Service(SETTINGS)
    running = asyncio.create_task(svc.run())
    async with asyncio.timeout(10):
        while not phones or phones[0].call is None:
            await asyncio.sleep(0.01)
    call = phones[0].call
    assert taps == [sinks[0].tap]  # the mic's echo reference is the earpiece's own output
    await asyncio.sleep(0.1)
    svc.stop.set()
    assert await asyncio.wait_for(running, 10) == 0
    event = off_hook(call.log.events)
    assert event["options"] == EXPECTED
    assert event["persona"] == "grandma_mae"
