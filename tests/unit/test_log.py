"""Logs: JSON lines off a terminal, with call context and numeric timings."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from payphone.log import bind_call, get_logger, ms, setup_logging


def test_json_lines_carry_call_context_and_timings() -> None:
    stream = io.StringIO()
    setup_logging("info", "auto", stream)  # a StringIO is not a TTY: JSON
    log = get_logger("test")
    with bind_call(call_id="c-1", persona="operator", turn=2):
        log.info("turn_done", first_audio_ms=ms(0.4321))
    log.info("after_call")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "turn_done"
    assert first["call_id"] == "c-1"
    assert first["persona"] == "operator"
    assert first["turn"] == 2
    assert first["first_audio_ms"] == 432.1
    assert "timestamp" in first
    assert first["level"] == "info"
    assert "call_id" not in second


def test_level_filters_debug() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    get_logger().debug("hidden")
    assert stream.getvalue() == ""


def test_console_format_is_not_json() -> None:
    stream = io.StringIO()
    setup_logging("debug", "console", stream)
    get_logger().info("hello", call_id="x")
    text = stream.getvalue()
    assert "hello" in text
    assert not text.lstrip().startswith("{")


def test_loggers_made_at_import_time_follow_later_configuration() -> None:
    early = get_logger("early")  # as modules do at import, before setup_logging runs
    stream = io.StringIO()
    setup_logging("warning", "json", stream)
    early.info("quiet")
    early.warning("loud")
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["component"] == "early"


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TextIO]:
    """A real file standing in for journald's stream: $JOURNAL_STREAM names its device:inode."""
    stream = (tmp_path / "journal").open("w")
    info = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    yield stream
    stream.close()
    setup_logging("info", "json", io.StringIO())  # no later test logs into a closed file


def test_under_journald_each_line_carries_its_syslog_priority(
    journal: TextIO, tmp_path: Path
) -> None:
    stream = journal
    setup_logging("debug", "auto", stream)  # what the service does: JSON, journald's stream
    log = get_logger("test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("x")
    log.critical("c")
    logging.getLogger("some.library").warning("from a library")  # stdlib logging, same prefixes
    stream.close()

    lines = (tmp_path / "journal").read_text().splitlines()
    priorities = [line[: line.index(">") + 1] for line in lines]
    assert priorities == ["<7>", "<6>", "<4>", "<3>", "<3>", "<2>", "<4>"], lines
    events = [json.loads(line.split(">", 1)[1]) for line in lines]  # what journald keeps
    assert [e["event"] for e in events] == ["d", "i", "w", "e", "x", "c", "from a library"]
    assert "ValueError: boom" in events[4]["exception"]


def test_no_priority_prefix_off_journald(journal: TextIO, tmp_path: Path) -> None:
    other = io.StringIO()  # e.g. `payphone run 2>log.txt` by hand inside a systemd session
    setup_logging("info", "json", other)
    get_logger().error("e")
    assert json.loads(other.getvalue())["event"] == "e"

    elsewhere = (tmp_path / "redirected").open("w")  # a real file, but not journald's
    setup_logging("info", "json", elsewhere)
    get_logger().error("e")
    elsewhere.close()
    assert (tmp_path / "redirected").read_text().startswith("{")
