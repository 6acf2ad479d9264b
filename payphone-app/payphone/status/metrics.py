"""`/metrics`: the phone's counters and latency histograms in Prometheus' text format.

Each page has its own registry (tests build several phones in one process), with
prometheus-client's process collector in it for RSS and CPU time. Everything is updated on the
event loop by the status board when a call starts, a turn ends or health changes; rendering
reads only these in-memory values (and /proc for the process figures).

`payphone_phone_info{phone_id="..."}` names the phone (the `phone_id` setting), so one
dashboard can join the series of several phones without relying on the scrape address.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from payphone.config import default_phone_id
from payphone.llm.breaker import BreakerState
from payphone.log import current_phone_id

# seconds: a reply within 1 s feels like a conversation, past 3 s the caller wonders
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)
PHONE_STATES = (
    "idle",
    "dial_tone",
    "greeting",
    "listening",
    "thinking",
    "speaking",
    "dialing",
    "ringback",
    "announcement",
    "goodbye",
    "howler",
)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class PhoneMetrics:
    """The phone's metrics; `render()` is the body of `/metrics`."""

    def __init__(self, phone_id: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        self.phone_id = phone_id or current_phone_id() or default_phone_id()
        self.phone = Info(
            "payphone_phone", "Which phone this is (the phone_id setting)", registry=r
        )
        self.phone.info({"phone_id": self.phone_id})
        self.info = Info("payphone", "App version, LLM backend, model and digest", registry=r)
        self.calls = Counter("payphone_calls", "Calls taken (handset lifted)", registry=r)
        self.turns = Counter(
            "payphone_turns",
            "Turns: the caller spoke, the persona answered",
            ["persona"],
            registry=r,
        )
        self.fallbacks = Counter(
            "payphone_fallbacks",
            "Turns answered by a fallback line (busy, stall, apology), by cause",
            ["cause"],
            registry=r,
        )
        self.interruptions = Counter(
            "payphone_interruptions",
            "Turns cut off before the reply ended (#, a key, hang-up, barge-in)",
            registry=r,
        )
        self.voice_to_voice = Histogram(
            "payphone_voice_to_voice_seconds",
            "End of the caller's speech to the first sound of the answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_audio = Histogram(
            "payphone_first_audio_seconds",
            "Transcript ready to the first sound of the answer (model and voice, no Whisper)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "payphone_model_first_token_seconds",
            "Transcript ready to the model's first token (request, prompt, first token)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker = Enum(
            "payphone_llm_breaker",
            "The LLM circuit breaker: closed = the model answers",
            states=[str(s) for s in BreakerState],
            registry=r,
        )
        self.host_breaker = Enum(
            "payphone_llm_host_breaker",
            "Each Ollama host's circuit breaker (llm.ollama_hosts): closed = it answers",
            ["host"],
            states=[str(s) for s in BreakerState],
            registry=r,
        )
        self.state = Enum(
            "payphone_phone_state", "What the phone is doing now", states=PHONE_STATES, registry=r
        )
        self.healthy = Gauge(
            "payphone_healthy", "1 when the check passes (as /healthz)", ["check"], registry=r
        )
        # PyAudio writes with exception_on_underflow=False and reports no underruns, so nothing
        # counts them yet: exported as a documented 0 so dashboards can be built against it.
        self.underruns = Gauge(
            "payphone_audio_underruns",
            "Earpiece underruns (not measured yet: PyAudio reports none; always 0)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
