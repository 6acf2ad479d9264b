"""The Pi #2 store: Ollama models `payphone-persona:<version>`; the phone's model name (the
`llm.ollama_model` setting, `payphone-persona` = `payphone-persona:latest`) is a copy of one.

This is what `ollama create` does from another machine, through the official client over the
private link (Pi #2's firewall lets Pi #1 in): upload the GGUF as a blob (/api/blobs), create the
versioned model from the Modelfile's template, system prompt and parameters (/api/create), copy
it to the phone's name (/api/copy), load it (/api/chat with no messages), delete versions past
the kept ones (/api/delete). The current version is the one whose digest the phone's name
shares (/api/tags): a copy is the same manifest.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ollama

from payphone.versions.modelfile import Modelfile
from payphone.versions.naming import Version, VersionError, is_version, new_version
from payphone.versions.store import Listing, Steps, Store, StoreError

T = TypeVar("T")
BLOB_RE = re.compile(r"^FROM \S*sha256[-:]([0-9a-f]{64})\s*$", re.M)  # `ollama show` names the GGUF
CONNECT_S = 5.0
TRANSFER_S = 600.0  # a persona GGUF over the link, and Ollama writing it


def split_name(name: str) -> tuple[str, str]:
    """`repo:tag` (tag `latest` when none)."""
    repo, _, tag = name.partition(":")
    return repo, tag or "latest"


class OllamaStore(Store):
    without_restart = (
        "the phone asks for it from its next reply on, without its prompt primed "
        "(sudo systemctl restart payphone primes it)"
    )

    def __init__(self, host: str, model: str, keep_alive: float | str = -1) -> None:
        repo, tag = split_name(model)
        if is_version(tag):
            raise VersionError(
                f"llm.ollama_model = {model!r} names one version, so switching could never "
                f"change what the phone uses: set it to {repo!r} (= {repo}:latest)"
            )
        self.host = host
        self.repo = repo
        self.stable = f"{repo}:{tag}"
        self.keep_alive = keep_alive
        self.describe = f"Ollama at {host} ({repo}:<version>, phone uses {self.stable})"
        timeout = httpx.Timeout(
            connect=CONNECT_S, read=TRANSFER_S, write=TRANSFER_S, pool=CONNECT_S
        )
        self.client = ollama.AsyncClient(host=host, timeout=timeout)

    def name(self, version: Version) -> str:
        return f"{self.repo}:{version.name}"

    async def _call(self, what: str, request: Awaitable[T]) -> T:
        try:
            return await request
        except ollama.ResponseError as exc:
            raise StoreError(f"{what}: Ollama at {self.host} said {exc.error!r}") from None
        except (httpx.HTTPError, ConnectionError, OSError) as exc:
            raise StoreError(
                f"{what}: cannot reach Ollama at {self.host} ({type(exc).__name__}: {exc}); "
                "is Pi #2 up and this machine allowed through its firewall?"
            ) from None

    async def listing(self) -> Listing:
        listed = await self._call("list models", self.client.list())
        digests = {m.model: m.digest for m in listed.models if m.model}
        versions = sorted(
            Version(tag)
            for name in digests
            for repo, tag in [split_name(name)]
            if repo == self.repo and is_version(tag)
        )
        now = digests.get(self.stable)
        same = [v for v in versions if now and digests[self.name(v)] == now]
        return Listing(versions, same[-1] if same else None)

    async def keep_unversioned(
        self, steps: Steps, listing: Listing, now: datetime | None
    ) -> Listing:
        """The phone's name made before versions (an earlier pi2-install.sh, `ollama create` by
        hand) becomes a version of the GGUF it holds: /api/show names that file's blob."""
        if listing.current is not None:
            return listing
        listed = await self._call("list models", self.client.list())
        if self.stable not in {m.model for m in listed.models}:
            return listing
        shown = await self._call(f"show {self.stable}", self.client.show(self.stable))
        found = BLOB_RE.search(shown.modelfile or "")
        if found is None:
            steps.say(f"{self.stable} is no version and names no GGUF blob: it will be replaced")
            return listing
        newest = listing.versions[-1] if listing.versions else None
        version = new_version(found[1], now, newest)
        name = self.name(version)
        await steps(
            f"ollama cp {self.stable} {name} (the model the phone used so far, kept)",
            lambda: self._call(f"copy {self.stable}", self.client.copy(self.stable, name)),
        )
        return Listing(sorted([*listing.versions, version]), version)

    def check_source(self, gguf: Path, modelfile: Modelfile | None) -> None:
        if modelfile is None:
            raise VersionError(
                f"{gguf}: Ollama needs the Modelfile too (its chat TEMPLATE), and there is none "
                "beside this GGUF naming it: write it with `python -m training modelfile`, or "
                "fill in deploy/Modelfile.template beside the GGUF"
            )

    async def add(self, steps: Steps, version: Version, gguf: Path, mf: Modelfile | None) -> None:
        assert mf is not None  # check_source refused it
        name = self.name(version)
        blob: dict[str, str] = {}

        async def upload() -> None:
            blob["digest"] = await self._call("upload", self.client.create_blob(gguf))

        async def create() -> None:
            await self._call(
                f"create {name}",
                self.client.create(
                    model=name,
                    files={gguf.name: blob["digest"]},
                    template=mf.template,
                    system=mf.system,
                    parameters=mf.parameters or None,
                    stream=False,
                ),
            )

        size_mb = (await asyncio.to_thread(gguf.stat)).st_size / 1e6
        await steps(f"upload {gguf} ({size_mb:.1f} MB) to {self.host}", upload)
        await steps(f"ollama create {name} (from {mf.path})", create)

    async def point(self, steps: Steps, version: Version) -> None:
        name = self.name(version)
        load: dict[str, Any] = {"model": self.stable, "messages": [], "keep_alive": self.keep_alive}
        await steps(
            f"ollama cp {name} {self.stable}",
            lambda: self._call(f"copy {name}", self.client.copy(name, self.stable)),
        )
        await steps(
            f"load {self.stable} on {self.host} (keep it loaded)",
            lambda: self._call(f"load {self.stable}", self.client.chat(**load)),
        )

    async def remove(self, steps: Steps, version: Version) -> None:
        name = self.name(version)
        await steps(
            f"ollama rm {name} (older than the kept versions)",
            lambda: self._call(f"delete {name}", self.client.delete(name)),
        )

    async def aclose(self) -> None:
        await self.client.close()
