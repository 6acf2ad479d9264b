"""The one-Pi store: `<models.dir>/persona/<version>.gguf`, and `current.gguf` -> one of them.

The service's `llm.gguf` names `current.gguf`; switching replaces that symlink atomically (a
new link renamed over the old one), so the service finds either the old or the new model, never
none. Files are copied under a temporary name and renamed into place. Run as root (the
installer), new files and links get the folder's owner (the `payphone` user).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from payphone.versions.modelfile import Modelfile
from payphone.versions.naming import Version, is_version
from payphone.versions.store import Listing, Steps, Store

CURRENT = "current.gguf"


def persona_dir(models_dir: Path) -> Path:
    return models_dir / "persona"


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.describe = str(root)

    @property
    def current_link(self) -> Path:
        return self.root / CURRENT

    def file(self, version: Version) -> Path:
        return self.root / f"{version.name}.gguf"

    async def listing(self) -> Listing:
        return await asyncio.to_thread(self._listing)

    def _listing(self) -> Listing:
        versions = sorted(
            Version(p.stem)
            for p in (self.root.glob("*.gguf") if self.root.is_dir() else [])
            if is_version(p.stem) and p.is_file() and not p.is_symlink()
        )
        current = None
        if self.current_link.is_symlink():
            target = Path(os.readlink(self.current_link))
            if is_version(target.stem) and (self.root / target.name).is_file():
                current = Version(target.stem)
        return Listing(versions, current)

    def _own(self, path: Path) -> None:
        """As root: give what we made to the folder's owner (the service user)."""
        if os.geteuid() == 0:
            info = self.root.stat()
            os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)

    async def add(self, steps: Steps, version: Version, gguf: Path, mf: Modelfile | None) -> None:
        dest = self.file(version)

        def copy() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(gguf, tmp)
            tmp.chmod(0o640)
            self._own(tmp)
            os.replace(tmp, dest)

        await steps(f"copy {gguf} -> {dest}", lambda: asyncio.to_thread(copy))

    async def point(self, steps: Steps, version: Version) -> None:
        link = self.current_link

        def relink() -> None:
            tmp = link.with_name(f".{link.name}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.file(version).name)  # relative: the folder may be moved
            self._own(tmp)
            os.replace(tmp, link)

        await steps(f"point {link} -> {self.file(version).name}", lambda: asyncio.to_thread(relink))

    async def remove(self, steps: Steps, version: Version) -> None:
        path = self.file(version)
        await steps(f"delete {path} (older than the kept versions)", lambda: _unlink(path))


async def _unlink(path: Path) -> None:
    await asyncio.to_thread(path.unlink, True)
