"""Production model downloads: streamed to a temporary file, then renamed into place.

Used only when models are missing and downloads are allowed; a failed or interrupted download
never leaves a half-written model where the app would load it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

CHUNK_BYTES = 1 << 20


class DownloadError(Exception):
    """A model file could not be fetched; the message names the URL and why."""


class NotOnServer(DownloadError):
    """The server has no such file (HTTP 404): for an optional file, or one of several names."""


def download_files(files: Mapping[str, Path], timeout_s: float = 30.0) -> None:
    """Fetch each URL to its destination, atomically, with a progress bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with (
        Progress(*columns, transient=False) as progress,
        httpx.Client(follow_redirects=True, timeout=timeout_s) as client,
    ):
        for url, dest in files.items():
            _download_one(client, progress, url, dest)


def _download_one(client: httpx.Client, progress: Progress, url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, client.stream("GET", url) as response:
            if response.status_code == 404:
                raise NotOnServer(f"{url}: HTTP 404")
            if response.status_code != 200:
                raise DownloadError(f"{url}: HTTP {response.status_code}")
            total = int(response.headers.get("content-length", 0)) or None
            task = progress.add_task(dest.name, total=total)
            for chunk in response.iter_bytes(CHUNK_BYTES):
                out.write(chunk)
                progress.advance(task, len(chunk))
        os.replace(tmp, dest)
    except httpx.HTTPError as exc:
        raise DownloadError(f"{url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
