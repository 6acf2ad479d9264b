"""structlog set-up: JSON lines for journald, a readable console on a terminal.

Context such as `call_id`, `persona` and `turn` is bound with `bind_call` and rides along on
every event logged inside that call's task (structlog's contextvars are per asyncio task).
Timings go in as numbers of milliseconds (`*_ms` keys), so `payphone stats` can aggregate them.
"""

from __future__ import annotations

import logging
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
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
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
                renderer,
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
