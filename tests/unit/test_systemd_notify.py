"""The notify protocol against a real datagram socket, as systemd listens on one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from payphone.systemd_notify import Notifier, extending_start


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_a_slow_start_keeps_extending_the_start_timeout(
    notify_socket: socket.socket,
) -> None:
    notifier = Notifier(notify_socket.getsockname())
    async with extending_start(notifier, step_s=0.3, limit_s=10.0):
        notifier.send(status="loading models")
        await asyncio.sleep(1.0)  # longer than one extension: more must follow
    await asyncio.sleep(0.3)  # and none after the block

    messages = received(notify_socket)
    assert messages[0] == "EXTEND_TIMEOUT_USEC=300000"  # the first thing systemd hears
    assert messages[1] == "STATUS=loading models"
    extensions = [m for m in messages if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert 5 <= len(extensions) <= 12, messages  # one at once, then one every 0.1 s for 1 s
    assert set(extensions) == {"EXTEND_TIMEOUT_USEC=300000"}


async def test_a_start_stuck_for_good_stops_being_extended(notify_socket: socket.socket) -> None:
    notifier = Notifier(notify_socket.getsockname())
    async with extending_start(notifier, step_s=0.3, limit_s=0.35):
        await asyncio.sleep(1.0)

    extensions = received(notify_socket)
    # at 0, 0.1, 0.2, 0.3 s at most (not ~10 as for 1 s unbounded); then systemd's timeout rules
    assert 2 <= len(extensions) <= 4, extensions


async def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier("")
    async with extending_start(notifier, step_s=0.3):
        await asyncio.sleep(0.2)
    assert not notifier.enabled
