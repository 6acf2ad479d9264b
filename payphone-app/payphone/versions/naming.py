"""Persona model versions: `<UTC date>-<UTC time>-<first 12 hex of the GGUF's sha256>`.

A version names one GGUF for good: the same file always gets the same digest part, a new file a
new name, and names sort by when they were installed (the date and time come first; a new one is
always later than the newest installed), so "the version before this one" is simply the
previous name in sorted order. Ollama models are
`payphone-persona:<version>`; the one-Pi store keeps `<version>.gguf`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

SHORT = 12
VERSION_RE = re.compile(r"^(?P<when>\d{8}-\d{6})-(?P<sha>[0-9a-f]{12})$")
EXAMPLE = "20261201-183855-3f2a9c1b0d4e"
WHEN = "%Y%m%d-%H%M%S"


class VersionError(Exception):
    """A bad version name, a missing file, nothing to roll back to: said in one line, exit 2."""


@dataclass(frozen=True, order=True)
class Version:
    """One version's name; orders by install time."""

    name: str

    @property
    def short_sha(self) -> str:
        return self.name.rsplit("-", 1)[1]

    @property
    def installed(self) -> datetime:
        return datetime.strptime(self.name.rsplit("-", 1)[0], WHEN).replace(tzinfo=UTC)


def parse_version(text: str) -> Version:
    """`text` as a version name, or `VersionError` naming it and the expected form."""
    if not VERSION_RE.match(text):
        raise VersionError(
            f"{text!r} is not a persona model version (expected DATE-TIME-SHA, e.g. {EXAMPLE})"
        )
    return Version(text)


def is_version(text: str) -> bool:
    return VERSION_RE.match(text) is not None


def new_version(sha256: str, now: datetime | None = None, after: Version | None = None) -> Version:
    """The name for a GGUF installed now (UTC, to the second), later than `after` (the newest
    installed) even when the clock says otherwise."""
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if after is not None and when <= after.installed:
        when = after.installed + timedelta(seconds=1)
    return Version(f"{when:{WHEN}}-{sha256[:SHORT]}")


_cache: dict[tuple[str, int, int], str] = {}
_cache_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The sha256 of a file (hex), cached by (real path, size, mtime): hashing a persona GGUF
    takes seconds on a Pi, so callers on the event loop run this in a thread, once."""
    real = path.resolve(strict=True)
    info = real.stat()
    key = (str(real), info.st_size, info.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    with real.open("rb") as f:
        value = hashlib.file_digest(f, "sha256").hexdigest()
    with _cache_lock:
        _cache[key] = value
    return value
