"""Is the phone usable? One check per part, in plain words, for /healthz, the page and systemd.

Checks are cheap reads of in-memory state (the sound card threads' counters, the breaker's
state), evaluated once a tick on the event loop; only the Ollama watch talks to the network, in
its own task with a short timeout, and leaves its last answer for the LLM check to read. So
`/healthz` never waits on anything: it returns the last evaluation (at most a tick old).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama

from payphone.llm.breaker import BreakerState, BreakerStatus
from payphone.log import get_logger
from payphone.versions.naming import file_sha256, is_version

log = get_logger("status")

MIC_SILENT_S = 2.0  # a sound card delivers a frame every 30 ms; this long without one: gone
OLLAMA_EVERY_S = 1.5
OLLAMA_TIMEOUT_S = 2.0  # down within 1.5 + 2 s + one tick: inside the 5 s target


@dataclass(frozen=True)
class Check:
    """One part: usable or not, and why, in words an operator understands."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def line(self) -> str:
        """One line for `systemctl status` and the body of /healthz."""
        if self.ok:
            return "healthy: " + "; ".join(check.detail for check in self.checks)
        return "UNHEALTHY: " + "; ".join(check.detail for check in self.checks if not check.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "line": self.line,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


CheckSource = Callable[[], Check]


def fixed(name: str, detail: str, ok: bool = True) -> CheckSource:
    """A part that cannot change while the service runs (e.g. models loaded at start)."""
    check = Check(name, ok, detail)
    return lambda: check


class SoundCardWatch:
    """The sound card is there: the mic keeps delivering frames and the earpiece is open.

    A capture device delivers a frame every few ms, call or no call, so frames that stop
    coming mean the card is gone (or the wrong device) within `MIC_SILENT_S`. `frames`: the
    capture thread's count (`PyAudioSource.frames_captured`); `earpiece_ok`: the playback
    thread's view (`PyAudioSink.device_ok`).
    """

    def __init__(
        self, frames: Callable[[], int], earpiece_ok: Callable[[], bool], devices: str
    ) -> None:
        self.frames = frames
        self.earpiece_ok = earpiece_ok
        self.devices = devices
        self._frames: int | None = None  # read on the first check, on the loop
        self._moved = time.monotonic()

    def __call__(self) -> Check:
        now = time.monotonic()
        frames = self.frames()
        if frames != self._frames:
            self._frames, self._moved = frames, now
        if now - self._moved > MIC_SILENT_S:
            return Check("audio", False, f"no sound from the microphone ({self.devices})")
        if not self.earpiece_ok():
            return Check("audio", False, f"earpiece sound card unavailable ({self.devices})")
        return Check("audio", True, f"sound card working ({self.devices})")


def breaker_words(status: BreakerStatus) -> tuple[bool, str]:
    """The breaker's state as an operator would say it (never "closed").

    No running durations: the words change only when the state does, so each change is one
    log line and one systemd status update."""
    if status.state is BreakerState.CLOSED:
        return True, "up"
    if status.state is BreakerState.STARTING:
        return False, "starting (loading the model); callers hear the busy line"
    why = f" ({status.last_cause})" if status.last_cause else ""
    return False, f"down{why}; callers hear the busy line"


class LlmWatch:
    """The persona model: the breaker's view, plus for Ollama a probe of Pi #2 every 1.5 s.

    The breaker only learns that Pi #2 is gone when a call fails; the probe (the official
    client's /api/tags, the same request `doctor` makes) notices it between calls too, and
    reads the model's digest and which `payphone-persona:<version>` it is a copy of. In-process,
    `gguf` (the loaded file) is hashed once, in a thread; its name is the version.
    Both are logged (`llm_model`) when first known and whenever they change.
    """

    def __init__(
        self,
        breaker: Callable[[], BreakerStatus],
        *,
        backend: str,
        model: str,
        host: str | None = None,
        failover: tuple[str, ...] = (),
        gguf: Path | None = None,
    ) -> None:
        self.breaker = breaker
        self.backend = backend
        self.model = model
        self.host = host
        self.failover = failover  # several hosts: their breakers judge them, no probe here
        self.gguf = gguf
        self.digest: str | None = None
        self.version: str | None = None
        self.reachable: bool | None = None  # None: not probed yet (or not Ollama)
        self.problem = ""
        self.host_states: Callable[[], dict[str, BreakerState]] = dict  # see `llm_watch`

    @property
    def where(self) -> str:
        if self.failover:
            return f"Ollama at {', '.join(self.failover)} (failover, in this order)"
        return f"Pi #2 (Ollama at {self.host})" if self.host else "in-process llama.cpp"

    def describe(self) -> dict[str, Any]:
        ok, words = self._words()
        return {
            "backend": self.backend,
            "where": self.where,
            "model": self.model,
            "version": self.version,
            "digest": self.digest,
            "ok": ok,
            "words": words,
        }

    def _words(self) -> tuple[bool, str]:
        ok, words = breaker_words(self.breaker())
        if ok and self.reachable is False:
            return False, f"not answering ({self.problem})"
        return ok, words

    def __call__(self) -> Check:
        ok, words = self._words()
        version = f" (version {self.version})" if self.version else ""
        return Check("llm", ok, f"model {self.model}{version} {words}")

    def _known(self, digest: str | None, version: str | None, **where: Any) -> None:
        if (digest, version) != (self.digest, self.version):
            self.digest, self.version = digest, version
            log.info(
                "llm_model",
                backend=self.backend,
                model=self.model,
                version=version,
                digest=digest,
                **where,
            )

    async def _hash_gguf(self, gguf: Path) -> None:
        def read() -> tuple[str, Path]:
            return file_sha256(gguf), gguf.resolve()

        try:
            sha, real = await asyncio.to_thread(read)
        except OSError as exc:
            log.warning("llm_model_unreadable", path=str(gguf), error=repr(exc))
            return
        version = real.stem if is_version(real.stem) else None
        self._known(sha[:12], version, path=str(real), sha256=sha)

    async def run(self) -> None:
        """Probe Pi #2 until cancelled; in-process, hash the GGUF once."""
        if self.host is None:
            if self.gguf is not None:
                await self._hash_gguf(self.gguf)
            return
        client = ollama.AsyncClient(host=self.host, timeout=httpx.Timeout(OLLAMA_TIMEOUT_S))
        try:
            while True:
                await self._probe(client)
                await asyncio.sleep(OLLAMA_EVERY_S)
        finally:
            await client.close()

    async def _probe(self, client: ollama.AsyncClient) -> None:
        try:
            async with asyncio.timeout(OLLAMA_TIMEOUT_S):
                listing = await client.list()
        except Exception as exc:  # refused, timed out, DNS: all mean "not answering"
            if self.reachable is not False:
                log.warning("status_llm_unreachable", host=self.host, error=repr(exc))
            self.reachable, self.problem = False, _reason(exc)
            return
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        found = next((m for m in listing.models if m.model == wanted), None)
        digest = found.digest or "" if found is not None else ""
        self._known(digest[:12] or None, _copy_of(listing.models, wanted, digest), host=self.host)
        self.reachable, self.problem = found is not None, "" if found else f"no model {wanted}"


def _copy_of(models: Sequence[Any], wanted: str, digest: str) -> str | None:
    """The `<version>` of the `repo:<version>` that `wanted` (`repo:latest`) is a copy of."""
    repo = wanted.partition(":")[0]
    for model in models:
        name_repo, _, tag = (model.model or "").partition(":")
        if digest and name_repo == repo and is_version(tag) and model.digest == digest:
            return tag
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {OLLAMA_TIMEOUT_S:g} s"
    if isinstance(exc, ConnectionError | httpx.ConnectError):
        return "connection refused or no route"
    return type(exc).__name__
