"""`payphone stats` on a recorded service log: what an operator reads back from the journal.

The log below is what `journalctl -u payphone -o cat` gives: the service's JSON lines (the
events and fields the call loop logs), with a native library's chatter mixed in.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from payphone.log import bind_call, get_logger, setup_logging
from payphone.stats import (
    StatsError,
    load_summary,
    parse_events,
    parse_since,
    render,
    summarize,
)
from tests.helpers import REPO

DAY1 = "2026-11-21T"
DAY2 = "2026-11-22T"


def ev(stamp: str, event: str, level: str = "info", **fields: Any) -> str:
    return json.dumps(
        {"component": "x", **fields, "event": event, "level": level, "timestamp": stamp + "Z"}
    )


def turn(stamp: str, call_id: str, first_audio: float, **extra: Any) -> str:
    fields: dict[str, Any] = {
        "call_id": call_id,
        "heard": "what time is it",
        "reply": "Half past nine, dear.",
        "fallback": False,
        "cause": None,
        "transcript_ready_ms": first_audio / 4,
        "first_token_ms": first_audio / 2,
        "first_chunk_ms": first_audio * 0.75,
        "first_audio_ms": first_audio,
        "reply_done_ms": first_audio * 3,
    }
    fields.update(extra)
    return ev(stamp, "turn_done", **fields)


RECORDED = [
    # yesterday: one start, one call with one turn
    ev(DAY1 + "20:00:00.000000", "service_ready", load_ms=9000.0, lines=36),
    ev(DAY1 + "20:05:00.000000", "call_started", call_id="A", persona="operator"),
    turn(DAY1 + "20:05:10.000000", "A", 5000.0),
    ev(DAY1 + "20:05:20.000000", "call_ended", call_id="A", turns=1, hangup_ms=40.0),
    # today: a restart, two calls, a persona switch, a fallback, a broken stage
    "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear",
    ev(DAY2 + "08:00:00.000000", "service_ready", load_ms=8000.0, lines=36),
    ev(DAY2 + "08:00:00.100000", "persona_file_problem", "error", problem="pirate.toml: key"),
    ev(DAY2 + "09:00:00.000000", "call_started", call_id="B", persona="operator"),
    turn(DAY2 + "09:00:05.000000", "B", 600.0),
    ev(DAY2 + "09:00:06.000000", "persona_switch", call_id="B", persona="grandma_mae"),
    turn(DAY2 + "09:00:15.000000", "B", 700.0),
    turn(DAY2 + "09:00:25.000000", "B", 800.0),
    ev(DAY2 + "09:00:30.000000", "no_speech", call_id="B", stt_ms=120.0),
    ev(
        DAY2 + "09:00:40.000000",
        "llm_fallback",
        "warning",
        call_id="B",
        cause="stall_first_token",
        detail="no token within 8 s",
        spoken=0,
    ),
    turn(
        DAY2 + "09:00:41.000000",
        "B",
        900.0,
        fallback=True,
        cause="stall_first_token",
        first_token_ms=None,
    ),
    ev(DAY2 + "09:01:00.000000", "call_ended", call_id="B", turns=4, hangup_ms=20.0),
    ev(DAY2 + "10:00:00.000000", "call_started", call_id="C", persona="operator"),
    ev(
        DAY2 + "10:00:09.000000",
        "turn_failed",
        "error",
        call_id="C",
        error="RuntimeError('onnx session died')",
        exception="Traceback (most recent call last):\n  ...\nRuntimeError: onnx session died",
    ),
    turn(DAY2 + "10:00:09.500000", "C", 2000.0, fallback=True, cause="error:RuntimeError"),
    ev(DAY2 + "10:00:10.000000", "audio_input_backlog", "warning", frames=64, backlog_ms=1920),
    ev(DAY2 + "10:00:30.000000", "call_ended", call_id="C", turns=1, hangup_ms=30.0),
    "",
    "Traceback (most recent call last):",
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "payphone.log"
    path.write_text("\n".join(RECORDED) + "\n")
    return path


def test_today_s_calls_turns_personas_latencies_fallbacks_and_errors(log_file: Path) -> None:
    s = load_summary(log_file, "2026-11-22")
    d = s.as_dict()

    assert d["service_starts"] == 1
    assert (d["calls"], d["calls_ended"], d["turns"], d["no_speech"]) == (2, 2, 5, 1)
    assert d["personas"] == {"operator": 2, "grandma_mae": 1}
    assert d["persona_turns"] == {"grandma_mae": 3, "operator": 2}
    audio = d["latency_ms"]["first_audio"]
    # numpy's linear percentiles of 600, 700, 800, 900, 2000
    assert audio == {"n": 5, "p50": 800.0, "p95": 1780.0, "max": 2000.0}
    assert d["latency_ms"]["first_token"]["n"] == 4  # the stalled turn has no first token
    assert d["latency_ms"]["hangup"] == {"n": 2, "p50": 25.0, "p95": 29.5, "max": 30.0}
    assert d["fallbacks"] == {"stall_first_token": 1, "error:RuntimeError": 1}
    assert d["errors"] == {"persona_file_problem": 1, "turn_failed": 1}
    assert d["warnings"] == {"audio_input_backlog": 1}
    assert d["skipped_lines"] == 2  # the ALSA line and the stray traceback line

    text = render(s)
    assert "calls: 2 (2 ended)   turns: 5   no speech heard: 1" in text
    assert "personas: operator 2 call(s) / 2 turn(s), grandma_mae 1 call(s) / 3 turn(s)" in text
    assert "latency (ms)                      n      p50      p95      max" in text
    assert "  voice to voice (first audio)    5    800.0   1780.0   2000.0" in text
    assert "fallbacks: 2 (stall_first_token 1, error:RuntimeError 1)" in text
    assert "  turn_failed x1: RuntimeError('onnx session died')" in text
    assert "  persona_file_problem x1: pirate.toml: key" in text


def test_the_whole_log_without_since(log_file: Path) -> None:
    d = load_summary(log_file, None).as_dict()

    assert (d["service_starts"], d["calls"], d["turns"]) == (2, 3, 6)
    assert d["from"] == DAY1 + "20:00:00.000000Z"
    assert d["to"] == DAY2 + "10:00:30.000000Z"
    assert d["latency_ms"]["first_audio"]["max"] == 5000.0


def test_since_understands_what_operators_type() -> None:
    now = datetime(2026, 11, 22, 18, 30, tzinfo=UTC)

    assert parse_since("today", now) == datetime(2026, 11, 22, tzinfo=UTC)
    assert parse_since("yesterday", now) == datetime(2026, 11, 21, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2026, 11, 22, 16, 30, tzinfo=UTC)
    assert parse_since("-30m", now) == datetime(2026, 11, 22, 18, 0, tzinfo=UTC)
    assert parse_since("7 days ago", now) == datetime(2026, 11, 15, 18, 30, tzinfo=UTC)
    assert parse_since("2026-11-22T10:00", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    with pytest.raises(StatsError, match="--since 'last tuesday': not a time"):
        parse_since("last tuesday", now)


def test_the_real_logger_s_lines_are_read_back() -> None:
    """The service's own structlog JSON set-up, not a hand-written imitation of it."""
    buffer = io.StringIO()
    setup_logging("info", "json", stream=buffer)
    log = get_logger("turn")
    with bind_call(call_id="20261122-090000-abc123"):
        log.info("call_started", persona="operator")
        log.info("turn_done", fallback=False, cause=None, first_audio_ms=812.5)
        log.error("call_task_stuck")
    setup_logging("warning")

    events, skipped = parse_events(buffer.getvalue().splitlines())
    s = summarize(events, skipped)

    assert (s.calls, s.turns, skipped) == (1, 1, 0)
    assert s.persona_turns == {"operator": 1}
    assert s.latencies["first_audio"] == [812.5]
    assert s.errors == {"call_task_stuck": 1}


def test_an_empty_range_and_an_unreadable_file(log_file: Path, tmp_path: Path) -> None:
    assert render(load_summary(log_file, "2030-01-01")).startswith("no payphone events")
    with pytest.raises(StatsError, match=r"nope\.log: cannot read: No such file"):
        load_summary(tmp_path / "nope.log", None)


def test_the_command_prints_json_and_fails_cleanly(log_file: Path, tmp_path: Path) -> None:
    code = "import sys; from pathlib import Path; from payphone.stats import main; "
    code += "sys.exit(main(Path(sys.argv[1]), sys.argv[2] or None, sys.argv[3] == 'json'))"

    def stats(path: Path, since: str, fmt: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, str(path), since, fmt],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )

    good = stats(log_file, "2026-11-22", "json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["calls"] == 2
    bad = stats(tmp_path / "nope.log", "", "text")
    assert bad.returncode == 1
    assert bad.stderr.startswith("payphone stats: ")
    assert "Traceback" not in bad.stderr
