"""Read a persona Modelfile into what Ollama's /api/create takes (files, template, system,
parameters), as the `ollama create` command does before it uploads the GGUF.

Only what our Modelfiles use (`python -m training modelfile`, deploy/Modelfile.template):
FROM a GGUF file, TEMPLATE, SYSTEM, PARAMETER; values bare, "JSON-quoted" or in triple quotes.
Anything else (ADAPTER, MESSAGE, FROM another model) is refused by name: the phone's model must
be exactly the file that was trained and evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from payphone.versions.naming import VersionError

MODELFILE = "Modelfile"
SUPPORTED = ("FROM", "TEMPLATE", "SYSTEM", "PARAMETER")


@dataclass(frozen=True)
class Modelfile:
    """A persona Modelfile: the GGUF its FROM names (relative to the Modelfile's folder)."""

    path: Path
    gguf: Path
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _value(text: str) -> str:
    text = text.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text[1:-1]
        return str(value)
    return text


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _instructions(text: str, where: Path) -> list[tuple[str, str]]:
    """(COMMAND, argument) pairs; a triple-quoted argument may span lines."""
    found: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                if i >= len(lines):
                    raise VersionError(f'{where}: {command} has no closing """')
                body += "\n" + lines[i]
                i += 1
            rest = body[: body.index('"""')]
        else:
            rest = _value(rest)
        found.append((command.upper(), rest))
    return found


def read_modelfile(path: Path) -> Modelfile:
    """Parse `path`; `VersionError` names the file and the line it cannot use."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VersionError(f"{path}: cannot read the Modelfile ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise VersionError(f"{path}: neither a GGUF file nor a Modelfile") from None
    gguf: Path | None = None
    template = system = None
    parameters: dict[str, Any] = {}
    for command, arg in _instructions(text, path):
        if command not in SUPPORTED:
            raise VersionError(f"{path}: {command} is not supported here (only {SUPPORTED})")
        if command == "FROM":
            source = Path(arg).expanduser()
            gguf = source if source.is_absolute() else path.parent / source
            if gguf.suffix != ".gguf":
                raise VersionError(f"{path}: FROM {arg}: the persona model must be a .gguf file")
        elif command == "TEMPLATE":
            template = arg
        elif command == "SYSTEM":
            system = arg
        else:
            name, _, value = arg.partition(" ")
            if not value.strip():
                raise VersionError(f"{path}: PARAMETER {arg}: needs a name and a value")
            if name == "stop":
                parameters.setdefault("stop", []).append(_value(value))
            else:
                parameters[name] = _number(_value(value))
    if gguf is None:
        raise VersionError(f"{path}: no FROM line (the GGUF to serve)")
    return Modelfile(path, gguf, template, system, parameters)


def _starts_with_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def find_source(path: Path) -> tuple[Path, Modelfile | None]:
    """What `model install PATH` installs: (the GGUF, its Modelfile if any).

    PATH is the training output folder (`training/out/model`, with its Modelfile), a Modelfile,
    or a GGUF (with the Modelfile beside it when that one names it)."""
    if path.is_dir():
        if not (path / MODELFILE).is_file():
            raise VersionError(
                f"{path}: no {MODELFILE} in this folder (write it: python -m training modelfile)"
            )
        path = path / MODELFILE
    if not path.is_file():
        raise VersionError(f"{path}: no such file (a GGUF, a Modelfile, or the training output)")
    if path.suffix == ".gguf" or _starts_with_gguf(path):
        beside = path.parent / MODELFILE
        if beside.is_file():
            modelfile = read_modelfile(beside)
            if modelfile.gguf.resolve() == path.resolve():
                return path, modelfile
        return path, None
    modelfile = read_modelfile(path)
    if not modelfile.gguf.is_file():
        raise VersionError(f"{path}: FROM {modelfile.gguf}: no such GGUF file")
    return modelfile.gguf, modelfile
