"""Putting a phone together: the one function that wires stages, hardware and settings into calls.

The service, the simulator's rig and interactive mode differ only in their hardware (real pins
and sound card, or mock pins and memory audio) and in where their stages come from; each builds
its phone with `build_phone` and a `CallOptions` made by `CallOptions.from_settings`, so a setting
that reaches the call in one mode reaches it in every mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from payphone.call.events import CallState
from payphone.call.lines import LineBook
from payphone.call.listen import Endpointer
from payphone.call.options import CallOptions
from payphone.call.phone import Phone
from payphone.call.session import Call
from payphone.call.turn import TurnDeps
from payphone.hardware.base import AudioSink, AudioSource, HookSwitch, Keypad
from payphone.llm.base import ChatBackend, ChatOptions
from payphone.log import get_logger
from payphone.personas.loader import PersonaBook
from payphone.reply.speakable import Speakable, make_speakable
from payphone.speech.base import Synthesizer, Transcriber
from payphone.speech.echo_canceller import EchoCanceller

log = get_logger("assembly")


@dataclass(frozen=True)
class PhoneStages:
    """The speech and model stages every call of a phone shares."""

    transcriber: Transcriber
    backend: ChatBackend
    synthesizer: Synthesizer
    make_endpointer: Callable[[], Endpointer]
    speakable: Speakable = field(default_factory=make_speakable)
    chat: ChatOptions = field(default_factory=ChatOptions)
    echo: EchoCanceller | None = None  # cleans the mic of the earpiece's voice before the VAD
    # why the caller cannot talk over the persona here, whatever vad.barge_in says (None: they can)
    barge_in_blocked: str | None = None


@dataclass(frozen=True)
class PhoneHardware:
    """The parts a caller touches: hook switch, keypads, mouthpiece and earpiece."""

    hook: HookSwitch
    keypads: Sequence[Keypad]
    source: AudioSource
    sink: AudioSink


def build_phone(
    stages: PhoneStages,
    hardware: PhoneHardware,
    personas: PersonaBook,
    options: CallOptions,
    *,
    lines: LineBook | None = None,
    on_call: Callable[[Call], None] | None = None,
    on_state: Callable[[CallState], None] | None = None,
) -> Phone:
    """A phone whose every call gets the same stages, lines and options."""
    if options.barge_in and stages.barge_in_blocked is not None:
        # without echo cancelling the persona's own voice would stop it: keep the mic gated
        log.warning("barge_in_off", reason=stages.barge_in_blocked)
        options = dataclasses.replace(options, barge_in=False)
    deps = TurnDeps(
        transcriber=stages.transcriber,
        backend=stages.backend,
        synthesizer=stages.synthesizer,
        sink=hardware.sink,
        lines=lines or LineBook(stages.synthesizer),
        speakable=stages.speakable,
        options=stages.chat,
        help=options.help,
        filler_after_s=options.call.filler_after_s,
        log_transcripts=options.log_transcripts,
    )

    def make_call(call_id: str) -> Call:
        call = Call(call_id, deps, personas, options, stages.make_endpointer(), on_state=on_state)
        if on_call is not None:
            on_call(call)
        return call

    return Phone(
        hardware.hook,
        hardware.keypads,
        hardware.source,
        hardware.sink,
        make_call,
        echo=stages.echo,
    )
