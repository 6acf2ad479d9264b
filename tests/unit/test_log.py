"""Logs: JSON lines off a terminal, with call context and numeric timings."""

from __future__ import annotations

import io
import json

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
