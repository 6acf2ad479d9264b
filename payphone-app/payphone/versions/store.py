"""Install, switch and roll back persona model versions, the same way for both deployments.

A store holds versions and one "current" pointer: the one-Pi folder (`local.LocalStore`, a
`current.gguf` symlink) or Ollama on Pi #2 (`remote.OllamaStore`, the phone's model name copied
from `payphone-persona:<version>`). Everything here first reads the store, then decides, then
changes it through `Steps`: a dry run prints each step and changes nothing, and every refusal
(`VersionError`) happens before the first step.
"""

from __future__ import annotations

import asyncio
import shutil
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from payphone.versions.modelfile import Modelfile
from payphone.versions.naming import Version, VersionError, file_sha256, new_version

RESTART = ("systemctl", "try-restart", "payphone.service")
MIN_KEEP = 2  # the current version and the one a rollback returns to


Say = Callable[[str], object]


class StoreError(Exception):
    """The store failed while changing (Ollama unreachable, a disk error): exit 1."""


class Steps:
    """Runs (or, dry, only prints) the changes, one line each."""

    def __init__(self, dry_run: bool, say: Say = print) -> None:
        self.dry_run = dry_run
        self.say = say
        self.done: list[str] = []

    async def __call__(self, text: str, action: Callable[[], Awaitable[object]]) -> None:
        if self.dry_run:
            self.say(f"[dry-run] {text}")
            return
        self.say(text)
        await action()
        self.done.append(text)


@dataclass(frozen=True)
class Listing:
    """The versions in a store, oldest first, and which one is current (None: none is)."""

    versions: list[Version]
    current: Version | None

    def previous(self) -> Version | None:
        """The version installed before the current one."""
        if self.current is None:
            return None
        older = [v for v in self.versions if v < self.current]
        return older[-1] if older else None

    def with_sha(self, sha256: str) -> Version | None:
        return next((v for v in reversed(self.versions) if sha256.startswith(v.short_sha)), None)


class Store(ABC):
    """Where versions live; `describe` names it in messages, `without_restart` says when the
    phone uses a switched version if it is not restarted."""

    describe: str
    without_restart = "the phone loads it at its next start (sudo systemctl restart payphone)"

    @abstractmethod
    async def listing(self) -> Listing: ...

    @abstractmethod
    async def add(self, steps: Steps, version: Version, gguf: Path, mf: Modelfile | None) -> None:
        """Store the GGUF as `version` (not yet current)."""

    @abstractmethod
    async def point(self, steps: Steps, version: Version) -> None:
        """Make `version` the current one."""

    @abstractmethod
    async def remove(self, steps: Steps, version: Version) -> None: ...

    def check_source(self, gguf: Path, modelfile: Modelfile | None) -> None:  # noqa: B027
        """Refuse a source this store cannot take (before any change)."""

    async def keep_unversioned(
        self, steps: Steps, listing: Listing, now: datetime | None
    ) -> Listing:
        """Before the first switch: keep what the phone uses now if it is no version yet (so a
        rollback can return to it); the listing with it."""
        return listing

    async def aclose(self) -> None:  # noqa: B027
        """Release connections."""


def check_keep(keep: int) -> None:
    if keep < MIN_KEEP:
        raise VersionError(
            f"--keep {keep}: keep at least {MIN_KEEP} (the current version and the one "
            "a rollback returns to)"
        )


def check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise VersionError(f"{path}: cannot read the GGUF ({exc.strerror})") from None
    if magic != b"GGUF":
        raise VersionError(f"{path}: not a GGUF file (it does not start with 'GGUF')")


async def restart_phone(store: Store, steps: Steps, restart: bool) -> None:
    """The phone loads and primes the model at start: restart it (only if it runs; a call in
    progress ends with its goodbye). Without systemd here, say what to do instead."""
    if not restart:
        steps.say(f"not restarted: {store.without_restart}")
        return

    async def run() -> None:
        if shutil.which(RESTART[0]) is None:
            steps.say("no systemctl here: restart the phone yourself")
            return
        proc = await asyncio.create_subprocess_exec(
            *RESTART, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            why = output.decode(errors="replace").strip() or f"exit {proc.returncode}"
            steps.say(f"could not restart the phone ({why}): sudo systemctl restart payphone")

    await steps(" ".join(RESTART), run)


async def prune(store: Store, steps: Steps, listing: Listing, keep: int) -> None:
    """Delete all but the `keep` newest versions (never the current one)."""
    kept = set(listing.versions[-keep:])
    for version in listing.versions:
        if version not in kept and version != listing.current:
            await store.remove(steps, version)


async def install(
    store: Store,
    steps: Steps,
    gguf: Path,
    modelfile: Modelfile | None,
    *,
    keep: int,
    restart: bool,
    now: datetime | None = None,
) -> Version:
    """Add the GGUF as a new version (or reuse the version that already holds this very file),
    make it current, keep the `keep` newest versions."""
    check_keep(keep)
    check_gguf(gguf)
    store.check_source(gguf, modelfile)
    before = await store.keep_unversioned(steps, await store.listing(), now)
    steps.say(f"hashing {gguf} ...")
    sha = await asyncio.to_thread(file_sha256, gguf)
    version = before.with_sha(sha)
    if version is None:
        version = new_version(sha, now, before.versions[-1] if before.versions else None)
        await store.add(steps, version, gguf, modelfile)
        after = Listing(sorted([*before.versions, version]), version)
    else:
        steps.say(f"{gguf} is already version {version.name} in {store.describe}")
        after = Listing(before.versions, version)
    if before.current == version:
        steps.say(f"{version.name} is already the current version")
    else:
        await store.point(steps, version)
        await restart_phone(store, steps, restart)
    await prune(store, steps, after, keep)
    return version


async def switch(store: Store, steps: Steps, version: Version, *, restart: bool) -> Version:
    """Make an installed version current (forward or back)."""
    listing = await store.listing()
    if version not in listing.versions:
        have = ", ".join(v.name for v in listing.versions) or "none"
        raise VersionError(f"version {version.name} is not in {store.describe} (versions: {have})")
    if listing.current == version:
        steps.say(f"{version.name} is already the current version")
        return version
    await store.point(steps, version)
    await restart_phone(store, steps, restart)
    return version


async def rollback(store: Store, steps: Steps, *, restart: bool) -> Version:
    """Make the version before the current one current again."""
    listing = await store.listing()
    if listing.current is None:
        raise VersionError(
            f"no current version in {store.describe}: nothing to roll back from "
            "(install one first: python -m payphone model install PATH)"
        )
    previous = listing.previous()
    if previous is None:
        raise VersionError(
            f"no version before {listing.current.name} in {store.describe}: nothing to roll back to"
        )
    steps.say(f"rolling back {listing.current.name} -> {previous.name}")
    return await switch(store, steps, previous, restart=restart)
