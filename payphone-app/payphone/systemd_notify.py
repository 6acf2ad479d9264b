"""systemd's notify protocol in a few lines: READY, WATCHDOG, STATUS, EXTEND_TIMEOUT_USEC.

A no-op when not started by systemd (no $NOTIFY_SOCKET), so the same code runs on a laptop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator

# Each EXTEND_TIMEOUT_USEC moves systemd's start deadline to now + EXTEND_STEP_S; it is sent every
# third of that, so a slow start (a big GGUF, a busy SD card) never runs into TimeoutStartSec.
EXTEND_STEP_S = 60.0
# ...but a start stuck for good must still fail: no more extensions after this long
START_LIMIT_S = 1800.0


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines; False when there is no systemd to tell (or it is gone)."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), target)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        self.last_status = status
        return self.send(ready=1, status=status)

    def status(self, text: str) -> bool:
        """The one line `systemctl status` shows; sent only when it changes."""
        if text == self.last_status:
            return False
        self.last_status = text
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(extend_timeout_usec=int(seconds * 1_000_000))

    def stopping(self) -> bool:
        return self.send(stopping=1)


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec, or None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def _keep_extending(notifier: Notifier, step_s: float, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() + step_s / 3 < deadline:
        await asyncio.sleep(step_s / 3)
        notifier.extend_timeout(step_s)


@contextlib.asynccontextmanager
async def extending_start(
    notifier: Notifier, step_s: float = EXTEND_STEP_S, limit_s: float = START_LIMIT_S
) -> AsyncIterator[None]:
    """Tell systemd "still starting" periodically while the block runs (one message is not
    enough: it extends the deadline once, and loading can take longer than that)."""
    notifier.extend_timeout(step_s)  # at once: the first thing systemd hears
    task = asyncio.create_task(_keep_extending(notifier, step_s, limit_s), name="extend-start")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
