"""`python -m payphone run` under a stand-in for systemd.

The service runs as a child process the way systemd starts it: $NOTIFY_SOCKET points at a
datagram socket this test binds, $WATCHDOG_USEC asks for watchdog pings, gpiozero's mock pin
factory stands in for the header, and a private ALSA configuration stands in for the sound card.
The earpiece is ALSA's `null` plugin; the microphone is the `file` plugin reading a FIFO that this
test fills with silence at real-time pace, as a sound card's clock would (a `null` capture device
delivers frames as fast as they are read, which no real card does).

The hook pin reads high (pull-up, nothing pressing it), which `normally_open` takes as off-hook:
a call starts as soon as the service is ready, so SIGTERM is tested with a caller on the line.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO
from tests.support.ollama_server import free_port

pytestmark = [
    pytest.mark.models,
    pytest.mark.slow,
    pytest.mark.skipif(
        ctypes.util.find_library("asound") is None, reason="no ALSA library (libasound2) here"
    ),
]

DEVICE_RATE = 48000
BLOCK_S = 0.02
F_SETPIPE_SZ = 1031
READY_LIMIT_S = 300.0  # loading Whisper, Piper and the GGUF on a busy 2-core CI machine
STATUS_PORT = free_port()
HANG_LIMIT_S = 30.0  # only to end a hung test; the stop time is printed, not judged


def alsa_config(mic_fifo: Path) -> str:
    return f"""
pcm.payphone_mic {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile "{mic_fifo}"
    format "raw"
}}
pcm.payphone_ear {{ type null }}
pcm.default {{ type null }}
"""


class PacedMicrophone:
    """Writes silence into the FIFO at real-time pace; reopens it each time ALSA does."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="paced-mic", daemon=True)

    def _run(self) -> None:
        block = bytes(int(DEVICE_RATE * BLOCK_S) * 2)
        while not self.stop.is_set():
            fd = os.open(self.fifo, os.O_WRONLY)  # blocks until the service opens the device
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, 4096)
            try:
                next_at = time.monotonic()
                while not self.stop.is_set():
                    os.write(fd, block)
                    next_at += BLOCK_S
                    time.sleep(max(0.0, next_at - time.monotonic()))
            except OSError:  # the device was closed (PortAudio probes, then reopens)
                pass
            finally:
                os.close(fd)

    def __enter__(self) -> PacedMicrophone:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):  # release a writer still waiting in open()
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        self.thread.join(timeout=5)


class NotifySocket:
    """The socket systemd would listen on: collects the service's datagrams with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                data = self.sock.recv(4096).decode()
                fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
                self.messages.append((time.monotonic(), fields))

    def count(self, key: str) -> int:
        return sum(1 for _, fields in self.messages if key in fields)

    def wait_for(self, key: str, n: int, limit_s: float, proc: subprocess.Popen[Any]) -> None:
        deadline = time.monotonic() + limit_s
        while self.count(key) < n and time.monotonic() < deadline and proc.poll() is None:
            self.poll()

    def close(self) -> None:
        self.sock.close()


def events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                out.append(event)
    return out


def wait_for_event(log: Path, name: str, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if any(e.get("event") == name for e in events(log)):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[Any], NotifySocket, Path]]:
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    (tmp_path / "asound.conf").write_text(alsa_config(fifo))
    notify = NotifySocket(tmp_path / "notify.sock")
    log = tmp_path / "service.log"
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",  # a ping every second
        "GPIOZERO_PIN_FACTORY": "mock",
        "ALSA_CONFIG_PATH": str(tmp_path / "asound.conf"),
        "PAYPHONE_AUDIO__INPUT_DEVICE": "payphone_mic",
        "PAYPHONE_AUDIO__OUTPUT_DEVICE": "payphone_ear",
        "PAYPHONE_LOGGING__FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",  # a crash in native code leaves its Python stack in the log
        # this checkout's app, also where the venv's editable install points at another one
        "PYTHONPATH": os.pathsep.join([str(REPO / "payphone-app"), str(REPO)]),
        "PAYPHONE_STATUS__LISTEN": json.dumps([f"127.0.0.1:{STATUS_PORT}"]),
    }
    with PacedMicrophone(fifo), log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "payphone", "run"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc, notify, log
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            notify.close()


def test_service_notifies_systemd_reloads_and_stops_cleanly(
    service: tuple[subprocess.Popen[Any], NotifySocket, Path],
) -> None:
    proc, notify, log = service

    notify.wait_for("READY", 1, READY_LIMIT_S, proc)
    assert notify.count("READY") == 1, log.read_text()[-3000:]
    ready_at = next(t for t, f in notify.messages if "READY" in f)
    assert notify.messages[0][1].get("EXTEND_TIMEOUT_USEC"), "extends the start timeout first"
    ready = next(f for _, f in notify.messages if "READY" in f)
    assert ready["STATUS"].startswith("healthy: "), ready["STATUS"]  # systemctl status shows it
    assert "sound card working" in ready["STATUS"] and "SmolLM2" in ready["STATUS"]

    notify.wait_for("WATCHDOG", 3, 30.0, proc)  # pinged from the running loop
    assert proc.poll() is None, f"service exited with {proc.returncode}: {log.read_text()[-1500:]}"
    pings = [t for t, f in notify.messages if "WATCHDOG" in f]
    assert len(pings) >= 3
    assert pings[-1] > ready_at
    assert wait_for_event(log, "call_started", 30.0), "off-hook at start: a call is on the line"
    status = f"http://127.0.0.1:{STATUS_PORT}"
    with urllib.request.urlopen(status + "/healthz", timeout=5) as response:
        assert response.status == 200 and response.read().decode().startswith("healthy: ")
    with urllib.request.urlopen(status + "/api/status", timeout=5) as response:
        assert json.loads(response.read())["now"]["state"] != "idle"  # the caller on the line
    with urllib.request.urlopen(status + "/metrics", timeout=5) as response:
        assert "payphone_calls_total 1.0" in response.read().decode()
    # the model it runs, logged at start: the GGUF's file and its sha256 (hashed in a thread)
    [ready_event] = [e for e in events(log) if e.get("event") == "service_ready"]
    assert ready_event["gc_frozen"] > 10_000  # the loaded models out of the collector's walks
    [model] = [e for e in events(log) if e.get("event") == "llm_model"]
    assert re.fullmatch(r"[0-9a-f]{64}", model["sha256"]), model
    assert model["path"].endswith(".gguf") and model["digest"] == model["sha256"][:12]

    proc.send_signal(signal.SIGHUP)
    assert wait_for_event(log, "personas_reloaded", 30.0)
    assert proc.poll() is None, "SIGHUP reloads, it does not stop the service"

    stop_sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=HANG_LIMIT_S)
    took = time.monotonic() - stop_sent
    print(f"SIGTERM -> exit in {took:.2f} s")
    notify.poll()

    tail = log.read_text()[-4000:]
    assert code == 0, tail
    names = [e.get("event") for e in events(log)]
    assert "call_ended" in names, tail
    assert names.index("call_ended") < names.index("service_stopped"), tail  # the caller first
    assert notify.count("STOPPING") == 1
    assert not [e for e in events(log) if e.get("level") in ("error", "critical")], tail
