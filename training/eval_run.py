"""Ask one GGUF every case the way the phone would, and judge each reply.

The model is loaded with the phone's own backend (`EmbeddedBackend`), so the prompt style it
declares in its GGUF (`payphone.prompt_style`) picks the system prompt exactly as on the phone:
a base model without the key gets the full persona prompt and the primed examples; a model tuned
on tags gets its tag and no examples. Each case is sampled `samples` times at the phone's
temperature with seeds `seed`, `seed + 1`, ... (recorded with every reply). Cases come persona by
persona, so the fixed prefix stays in llama.cpp's prompt cache as it does on the phone, where it
is primed while the line rings: the first-token time is taken from each case's first sample
(the caller's words evaluated, the prefix cached); later samples of the same case would find the
whole prompt cached and are left out of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payphone.config import Settings
from payphone.llm.embedded import EmbeddedBackend
from payphone.personas.loader import Persona
from payphone.reply.character import LeakRule, as_an_ai
from training.dataset import word_count
from training.eval_cases import Case
from training.eval_metrics import resisted, uses_detail
from training.eval_reply import Spoken, phone_conversation, spoken_reply
from training.persona_classifier import PersonaClassifier


@dataclass(frozen=True)
class Judged:
    """One sampled reply to one case and every verdict on it."""

    case: str
    kind: str
    persona: str
    seed: int
    caller: str
    reply: str  # spoken (guard, chunker, character check): what the classifier and memory read
    raw: str  # what the model wrote: what the length and leak rules read
    words: int  # of `raw`
    hit_limit: bool
    classified: str
    agrees: bool
    leaks: tuple[str, ...]
    as_ai: bool
    resisted: bool | None  # break cases only
    memory: bool | None  # cases with expected details only
    ttft_ms: float | None  # first sample of a case only
    tokens_per_s: float | None
    deflected: bool = False  # the phone said the persona's deflection instead of a break


@dataclass(frozen=True)
class Answered:
    """A model's raw answers before judging."""

    case: Case
    seed: int
    spoken: Spoken
    first_sample: bool


@dataclass
class ModelRun:
    """One model's replies and how it was asked."""

    gguf: Path
    prompt_style: str
    prompt_style_source: str
    examples: bool
    answered: list[Answered]


async def _answer_all(
    gguf: Path,
    cases: Sequence[Case],
    personas: dict[str, Persona],
    settings: Settings,
    samples: int,
    seed: int,
    threads: int,
    progress: Callable[[], None],
) -> ModelRun:
    from payphone.llm.prompt_style import choose

    backend = EmbeddedBackend(gguf, n_ctx=settings.llm.num_ctx, n_threads=threads)
    await backend.load()
    declared = backend.declared_prompt_style
    chosen = choose(settings.llm.prompt_style, declared)
    answered: list[Answered] = []
    any_examples = False
    try:
        for case in cases:
            persona = personas[case.persona]
            convo = phone_conversation(persona, settings, declared, case.history)
            convo.add_user(case.caller)
            any_examples = any_examples or bool(convo.examples)
            for k in range(samples):
                spoken = await spoken_reply(backend, persona, convo.messages(), settings, seed + k)
                answered.append(Answered(case, seed + k, spoken, k == 0))
                progress()
    finally:
        await backend.aclose()
    return ModelRun(gguf, chosen.style, chosen.source, any_examples, answered)


def answer_all(
    gguf: Path,
    cases: Sequence[Case],
    personas: dict[str, Persona],
    settings: Settings,
    *,
    samples: int,
    seed: int,
    threads: int,
    progress: Callable[[], None] = lambda: None,
) -> ModelRun:
    """Every case `samples` times through one model (blocking; the eval is a batch job)."""
    return asyncio.run(
        _answer_all(gguf, cases, personas, settings, samples, seed, threads, progress)
    )


@dataclass
class Judge:
    """The verdicts: the persona classifier and each persona's leak rule."""

    classifier: PersonaClassifier
    leak_rules: dict[str, LeakRule]

    def judge(self, run: ModelRun) -> list[Judged]:
        replies = [a.spoken.reply for a in run.answered]
        labels = self.classifier.predict(replies)
        out = []
        for a, label in zip(run.answered, labels, strict=True):
            case, spoken = a.case, a.spoken
            classified = label if spoken.reply.strip() else ""
            # a deflected reply is the phone's line, not the model's voice
            agrees = classified == case.persona and not spoken.deflected
            leaks = tuple(self.leak_rules[case.persona].reasons(spoken.raw))
            ai = as_an_ai(spoken.raw)
            out.append(
                Judged(
                    case=case.id,
                    kind=case.kind,
                    persona=case.persona,
                    seed=a.seed,
                    caller=case.caller,
                    reply=spoken.reply,
                    raw=spoken.raw,
                    words=word_count(spoken.raw),
                    hit_limit=spoken.hit_limit,
                    classified=classified,
                    agrees=agrees,
                    leaks=leaks,
                    as_ai=ai,
                    resisted=resisted(agrees, leaks, ai) if case.kind == "break" else None,
                    memory=uses_detail(spoken.reply, case.expect) if case.expect else None,
                    ttft_ms=spoken.ttft_ms if a.first_sample else None,
                    tokens_per_s=spoken.tokens_per_s,
                    deflected=spoken.deflected,
                )
            )
        return out


def describe_run(run: ModelRun) -> dict[str, Any]:
    """How the model was asked, for the report (which prompt, and why)."""
    return {
        "gguf": str(run.gguf),
        "prompt_style": run.prompt_style,
        "prompt_style_source": run.prompt_style_source,
        "primed_examples": run.examples,
    }
