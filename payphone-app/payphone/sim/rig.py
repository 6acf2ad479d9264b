"""A whole phone on a bench: real gpiozero mock pins, in-memory audio, pluggable speech stages.

Tests, `bench hangup` and the simulator build their phones here, so each drives the real call
loop the same way: lift and replace the handset on a mock hook pin, press keys, speak into the
in-memory mic, and listen to the in-memory earpiece.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpiozero.pins.mock import MockFactory

from payphone.call.assembly import assemble_phone
from payphone.call.events import CallState
from payphone.call.phone import Endpointer, Phone
from payphone.call.session import Call
from payphone.call.turn import Speakable
from payphone.config import CallSettings
from payphone.hardware.base import HookState, Keypad
from payphone.hardware.hook import GpioHookSwitch
from payphone.hardware.keypad import QueueKeypad
from payphone.hardware.memory_audio import MemorySink, MemorySource
from payphone.llm.base import ChatBackend, ChatOptions
from payphone.personas.loader import PersonaBook, load_personas
from payphone.speech.base import Synthesizer, Transcriber

HOOK_PIN = 17


@dataclass
class Rig:
    """One assembled phone and the handles to drive it."""

    phone: Phone
    hook: GpioHookSwitch
    keypad: QueueKeypad
    mic: MemorySource
    sink: MemorySink
    pins: MockFactory
    states: list[CallState] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    async def start(self) -> asyncio.Task[None]:
        """Put the handset in the cradle, let the switch settle, and switch the phone on."""
        self.replace()  # gpiozero's pull-up set-up reads high (off-hook) at first
        await self.wait_hook(HookState.ON_HOOK)
        return asyncio.create_task(self.phone.run(), name="phone")

    def lift(self) -> None:
        """Take the handset off the cradle (normally-open switch opens; pull-up reads high)."""
        self.pins.pin(HOOK_PIN).drive_high()

    def replace(self) -> None:
        self.pins.pin(HOOK_PIN).drive_low()

    async def wait_state(self, state: CallState, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.phone.call is None or self.phone.call.state is not state:
                await asyncio.sleep(0.005)

    async def wait_hook(self, state: HookState, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while self.hook.state is not state:
                await asyncio.sleep(0.002)


def build_rig(
    transcriber: Transcriber,
    backend: ChatBackend,
    synthesizer: Synthesizer,
    make_endpointer: Callable[[], Endpointer],
    *,
    call_settings: CallSettings | None = None,
    speakable: Speakable | None = None,
    personas: PersonaBook | None = None,
    extra_keypads: list[Keypad] | None = None,
    debounce_ms: int = 10,
    mic_frame_ms: int = 30,
    sink_speed: float = 1.0,
    options: ChatOptions | None = None,
    live_mic: bool = False,
    keep_heard: bool = True,
    **call_options: Any,
) -> Rig:
    """Assemble a phone on mock pins; start `rig.phone.run()` in a task to switch it on."""
    pins = MockFactory()
    hook = GpioHookSwitch(HOOK_PIN, "normally_open", debounce_ms=debounce_ms, pin_factory=pins)
    keypad = QueueKeypad()
    mic = MemorySource(16000, mic_frame_ms, live=live_mic)
    sink = MemorySink(synthesizer.sample_rate, speed=sink_speed, keep_heard=keep_heard)
    calls: list[Call] = []
    states: list[CallState] = []
    phone = assemble_phone(
        transcriber,
        backend,
        synthesizer,
        hook,
        [keypad, *(extra_keypads or [])],
        mic,
        sink,
        make_endpointer,
        personas or load_personas(),
        call_settings or CallSettings(),
        speakable=speakable,
        options=options,
        on_call=calls.append,
        on_state=states.append,
        **call_options,
    )
    return Rig(phone, hook, keypad, mic, sink, pins, states, calls)
