"""Turns settings failures into one readable line per problem.

An installer edits `/etc/payphone/payphone.toml` or sets `PAYPHONE_...` variables; an error must
name the setting the way they wrote it, the value, and what is allowed, with no traceback.

`payphone.config.load_settings` hands `explain` its settings class, whose fields, env prefix and
nesting delimiter name the settings; so this module does not import `payphone.config`.
"""

from __future__ import annotations

import os
import tomllib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from dotenv import dotenv_values
from pydantic import AnyHttpUrl, BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings
from pydantic_settings import SettingsError as PydanticSettingsError


class SettingsError(Exception):
    """Settings could not be loaded; `problems` holds one readable line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def explain(
    exc: Exception, settings_cls: type[BaseSettings], toml_path: Path | None, env_path: Path
) -> SettingsError:
    """Map whatever loading `settings_cls` raised onto readable problem lines."""
    if isinstance(exc, SettingsError):
        return exc
    if isinstance(exc, ValidationError):
        where = _Sources(settings_cls, toml_path, env_path)
        return SettingsError([_describe(err, where) for err in exc.errors()])
    if isinstance(exc, tomllib.TOMLDecodeError):
        return SettingsError([f"config file {toml_path}: not valid TOML: {exc}"])
    if isinstance(exc, PydanticSettingsError):
        return SettingsError([_reword_source_error(str(exc))])
    if isinstance(exc, OSError):
        return SettingsError([f"config file {toml_path}: cannot read: {exc.strerror}"])
    return SettingsError([f"settings: {exc}"])


def _reword_source_error(message: str) -> str:
    # e.g. 'error parsing value for field "keypad" from source "EnvSettingsSource"'
    return f"settings: {message} (lists and groups given as variables must be JSON)"


class _Sources:
    """Where each setting came from, so errors can use the user's own spelling."""

    def __init__(
        self, settings_cls: type[BaseSettings], toml_path: Path | None, env_path: Path
    ) -> None:
        self.settings_cls = settings_cls
        self.env_prefix = settings_cls.model_config.get("env_prefix") or ""
        self.env_delimiter = settings_cls.model_config.get("env_nested_delimiter") or ""
        self.toml_path = toml_path
        self.toml: dict[str, Any] = {}
        if toml_path is not None and toml_path.is_file():
            self.toml = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        self.env_path = env_path
        self.dotenv = {k.upper(): v for k, v in dotenv_values(env_path).items()}
        self.environ = {k.upper(): v for k, v in os.environ.items()}

    def name(self, loc: tuple[str | int, ...]) -> str:
        """The setting's name as the user wrote it: env variable, .env key, or TOML key."""
        keys = [str(part) for part in loc if isinstance(part, str)]
        for depth in range(len(keys), 0, -1):
            env_name = self.env_prefix + self.env_delimiter.join(keys[:depth]).upper()
            if env_name in self.environ:
                return env_name
            if env_name in self.dotenv:
                return f"{env_name} (in {self.env_path})"
        if _dig(self.toml, keys) is not None:
            table, key = ".".join(keys[:-1]), keys[-1]
            section = f"[{table}] " if table else ""
            return f"{section}{key} (in {self.toml_path})"
        return ".".join(keys)


def _dig(data: Mapping[str, Any], keys: list[str]) -> Any:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _describe(err: Mapping[str, Any], where: _Sources) -> str:
    loc = tuple(err["loc"])
    name = where.name(loc)
    root = where.settings_cls
    if err["type"] == "extra_forbidden":
        return f"{name}: unknown setting; allowed here: {_known_keys(root, loc[:-1])}"
    if err["type"] == "value_error" and _field_at(root, loc)[0] is not None:
        # a rule across a group's settings: its message names them
        return f"{name}: {err.get('ctx', {}).get('error', err['msg'])}"
    value = err.get("input")
    allowed = _allowed(root, loc)
    hint = f"; allowed: {allowed}" if allowed else ""
    return f"{name}: {value!r} is not valid ({err['msg']}){hint}"


def _field_at(
    root: type[BaseModel], loc: tuple[str | int, ...]
) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    model: type[BaseModel] | None = root
    info: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None, None
        annotation = info.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return model, info


def _known_keys(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    model: type[BaseModel] | None = root if not loc else _field_at(root, loc)[0]
    if model is None:
        return "(none)"
    return ", ".join(model.model_fields)


def _allowed(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    _, info = _field_at(root, loc)
    if info is None:
        return ""
    annotation, metadata = info.annotation, list(info.metadata)
    if loc and isinstance(loc[-1], int) and get_origin(annotation) is list:
        # an element of a list setting: describe the element type
        annotation, metadata = _unwrap(get_args(annotation)[0])
    return _describe_type(annotation, metadata)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    args = get_args(annotation)
    if args and hasattr(annotation, "__metadata__"):
        extra: list[Any] = []
        for item in annotation.__metadata__:
            extra.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        return args[0], extra
    return annotation, []


def _describe_type(annotation: Any, metadata: list[Any]) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(
            repr(v) if isinstance(v, str) else str(v) for v in get_args(annotation)
        )
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        described = " or ".join(_describe_type(a, metadata) for a in parts)
        return described + (" (or empty)" if len(parts) < len(get_args(annotation)) else "")
    if origin is list:
        inner, inner_meta = _unwrap(get_args(annotation)[0])
        return f"a list of {_describe_type(inner, inner_meta)}"
    if annotation is bool:
        return "true or false"
    if annotation is AnyHttpUrl:
        return "an http(s) URL such as http://10.10.10.11:11434"
    if annotation is Path:
        return "a file system path"
    kind = {int: "an integer", float: "a number", str: "text"}.get(annotation, str(annotation))
    bounds = _bounds(metadata)
    return f"{kind} {bounds}".strip()


def _bounds(metadata: list[Any]) -> str:
    low = high = ""
    extras: list[str] = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt}"
        elif isinstance(item, annotated_types.MinLen) and item.min_length:
            extras.append("not empty")
        elif getattr(item, "pattern", None):
            extras.append(f"matching {item.pattern}")
    if low.startswith("≥") and high.startswith("≤"):
        return f"from {low[2:]} to {high[2:]}"
    return " and ".join(part for part in (low, high, *extras) if part)
