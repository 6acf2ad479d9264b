"""The hook switch on a GPIO pin, debounced by stable state.

gpiozero's `bounce_time` alone misses events (and its MockFactory ignores it), so every edge
restarts a timer on the event loop and the level counts only once it has held for `debounce_ms`.
gpiozero calls back from its own thread; edges are handed to the loop with
`call_soon_threadsafe`, and everything else happens on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from gpiozero import Button

from payphone.hardware.base import HookState, HookSwitch
from payphone.log import get_logger

log = get_logger("hook")

SwitchType = Literal["normally_open", "normally_closed"]


class GpioHookSwitch(HookSwitch):
    """A cradle switch between a BCM pin and ground (or 3.3 V with `pull_up=False`).

    `switch="normally_open"`: the contacts close while the handset rests in the cradle, so a
    closed switch means on-hook. `normally_closed`: the contacts open under the handset, so a
    closed switch means off-hook.
    """

    def __init__(
        self,
        pin: int,
        switch: SwitchType = "normally_open",
        *,
        pull_up: bool = True,
        debounce_ms: int = 50,
        pin_factory: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._closed_means = HookState.ON_HOOK if switch == "normally_open" else HookState.OFF_HOOK
        self._debounce_s = debounce_ms / 1000.0
        self._button = Button(pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory)
        self._state = self._read()
        self._timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[HookState] = asyncio.Queue()
        self._button.when_activated = self._edge_from_gpio_thread
        self._button.when_deactivated = self._edge_from_gpio_thread
        log.info("hook_ready", pin=pin, switch=switch, state=self._state.value)

    def _read(self) -> HookState:
        closed = bool(self._button.is_active)
        other = HookState.OFF_HOOK if self._closed_means is HookState.ON_HOOK else HookState.ON_HOOK
        return self._closed_means if closed else other

    def _edge_from_gpio_thread(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._restart_timer)

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._debounce_s, self._settle)

    def _settle(self) -> None:
        self._timer = None
        level = self._read()
        if level is not self._state:
            self._state = level
            self._queue.put_nowait(level)

    @property
    def state(self) -> HookState:
        return self._state

    async def events(self) -> AsyncIterator[HookState]:
        while True:
            yield await self._queue.get()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._button.close()
