"""Which system prompt a model expects: a persona's short tag, or its full prompt.

A persona model from `python -m training` learnt one form (its training data's system messages)
and says which inside its GGUF, under `payphone.prompt_style`. The phone reads that key from the
model it talks to (llama.cpp's metadata in-process; `ollama show`'s `model_info` on Pi #2, which
lists the GGUF's keys), so what the model was trained on is what it gets, with no setting to
remember. A model without the key (a base model such as the packaged SmolLM2) gets the full
prompt. `llm.prompt_style = "tag"` or `"full"` still overrides whatever the model says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

PROMPT_STYLE_KEY = "payphone.prompt_style"
PromptStyle = Literal["tag", "full"]
PromptStyleSetting = Literal["auto", "tag", "full"]
PROMPT_STYLES: tuple[PromptStyle, ...] = get_args(PromptStyle)
DEFAULT_STYLE: PromptStyle = "full"
SETTING = "llm.prompt_style"


@dataclass(frozen=True)
class Declared:
    """What one model says about itself: its style, or None when it carries no key."""

    style: PromptStyle | None
    where: str  # the model, for logs: "GGUF persona.Q8_0.gguf", "Ollama model persona:latest"


@dataclass(frozen=True)
class ChosenStyle:
    """The style calls use and why, for the start-up log, `doctor` and `personas`."""

    style: PromptStyle
    source: str

    def system_prompt(self, tag: str, prompt: str) -> str:
        return tag if self.style == "tag" else prompt

    def explain(self) -> str:
        return f"{self.style} ({self.source})"


def declared_style(metadata: Mapping[str, Any] | None, where: str) -> Declared:
    """Read the key from a model's metadata (GGUF key-value pairs); an odd value counts as none."""
    value = (metadata or {}).get(PROMPT_STYLE_KEY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    style: PromptStyle | None = value if value in PROMPT_STYLES else None
    return Declared(style, where)


def choose(setting: PromptStyleSetting, declared: Declared | None) -> ChosenStyle:
    """The setting when it names a style; else what the model declares; else the full prompt.

    `declared` None: the model has not been asked yet (Pi #2 not reached so far).
    """
    if setting != "auto":
        return ChosenStyle(setting, f"setting {SETTING} = {setting!r}")
    if declared is None:
        return ChosenStyle(DEFAULT_STYLE, "default: the model has not been asked yet")
    if declared.style is None:
        return ChosenStyle(DEFAULT_STYLE, f"default: {declared.where} has no {PROMPT_STYLE_KEY}")
    return ChosenStyle(
        declared.style, f"{declared.where} says {PROMPT_STYLE_KEY} = {declared.style}"
    )
