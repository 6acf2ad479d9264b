"""What a call takes from the settings, as one typed object (built the same way in every mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from payphone.config import CallSettings, HelpSettings, Settings
from payphone.llm.prompt_style import PromptStyleSetting
from payphone.personas.loader import Persona, PersonaBook


@dataclass(frozen=True)
class CallOptions:
    """Everything a call takes from the settings, typed."""

    call: CallSettings = field(default_factory=CallSettings)
    prompt_style: PromptStyleSetting = "auto"  # auto: the style the model declares
    history_tokens: int = 1024
    barge_in: bool = False
    help: HelpSettings = field(default_factory=HelpSettings)
    log_transcripts: bool = False  # personal data: in the journal only with status.transcripts

    @classmethod
    def from_settings(cls, settings: Settings) -> CallOptions:
        return cls(
            call=settings.call,
            prompt_style=settings.llm.prompt_style,
            history_tokens=settings.llm.history_tokens,
            barge_in=settings.vad.barge_in,
            help=settings.help,
            log_transcripts=settings.status.transcripts == "journal",
        )

    def as_report(self) -> dict[str, Any]:
        """What the call ran with, for the report and the logs."""
        return {
            "prompt_style": self.prompt_style,
            "history_tokens": self.history_tokens,
            "barge_in": self.barge_in,
            "log_transcripts": self.log_transcripts,
            "call": self.call.model_dump(),
            "help": self.help.model_dump(),
        }


def first_persona(personas: PersonaBook, settings: CallSettings) -> Persona:
    """The persona that answers a new call (and whose prompt is primed at start-up)."""
    return personas.by_key(settings.default_persona_key) or personas.operator
