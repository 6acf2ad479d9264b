"""A whole phone on a bench: real gpiozero mock pins, in-memory audio, pluggable speech stages.

Tests, `bench hangup` and the simulator build their phones here, so each drives the real call
loop the same way: lift and replace the handset on a mock hook pin, press keys, speak into the
in-memory mic, and listen to the in-memory earpiece (optionally leaking back into the mic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gpiozero.pins.mock import MockFactory

from payphone.call.assembly import PhoneHardware, PhoneStages, build_phone
from payphone.call.events import CallState
from payphone.call.lines import LineBook
from payphone.call.options import CallOptions
from payphone.call.phone import Phone
from payphone.call.session import Call
from payphone.hardware.base import AudioSink, HookState, Keypad
from payphone.hardware.hook import GpioHookSwitch
from payphone.hardware.keypad import QueueKeypad
from payphone.hardware.memory_audio import MemorySink, MemorySource
from payphone.personas.loader import PersonaBook, load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.handset import Handset
from payphone.sim.room import RoomSound

HOOK_PIN = 17
T = TypeVar("T")


@dataclass
class Rig:
    """One assembled phone and the handles to drive it."""

    phone: Phone
    hook: GpioHookSwitch
    keypad: QueueKeypad
    mic: MemorySource
    sink: MemorySink
    pins: MockFactory
    handset: Handset
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

    async def wait_call(self, timeout: float = 5.0) -> None:
        """Until the phone has made the call: the hook reads off-hook a moment before it has."""
        async with asyncio.timeout(timeout):
            while self.phone.call is None:
                await asyncio.sleep(0.01)


def _both(first: Callable[[T], None], then: Callable[[T], None] | None) -> Callable[[T], None]:
    if then is None:
        return first

    def both(value: T) -> None:
        first(value)
        then(value)

    return both


def build_rig(
    stages: PhoneStages,
    options: CallOptions | None = None,
    *,
    personas: PersonaBook | None = None,
    extra_keypads: list[Keypad] | None = None,
    lines: LineBook | None = None,
    debounce_ms: int = 10,
    mic_frame_ms: int = 30,
    sink_speed: float = 1.0,
    live_mic: bool = False,
    keep_heard: bool = True,
    earpiece: AudioSink | None = None,
    echo: HandsetEcho | None = None,
    keep_mic: bool = False,
    room: RoomSound | None = None,
    on_call: Callable[[Call], None] | None = None,
    on_state: Callable[[CallState], None] | None = None,
) -> Rig:
    """Assemble a phone on mock pins; start `rig.phone.run()` in a task to switch it on.

    `earpiece`: another sink for the phone (e.g. a PyAudio sink whose device is gone) instead
    of the recording one; `rig.sink` then hears nothing.
    `echo`: the earpiece leaks back into the mouthpiece (`sim/echo_path.py`); the phone then
    hears `rig.handset`, which keeps the mic on a sample clock beside the earpiece's.
    `keep_mic`: `rig.handset.delivered` keeps every frame the phone heard.
    `room`: other people talking behind the caller, under every mic frame (`sim/room.py`).
    `on_call` / `on_state`: another observer of the phone's calls (the status page), after the
    rig's own lists.
    """
    if echo is not None and earpiece is not None:
        raise ValueError("the echo comes from the rig's own earpiece: no other `earpiece` with it")
    pins = MockFactory()
    hook = GpioHookSwitch(HOOK_PIN, "normally_open", debounce_ms=debounce_ms, pin_factory=pins)
    keypad = QueueKeypad()
    mic = MemorySource(16000, mic_frame_ms, live=live_mic)
    sink = MemorySink(stages.synthesizer.sample_rate, speed=sink_speed, keep_heard=keep_heard)
    handset = Handset(mic, sink, echo, keep=keep_mic, room=room)
    calls: list[Call] = []
    states: list[CallState] = []
    phone = build_phone(
        stages,
        PhoneHardware(hook, [keypad, *(extra_keypads or [])], handset, earpiece or sink),
        personas or load_personas(),
        options or CallOptions(),
        lines=lines,
        on_call=_both(calls.append, on_call),
        on_state=_both(states.append, on_state),
    )
    return Rig(phone, hook, keypad, mic, sink, pins, handset, states, calls)
