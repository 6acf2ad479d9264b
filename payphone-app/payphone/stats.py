"""`payphone stats`: what the service did, from its own JSON log lines.

The service logs one JSON object per line (journald keeps them; `journalctl -u payphone -o cat`
gives them back). Calls, turns, personas, latency percentiles per stage, fallbacks with their
causes, and errors are all counted from the events the call loop already logs, so an operator
needs nothing but the journal. Lines that are not JSON (a native library's chatter) are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

# the turn's timestamps, in ms from the end of the caller's speech (payphone.call.turn.MARKS)
TURN_STAGES = ("transcript_ready", "first_token", "first_chunk", "first_audio", "reply_done")
STAGE_LABELS = {
    "transcript_ready": "speech end -> transcript",
    "first_token": "speech end -> first token",
    "first_chunk": "speech end -> first chunk",
    "first_audio": "voice to voice (first audio)",
    "reply_done": "speech end -> reply done",
    "hangup": "on-hook -> silence",
}
RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|hours|d|day|days)( ago)?$")
UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "hours": 3600}
UNIT_S |= {"d": 86400, "day": 86400, "days": 86400}
JOURNAL_COMMAND = ("journalctl", "-u", "payphone", "-o", "cat", "--no-pager")


class StatsError(Exception):
    """The log could not be read, or --since is not a time; the message says which and why."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`today`, `yesterday`, `2h` / `-30m` / `7 days ago`, or an ISO date/time (UTC if no zone)."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return midnight
    if value == "yesterday":
        return midnight - timedelta(days=1)
    match = RELATIVE.match(value)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * UNIT_S[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StatsError(
            f"--since {text!r}: not a time; use today, yesterday, 2h, 30m, 7d, "
            "or 2026-11-22 / 2026-11-22T18:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_file(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            yield from lines
    except OSError as exc:
        raise StatsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_journal(since: datetime | None) -> Iterator[str]:
    """The service's lines from journald (on the Pi)."""
    if shutil.which("journalctl") is None:
        raise StatsError("no journalctl here: give the log with --file PATH")
    command = list(JOURNAL_COMMAND)
    if since is not None:
        command += ["--since", since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = proc.stderr.strip() or f"exit code {proc.returncode}"
        raise StatsError(f"journalctl failed: {why} (is the user in group systemd-journal?)")
    yield from proc.stdout.splitlines()


def parse_events(
    lines: Iterable[str], since: datetime | None = None
) -> tuple[list[dict[str, Any]], int]:
    """JSON events (at or after `since`), and how many lines were not JSON events."""
    events: list[dict[str, Any]] = []
    skipped = 0
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(event, dict) or "event" not in event:
            skipped += 1
            continue
        if since is not None and not _at_or_after(event, since):
            continue
        events.append(event)
    return events, skipped


def _at_or_after(event: dict[str, Any], since: datetime) -> bool:
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return True  # no time on it: keep it rather than hide it
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return True
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) >= since


@dataclass
class Summary:
    """Everything `payphone stats` prints."""

    first: str | None = None
    last: str | None = None
    starts: int = 0
    calls: int = 0
    calls_ended: int = 0
    turns: int = 0
    no_speech: int = 0
    personas: Counter[str] = field(default_factory=Counter)
    persona_turns: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    warnings: Counter[str] = field(default_factory=Counter)
    skipped_lines: int = 0

    def percentiles(self) -> dict[str, dict[str, float | int]]:
        """p50 / p95 / max and the count for each stage with data."""
        out: dict[str, dict[str, float | int]] = {}
        for stage in (*TURN_STAGES, "hangup"):
            values = self.latencies.get(stage)
            if values:
                p50, p95 = np.percentile(values, [50, 95])
                out[stage] = {
                    "n": len(values),
                    "p50": round(float(p50), 1),
                    "p95": round(float(p95), 1),
                    "max": round(max(values), 1),
                }
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.first,
            "to": self.last,
            "service_starts": self.starts,
            "calls": self.calls,
            "calls_ended": self.calls_ended,
            "turns": self.turns,
            "no_speech": self.no_speech,
            "personas": dict(self.personas.most_common()),
            "persona_turns": dict(self.persona_turns.most_common()),
            "latency_ms": self.percentiles(),
            "fallbacks": dict(self.fallbacks.most_common()),
            "errors": dict(self.errors.most_common()),
            "warnings": dict(self.warnings.most_common()),
            "skipped_lines": self.skipped_lines,
        }


def summarize(events: Iterable[dict[str, Any]], skipped: int = 0) -> Summary:
    """Count calls, turns, personas, latencies, fallbacks and errors from the events."""
    s = Summary(skipped_lines=skipped)
    persona_of: dict[str, str] = {}  # call_id -> the persona on the line now
    seen: dict[str, set[str]] = {}  # call_id -> personas heard in that call

    def on_persona(call_id: str, persona: Any) -> None:
        if isinstance(persona, str) and persona:
            persona_of[call_id] = persona
            if persona not in seen.setdefault(call_id, set()):
                seen[call_id].add(persona)
                s.personas[persona] += 1

    for e in events:
        name = str(e.get("event"))
        call_id = str(e.get("call_id", ""))
        stamp = e.get("timestamp")
        if isinstance(stamp, str):
            s.first = s.first or stamp
            s.last = stamp
        if name == "service_ready":
            s.starts += 1
        elif name == "call_started":
            s.calls += 1
            on_persona(call_id, e.get("persona"))
        elif name == "persona_switch":
            on_persona(call_id, e.get("persona"))
        elif name == "call_ended":
            s.calls_ended += 1
            _add(s.latencies, "hangup", e.get("hangup_ms"))
        elif name == "turn_done":
            s.turns += 1
            s.persona_turns[persona_of.get(call_id, "(unknown)")] += 1
            for stage in TURN_STAGES:
                _add(s.latencies, stage, e.get(f"{stage}_ms"))
            cause = e.get("cause")
            if e.get("fallback") and isinstance(cause, str) and cause.startswith("error:"):
                s.fallbacks[cause] += 1  # a broken stage: the apology (llm causes come below)
        elif name == "no_speech":
            s.no_speech += 1
        elif name == "llm_fallback":
            s.fallbacks[str(e.get("cause") or "unknown")] += 1
        level = str(e.get("level", "")).lower()
        if level in ("error", "critical"):
            s.errors[name] += 1
            s.error_examples[name] = _example(e)
        elif level == "warning" and name != "llm_fallback":
            s.warnings[name] += 1
    return s


def _add(latencies: dict[str, list[float]], stage: str, value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        latencies.setdefault(stage, []).append(float(value))


def _example(event: dict[str, Any]) -> str:
    for key in ("error", "problem", "detail", "exception", "cause"):
        if event.get(key):
            text = str(event[key]).strip().splitlines()
            return text[-1][:160] if text else ""
    return ""


def render(s: Summary) -> str:
    """The summary as the operator reads it."""
    if not any((s.starts, s.calls, s.turns, s.errors, s.warnings)):
        return "no payphone events in this log (or in this time range)"
    lines = [
        f"log from {s.first or '?'} to {s.last or '?'}",
        f"service starts: {s.starts}",
        f"calls: {s.calls} ({s.calls_ended} ended)   turns: {s.turns}   "
        f"no speech heard: {s.no_speech}",
    ]
    if s.personas:
        used = ", ".join(
            f"{p} {n} call(s) / {s.persona_turns.get(p, 0)} turn(s)"
            for p, n in s.personas.most_common()
        )
        lines.append(f"personas: {used}")
    table = s.percentiles()
    if table:
        lines.append(f"{'latency (ms)':<30} {'n':>4} {'p50':>8} {'p95':>8} {'max':>8}")
        for stage, row in table.items():
            lines.append(
                f"  {STAGE_LABELS[stage]:<28} {row['n']:>4} {row['p50']:>8.1f} "
                f"{row['p95']:>8.1f} {row['max']:>8.1f}"
            )
    total = sum(s.fallbacks.values())
    causes = ", ".join(f"{c} {n}" for c, n in s.fallbacks.most_common())
    lines.append(f"fallbacks: {total}" + (f" ({causes})" if causes else ""))
    lines.append(f"errors: {sum(s.errors.values())}")
    for name, n in s.errors.most_common():
        example = s.error_examples.get(name)
        lines.append(f"  {name} x{n}" + (f": {example}" if example else ""))
    if s.warnings:
        lines.append("warnings: " + ", ".join(f"{w} x{n}" for w, n in s.warnings.most_common()))
    if s.skipped_lines:
        lines.append(f"({s.skipped_lines} line(s) that are not JSON events skipped)")
    return "\n".join(lines)


def load_summary(file: Path | None, since_text: str | None) -> Summary:
    """Read the file (or the journal), keep events since `since_text`, summarise."""
    since = parse_since(since_text) if since_text else None
    lines = read_file(file) if file is not None else read_journal(since)
    events, skipped = parse_events(lines, since)
    return summarize(events, skipped)


def main(file: Path | None, since: str | None, as_json: bool = False) -> int:
    """Print the summary (or JSON); 0, or 1 with one line on stderr when the log is unreadable."""
    try:
        summary = load_summary(file, since)
    except StatsError as exc:
        print(f"payphone stats: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict(), indent=2) if as_json else render(summary))
    return 0
