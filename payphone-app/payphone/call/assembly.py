"""Putting a phone together from its parts: the one place that wires stages into calls.

The service, the simulator's rig and interactive mode differ only in their hardware (real pins
and sound card, or mock pins and memory audio); the wiring of the call loop is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from payphone.call.lines import LineBook
from payphone.call.phone import Endpointer, Phone
from payphone.call.session import Call
from payphone.call.turn import Speakable, TurnDeps
from payphone.config import CallSettings
from payphone.hardware.base import AudioSink, AudioSource, HookSwitch, Keypad
from payphone.llm.base import ChatBackend, ChatOptions
from payphone.personas.loader import PersonaBook
from payphone.reply.speakable import make_speakable
from payphone.speech.base import Synthesizer, Transcriber


def assemble_phone(
    transcriber: Transcriber,
    backend: ChatBackend,
    synthesizer: Synthesizer,
    hook: HookSwitch,
    keypads: Sequence[Keypad],
    source: AudioSource,
    sink: AudioSink,
    make_endpointer: Callable[[], Endpointer],
    personas: PersonaBook,
    settings: CallSettings,
    *,
    speakable: Speakable | None = None,
    options: ChatOptions | None = None,
    lines: LineBook | None = None,
    on_call: Callable[[Call], None] | None = None,
    **call_options: Any,
) -> Phone:
    """A phone whose every call gets the same stages, lines and call settings."""
    deps = TurnDeps(
        transcriber=transcriber,
        backend=backend,
        synthesizer=synthesizer,
        sink=sink,
        lines=lines or LineBook(synthesizer),
        speakable=speakable or make_speakable(),
        options=options or ChatOptions(),
        filler_after_s=settings.filler_after_s,
    )

    def make_call(call_id: str) -> Call:
        call = Call(call_id, deps, personas, settings, **call_options)
        if on_call is not None:
            on_call(call)
        return call

    return Phone(hook, keypads, source, sink, make_call, make_endpointer)
