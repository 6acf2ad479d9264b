"""structlog set-up: JSON lines for journald, a readable console on a terminal.

Under systemd each line starts with its syslog priority (`<3>` for an error, sd-daemon(3)):
journald takes the prefix off and files the line at that priority, so `journalctl -p err` works.

Every event carries the phone's `phone_id` (`set_phone_id`, from the setting; a task may bind
its own with `bind_call(phone_id=...)`, as `bench fleet` does for its simulated phones), so the
logs of several phones and of a shared model host can be told apart.

Context such as `call_id`, `persona` and `turn` is bound with `bind_call` and rides along on
every event logged inside that call's task (structlog's contextvars are per asyncio task).
Timings go in as numbers of milliseconds (`*_ms` keys), so `payphone stats` can aggregate them.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def wants_json(fmt: LogFormat, stream: TextIO) -> bool:
    """JSON unless a person is watching: under systemd stdout is not a TTY."""
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


# structlog method names (and stdlib level names) -> syslog priorities
JOURNAL_PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
INFO_PRIORITY = 6


def writes_to_journal(stream: TextIO) -> bool:
    """Whether `stream` is journald's: systemd names that stream in $JOURNAL_STREAM (device:inode),
    so output redirected elsewhere by the service itself gets no prefixes."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


_phone_id: str | None = None


def set_phone_id(phone_id: str | None) -> None:
    """Which phone this process is (`Settings.phone_id`): added to every event from now on."""
    global _phone_id
    _phone_id = phone_id


def current_phone_id() -> str | None:
    """The phone id set with `set_phone_id`, None before settings were read."""
    return _phone_id


def add_phone_id(_logger: Any, _method_name: str, event: Any) -> Any:
    """Put `phone_id` on the event unless the task bound its own."""
    if _phone_id is not None:
        event.setdefault("phone_id", _phone_id)
    return event


def journal_priority_prefix(_logger: Any, method_name: str, line: Any) -> Any:
    """After the renderer: `<N>` in front of the rendered line, N from the level."""
    return f"<{JOURNAL_PRIORITIES.get(method_name, INFO_PRIORITY)}>{line}"


def setup_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog (and route stdlib logging of libraries through the same renderer)."""
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if wants_json(fmt, out)
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_phone_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelName(level.upper())
    rendered: list[Any] = [renderer]
    if writes_to_journal(out):
        rendered.append(journal_priority_prefix)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            *rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *rendered,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    """A lazy structlog logger (safe at import time); `name` becomes the `component` key."""
    return structlog.get_logger() if name is None else structlog.get_logger(component=name)


@contextmanager
def bind_call(**context: Any) -> Iterator[None]:
    """Bind call context (call_id, persona, turn) for everything logged inside the block."""
    tokens = structlog.contextvars.bind_contextvars(**context)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded for logs."""
    return round(seconds * 1000.0, 1)
