"""What the status page shows, collected from the call loop's own callbacks, in memory only.

The board is a consumer: `build_phone(on_call=board.on_call, on_state=board.on_state)` hands it
each new call and each state change, on the event loop. It reads the call's `TurnRecord`s as they
appear in `call.log.turns` (a cut-off turn is logged just after the hang-up, so ended calls are
swept again on the next tick) and keeps the last `keep_calls` calls. Transcripts are personal
data: with `show_transcripts=False` they are never copied out of the call at all.

Every change bumps `version` and wakes `wait_change`, so the page's event stream sends an update
within one loop turn of the state change: just `now()` when only the state moved, the whole
snapshot when calls, turns or health changed (`data_version`), so a state change costs the same
however many calls are kept.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from payphone.call.events import CallState
from payphone.call.session import Call
from payphone.call.turn import MARKS, TurnRecord
from payphone.status.health import Health
from payphone.status.metrics import PhoneMetrics

IDLE = "idle"
STATE_WORDS = {
    IDLE: "Idle: handset on the hook",
    CallState.DIAL_TONE.value: "Off the hook: dial tone",
    CallState.GREETING.value: "Greeting the caller",
    CallState.LISTENING.value: "Listening",
    CallState.THINKING.value: "Thinking",
    CallState.SPEAKING.value: "Speaking",
    CallState.DIALING.value: "Caller dialling",
    CallState.RINGBACK.value: "Ringing a persona",
    CallState.ANNOUNCEMENT.value: "Announcement",
    CallState.GOODBYE.value: "Saying goodbye",
    CallState.HOWLER.value: "Off-hook howler (caller should hang up)",
}
CHART_WINDOW = 20  # turns in each rolling p50/p95
CHART_POINTS = 500
SETTLE_S = 5.0  # an ended call is swept this long for its cut-off turn, then let go


@dataclass
class CallView:
    """One call as the page shows it. `call` is dropped once the call has settled."""

    call_id: str
    started: float  # wall clock
    call: Call | None
    ended: float | None = None
    personas: list[str] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    counted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "started": self.started,
            "ended": self.ended,
            "personas": self.personas,
            "turns": self.turns,
        }


def percentile(values: collections.deque[float], q: float) -> float:
    return round(float(np.percentile(np.fromiter(values, dtype=float), q)), 1)


class LatencyChart:
    """Rolling p50/p95 of voice-to-voice and first audio, one point per answered turn."""

    def __init__(self) -> None:
        self.points: collections.deque[tuple[float, ...]] = collections.deque(maxlen=CHART_POINTS)
        self._v2v: collections.deque[float] = collections.deque(maxlen=CHART_WINDOW)
        self._first: collections.deque[float] = collections.deque(maxlen=CHART_WINDOW)

    def add(self, at: float, voice_to_voice_ms: float, first_audio_ms: float | None) -> None:
        self._v2v.append(voice_to_voice_ms)
        if first_audio_ms is not None:
            self._first.append(first_audio_ms)
        first = (percentile(self._first, 50), percentile(self._first, 95)) if self._first else ()
        v2v = (percentile(self._v2v, 50), percentile(self._v2v, 95))
        self.points.append((round(at, 3), *v2v, *(first or (float("nan"),) * 2)))

    def as_dict(self) -> dict[str, list[float | None]]:
        names = ("t", "v2v_p50", "v2v_p95", "first_p50", "first_p95")
        columns: dict[str, list[float | None]] = {name: [] for name in names}
        for point in self.points:
            for name, value in zip(names, point, strict=True):
                columns[name].append(None if value != value else value)  # NaN -> gap
        return columns


class StatusBoard:
    """The phone now, the last calls, latencies, fallbacks and health; see the module doc."""

    def __init__(
        self,
        keep_calls: int = 20,
        *,
        show_transcripts: bool = True,
        metrics: PhoneMetrics | None = None,
    ) -> None:
        self.keep_calls = keep_calls
        self.show_transcripts = show_transcripts
        self.metrics = metrics or PhoneMetrics()
        self.calls: collections.deque[CallView] = collections.deque(maxlen=keep_calls)
        self.state = IDLE
        self.state_since = time.time()
        self.current: CallView | None = None
        self.chart = LatencyChart()
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.totals = {"calls": 0, "turns": 0, "interruptions": 0, "fallbacks": 0}
        self.health: Health | None = None
        self.version = 0  # any change
        self.data_version = 0  # a change to more than `now()`: calls, turns, health
        self._changed = asyncio.Event()
        self.metrics.state.state(IDLE)

    # -- the call loop's callbacks (on the event loop; cheap, never raise into the call) --------

    def on_call(self, call: Call) -> None:
        self.sweep()
        view = CallView(call.call_id, time.time(), call, personas=[call.persona.name])
        self.calls.appendleft(view)
        self.current = view
        self.totals["calls"] += 1
        self.metrics.calls.inc()
        self._bump(data=True)

    def on_state(self, state: CallState) -> None:
        view = self.current
        data = False  # only the state moved, unless the call took a new persona or ended
        if view is not None and view.call is not None:
            name = view.call.persona.name
            if name not in view.personas:
                view.personas.append(name)
                data = True
        if state is CallState.ENDED:
            if view is not None:
                view.ended = time.time()
                data = True
            self.current = None
        self.state = IDLE if state is CallState.ENDED else state.value
        self.state_since = time.time()
        self.metrics.state.state(self.state)
        self.sweep()
        self._bump(data=data)

    def set_health(self, health: Health) -> None:
        changed = self.health is None or health.line != self.health.line
        self.health = health
        if changed:
            self._bump(data=True)

    # -- turns ----------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Count turns that appeared since the last sweep; let go of settled calls."""
        now = time.time()
        found = False
        for view in self.calls:
            call = view.call
            if call is None:
                continue
            records = call.log.turns
            while view.counted < len(records):
                view.turns.append(self._turn(records[view.counted], len(view.turns) + 1, call))
                view.counted += 1
                found = True
            if view.ended is not None and now - view.ended > SETTLE_S:
                view.call = None  # its audio buffers and history are not ours to keep
        if found:
            self._bump(data=True)

    def _turn(self, rec: TurnRecord, number: int, call: Call) -> dict[str, Any]:
        lat = rec.latency_ms
        at = time.time() - (time.monotonic() - rec.speech_end)
        persona = next((p.name for p in call.personas if p.id == rec.persona), rec.persona)
        v2v, ready = lat.get("first_audio"), lat.get("transcript_ready")
        first_audio = round(v2v - ready, 1) if v2v is not None and ready is not None else None
        token = lat.get("first_token")
        first_token = round(token - ready, 1) if token is not None and ready is not None else None
        turn: dict[str, Any] = {
            "n": number,
            "at": round(at, 3),
            "persona": persona,
            "fallback": rec.cause if rec.fallback else None,
            "interrupted": rec.interrupted,
            "filler": rec.filler,
            "voice_to_voice_ms": v2v,
            "first_audio_ms": first_audio,
            "first_token_ms": first_token,
            "latency_ms": {name: lat.get(name) for name in MARKS},
        }
        if self.show_transcripts:
            turn["heard"], turn["reply"] = rec.heard, rec.reply
        self._count(rec, v2v, first_audio, first_token, at)
        return turn

    def _count(
        self,
        rec: TurnRecord,
        v2v: float | None,
        first_audio: float | None,
        first_token: float | None,
        at: float,
    ) -> None:
        m = self.metrics
        self.totals["turns"] += 1
        m.turns.labels(rec.persona).inc()
        if rec.fallback:
            cause = rec.cause or "unknown"
            self.fallbacks[cause] += 1
            self.totals["fallbacks"] += 1
            m.fallbacks.labels(cause).inc()
        if rec.interrupted:
            self.totals["interruptions"] += 1
            m.interruptions.inc()
        if v2v is not None:
            m.voice_to_voice.observe(v2v / 1000)
            self.chart.add(at, v2v, first_audio)
        if first_audio is not None:
            m.first_audio.observe(first_audio / 1000)
        if first_token is not None:
            m.first_token.observe(first_token / 1000)

    # -- readers --------------------------------------------------------------------------------

    def now(self) -> dict[str, Any]:
        view = self.current
        persona = view.call.persona.name if view is not None and view.call is not None else None
        return {
            "state": self.state,
            "words": STATE_WORDS.get(self.state, self.state),
            "persona": persona,
            "call_id": view.call_id if view is not None else None,
            "since": round(self.state_since, 3),
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (a copy: the page never holds live objects)."""
        return {
            "now": self.now(),
            "health": self.health.as_dict() if self.health is not None else None,
            "calls": [view.as_dict() for view in self.calls],
            "chart": self.chart.as_dict(),
            "fallbacks": dict(self.fallbacks.most_common()),
            "totals": dict(self.totals),
            "transcripts_shown": self.show_transcripts,
        }

    async def wait_change(self, seen: int, timeout_s: float) -> int:
        """Return the version once it differs from `seen` (or after `timeout_s`)."""
        if self.version == seen:
            event = self._changed
            try:
                async with asyncio.timeout(timeout_s):
                    await event.wait()
            except TimeoutError:
                pass
        return self.version

    def touch(self) -> None:
        """Something the page shows changed outside the board (e.g. the model's digest)."""
        self._bump(data=True)

    def wake(self) -> None:
        """Wake every `wait_change` now (they return the version as it is)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _bump(self, data: bool = False) -> None:
        self.version += 1
        if data:
            self.data_version += 1
        self.wake()
