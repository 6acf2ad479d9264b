"""Wired keypads behind one interface: a GPIO matrix or an MT8870 DTMF decoder.

Each delivers one key per press on an asyncio queue. GPIO callbacks and the matrix scanner run in
gpiozero's / their own thread and hand keys over with `call_soon_threadsafe`. The in-band DTMF
keypad (`payphone.speech.dtmf_keypad`) and the simulator's keypad are `QueueKeypad`s too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from payphone.hardware.base import Keypad
from payphone.log import get_logger

log = get_logger("keypad")

LAYOUTS: dict[str, tuple[str, ...]] = {
    "4x3": ("123", "456", "789", "*0#"),
    "4x4": ("123A", "456B", "789C", "*0#D"),
}

# MT8870 Q4..Q1 code -> key (Q1 is the least significant bit)
MT8870_CODES: dict[int, str] = {
    **{n: str(n) for n in range(1, 10)},
    10: "0",
    11: "*",
    12: "#",
    13: "A",
    14: "B",
    15: "C",
    0: "D",
}


class QueueKeypad(Keypad):
    """Keys pushed from anywhere (other threads too) onto the loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    def press(self, key: str) -> None:
        """Deliver a key; safe from any thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, key)

    async def keys(self) -> AsyncIterator[str]:
        while True:
            yield await self._queue.get()


class MatrixKeypad(QueueKeypad):
    """A 4x3 or 4x4 matrix: rows driven high one at a time, columns read with pull-downs.

    A key counts when it alone is down for `debounce_ms` of consecutive scans; scans that see
    more than one key are ignored (a diode-less matrix shows ghost keys then), and the next key
    counts only after every key has been released.
    """

    def __init__(
        self,
        row_pins: Sequence[int],
        column_pins: Sequence[int],
        layout: str = "4x3",
        *,
        debounce_ms: int = 30,
        scan_interval_ms: int = 5,
        pin_factory: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(loop)
        self._labels = LAYOUTS[layout]
        if len(row_pins) != len(self._labels) or len(column_pins) != len(self._labels[0]):
            raise ValueError(
                f"a {layout} keypad needs {len(self._labels)} row pins and "
                f"{len(self._labels[0])} column pins"
            )
        self._rows = [DigitalOutputDevice(p, pin_factory=pin_factory) for p in row_pins]
        self._cols = [
            DigitalInputDevice(p, pull_up=False, pin_factory=pin_factory) for p in column_pins
        ]
        self._interval = scan_interval_ms / 1000.0
        self._stable_scans = max(1, round(debounce_ms / scan_interval_ms))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan_forever, name="keypad-scan", daemon=True)
        self._thread.start()

    def scan(self) -> list[str]:
        """Keys down right now (rows driven one at a time)."""
        down: list[str] = []
        for r, row in enumerate(self._rows):
            row.on()
            down.extend(self._labels[r][c] for c, col in enumerate(self._cols) if col.is_active)
            row.off()
        return down

    def _scan_forever(self) -> None:
        candidate: str | None = None
        seen = 0
        released = 0
        armed = True
        while not self._stop.wait(self._interval):
            down = self.scan()
            if not down:
                released += 1
                if released >= self._stable_scans:
                    armed = True
                candidate, seen = None, 0
                continue
            released = 0
            key = down[0] if len(down) == 1 else None
            if key is None or key != candidate:
                candidate, seen = key, 1 if key else 0
                continue
            seen += 1
            if armed and seen >= self._stable_scans:
                armed = False
                self.press(key)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        for device in (*self._rows, *self._cols):
            device.close()


class Mt8870Keypad(QueueKeypad):
    """An MT8870 DTMF decoder: the four data lines are read when StD rises."""

    def __init__(
        self,
        q_pins: Sequence[int],
        std_pin: int,
        *,
        pin_factory: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if len(q_pins) != 4:
            raise ValueError("the MT8870 needs four data pins, Q1..Q4")
        self._q = [DigitalInputDevice(p, pull_up=False, pin_factory=pin_factory) for p in q_pins]
        self._std = DigitalInputDevice(std_pin, pull_up=False, pin_factory=pin_factory)
        self._std.when_activated = self._on_std

    def _on_std(self, *_: object) -> None:
        code = sum(1 << bit for bit, pin in enumerate(self._q) if pin.is_active)
        self.press(MT8870_CODES[code])

    def close(self) -> None:
        for device in (*self._q, self._std):
            device.close()
