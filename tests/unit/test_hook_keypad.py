"""Hook switch and keypads on gpiozero's own MockFactory pins."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from payphone.hardware.base import HookState
from payphone.hardware.hook import GpioHookSwitch
from payphone.hardware.keypad import LAYOUTS, MatrixKeypad, Mt8870Keypad

HOOK = 17


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


async def next_event(hook: GpioHookSwitch, timeout: float = 0.5) -> HookState | None:
    events = hook.events()
    try:
        async with asyncio.timeout(timeout):
            return await anext(events)
    except TimeoutError:
        return None
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def settled(pins: MockFactory, switch: str, level_high: bool) -> GpioHookSwitch:
    hook = GpioHookSwitch(HOOK, switch, debounce_ms=50, pin_factory=pins)  # type: ignore[arg-type]
    pin = pins.pin(HOOK)
    pin.drive_high() if level_high else pin.drive_low()
    await asyncio.sleep(0.08)
    while not hook._queue.empty():
        hook._queue.get_nowait()
    return hook


@pytest.mark.parametrize(
    ("switch", "cradle_high", "lifted_high"),
    [("normally_open", False, True), ("normally_closed", True, False)],
)
async def test_both_polarities(
    pins: MockFactory, switch: str, cradle_high: bool, lifted_high: bool
) -> None:
    hook = await settled(pins, switch, cradle_high)
    assert hook.state is HookState.ON_HOOK
    pin = pins.pin(HOOK)
    pin.drive_high() if lifted_high else pin.drive_low()
    assert await next_event(hook) is HookState.OFF_HOOK
    assert hook.state is HookState.OFF_HOOK
    pin.drive_high() if cradle_high else pin.drive_low()
    assert await next_event(hook) is HookState.ON_HOOK
    hook.close()


async def test_a_5ms_flap_is_ignored_and_60ms_counts(pins: MockFactory) -> None:
    hook = await settled(pins, "normally_open", level_high=False)
    pin = pins.pin(HOOK)
    for _ in range(3):  # a bouncing contact: brief flaps, back in the cradle
        pin.drive_high()
        await asyncio.sleep(0.005)
        pin.drive_low()
        await asyncio.sleep(0.005)
    assert await next_event(hook, timeout=0.2) is None
    assert hook.state is HookState.ON_HOOK
    pin.drive_high()
    await asyncio.sleep(0.06)
    assert hook.state is HookState.OFF_HOOK
    assert await next_event(hook) is HookState.OFF_HOOK
    hook.close()


async def test_edges_from_another_thread_reach_the_loop(pins: MockFactory) -> None:
    hook = await settled(pins, "normally_open", level_high=False)
    thread = threading.Thread(target=pins.pin(HOOK).drive_high)
    thread.start()
    thread.join()
    assert await next_event(hook) is HookState.OFF_HOOK
    hook.close()


class MatrixWiring:
    """Simulates the key switches: a driven row shows up on the columns of the keys held down."""

    def __init__(self, pins: MockFactory, rows: list[int], cols: list[int], layout: str) -> None:
        self.pins, self.rows, self.cols = pins, rows, cols
        self.labels = LAYOUTS[layout]
        self.down: set[str] = set()
        wiring = self

        class RowPin(MockPin):
            def _set_state(self, value: bool) -> None:
                super()._set_state(value)
                wiring.update()

        for row in rows:
            pins.pin(row, pin_class=RowPin)

    def update(self) -> None:
        for c, col in enumerate(self.cols):
            high = any(
                self.pins.pin(row).state and self.labels[r][c] in self.down
                for r, row in enumerate(self.rows)
            )
            pin = self.pins.pin(col)
            pin.drive_high() if high else pin.drive_low()


ROWS, COLS4, COLS3 = [5, 6, 13, 19], [12, 16, 20, 21], [12, 16, 20]


async def collect(keypad: MatrixKeypad | Mt8870Keypad, timeout: float = 0.15) -> list[str]:
    keys: list[str] = []
    stream = keypad.keys()
    try:
        async with asyncio.timeout(timeout):
            while True:
                keys.append(await anext(stream))
    except TimeoutError:
        pass
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return keys


@pytest.mark.parametrize(("layout", "cols"), [("4x3", COLS3), ("4x4", COLS4)])
async def test_matrix_keys_debounced_one_per_press(
    pins: MockFactory, layout: str, cols: list[int]
) -> None:
    wiring = MatrixWiring(pins, ROWS, cols, layout)
    keypad = MatrixKeypad(ROWS, cols, layout, debounce_ms=20, scan_interval_ms=2, pin_factory=pins)
    stream = keypad.keys()
    expected = "159*0#" + ("D" if layout == "4x4" else "")
    got = []
    for key in expected:
        wiring.down = {key}
        async with asyncio.timeout(3):
            got.append(await anext(stream))
        await asyncio.sleep(0.1)  # still held: still one key
        wiring.down = set()
        await asyncio.sleep(0.2)  # released long enough to re-arm, even on a loaded machine
    await stream.aclose()  # type: ignore[attr-defined]
    assert "".join(got) == expected
    assert await collect(keypad) == []  # and nothing extra from holding the keys
    keypad.close()


async def test_matrix_ignores_a_short_blip_and_ghost_combinations(pins: MockFactory) -> None:
    wiring = MatrixWiring(pins, ROWS, COLS3, "4x3")
    keypad = MatrixKeypad(ROWS, COLS3, "4x3", debounce_ms=60, scan_interval_ms=2, pin_factory=pins)
    wiring.down = {"5"}
    await asyncio.sleep(0.004)  # shorter than the debounce
    wiring.down = set()
    await asyncio.sleep(0.05)
    wiring.down = {"1", "5", "2"}  # three corners of a rectangle: a ghost '4' would appear
    await asyncio.sleep(0.08)
    wiring.down = set()
    await asyncio.sleep(0.05)
    assert await collect(keypad) == []
    keypad.close()


async def test_mt8870_codes(pins: MockFactory) -> None:
    q_pins, std = [22, 23, 24, 25], 27
    keypad = Mt8870Keypad(q_pins, std, pin_factory=pins)
    codes = {"1": 1, "9": 9, "0": 10, "*": 11, "#": 12, "A": 13, "B": 14, "C": 15, "D": 0}
    for code in codes.values():
        for bit, pin in enumerate(q_pins):
            pins.pin(pin).drive_high() if code >> bit & 1 else pins.pin(pin).drive_low()
        pins.pin(std).drive_high()
        await asyncio.sleep(0.01)
        pins.pin(std).drive_low()
        await asyncio.sleep(0.01)
    assert "".join(await collect(keypad)) == "".join(codes)
    keypad.close()
