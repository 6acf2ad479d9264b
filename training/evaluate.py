"""Base vs tuned, held out, as the phone asks and as a caller hears: the `eval` stage.

- Baseline: the base GGUF with the full persona prompt and the primed examples (what a user runs
  without training); tuned: the exported GGUF with the prompt style it declares. Both through
  the phone's own backend and reply path (`eval_reply`), at the same quantisation where
  possible (`eval_quant`; the output says when not).
- Cases (`eval_cases`): every held-out turn with its real history, the held-out break attempts,
  the memory probes; each sampled `samples` times at the phone's temperature, seeds recorded.
- Verdicts (`eval_metrics`, `eval_run`): <= 50 words, the persona classifier trained on the
  training split's authored replies, narrow leaks, 'as an AI', memory; median first-token time
  and tokens/s of each GGUF.
- Output (`eval_report`): the targets with 95 % Wilson intervals, met or not, tuned vs base, as a
  rich table, `eval.json` (every reply with its seed and verdicts) and `eval.png`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from payphone.config import Settings
from payphone.log import get_logger
from payphone.reply.character import LeakRule
from training.config import EvalStage
from training.dataset import PERSONAS, load_dir
from training.eval_cases import KINDS, CaseSet, Kind
from training.eval_quant import quant_of, same_quant_base
from training.eval_report import plot, summarise, table, targets
from training.eval_run import Judge, answer_all, describe_run
from training.persona_classifier import PersonaClassifier, authored_replies
from training.train import cpu_threads

__all__ = ["perplexity", "phone_settings", "run", "table"]

log = get_logger(__name__)


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when there is no loss."""
    return None if loss is None else math.exp(loss)


def phone_settings(cfg: EvalStage, settings: Settings | None = None) -> Settings:
    """The phone's settings, with the prompt style left to each model (`auto`, the default)
    and `[eval] max_tokens` in place of `llm.num_predict` when set."""
    settings = settings or Settings()
    llm: dict[str, Any] = {"prompt_style": "auto"}
    if cfg.max_tokens is not None:
        llm["num_predict"] = cfg.max_tokens
    return settings.model_copy(update={"llm": settings.llm.model_copy(update=llm)})


def held_out_ids(eval_jsonl: Path) -> set[str]:
    return {
        json.loads(line)["id"]
        for line in eval_jsonl.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }


def make_judge(eval_jsonl: Path) -> tuple[Judge, int]:
    """Classifier and leak rules from the authored conversations that are not held out."""
    held = held_out_ids(eval_jsonl)
    train = [c for c in load_dir() if c.id not in held]
    replies = authored_replies(train)
    rules = {
        slug: LeakRule.for_persona(persona, [r.text for r in replies if r.persona == slug])
        for slug, persona in PERSONAS.items()
    }
    return Judge(PersonaClassifier.fit(replies), rules), len(replies)


def run(
    base_gguf: Path,
    tuned_gguf: Path,
    eval_jsonl: Path,
    out_dir: Path,
    cfg: EvalStage,
    losses: tuple[float | None, float | None] = (None, None),
    settings: Settings | None = None,
    breaks: Path | None = None,
    memory: Path | None = None,
) -> dict[str, Any]:
    """Evaluate both models; write eval.json and eval.png under `out_dir`.

    `breaks`, `memory`: other case files than `training/eval/*.jsonl` (tests)."""
    from rich.progress import Progress

    phone = phone_settings(cfg, settings)
    limits: dict[Kind, int] = {
        "turn": cfg.prompts_per_persona,
        "break": cfg.break_attempts_per_persona,
        "memory": cfg.memory_probes_per_persona,
    }
    cases = CaseSet.build(eval_jsonl, limits, breaks, memory).cases
    judge, classifier_replies = make_judge(eval_jsonl)
    note = ""
    if cfg.same_quant:
        base_gguf, note = same_quant_base(base_gguf, tuned_gguf, out_dir / "base")
    threads = cpu_threads(cfg.threads)
    with Progress(transient=True) as bar:
        task = bar.add_task("eval: generating", total=2 * len(cases) * cfg.samples)

        def step() -> None:
            bar.advance(task)

        runs = {
            name: answer_all(
                gguf,
                cases,
                PERSONAS,
                phone,
                samples=cfg.samples,
                seed=cfg.seed,
                threads=threads,
                progress=step,
            )
            for name, gguf in (("base", base_gguf), ("tuned", tuned_gguf))
        }
    judged = {name: judge.judge(r) for name, r in runs.items()}
    models = {}
    for (name, r), loss in zip(runs.items(), losses, strict=True):
        models[name] = {
            **describe_run(r),
            "quant": quant_of(r.gguf),
            **summarise(judged[name]),
            "eval_loss": loss,
            "perplexity": perplexity(loss),
        }
    report: dict[str, Any] = {
        "settings": {
            "temperature": phone.llm.temperature,
            "num_predict": phone.llm.num_predict,
            "num_ctx": phone.llm.num_ctx,
            "history_tokens": phone.llm.history_tokens,
            "max_reply_words": phone.llm.max_reply_words,
            "samples": cfg.samples,
            "seeds": f"{cfg.seed}..{cfg.seed + cfg.samples - 1}",
            "limits_per_persona": limits,
        },
        "cases": {k: sum(c.kind == k for c in cases) for k in KINDS}
        | {"memory_turns": sum(c.kind == "turn" and bool(c.expect) for c in cases)},
        "classifier": {"trained_on_replies": classifier_replies, "split": "training side only"},
        "quantisation_note": note,
        **models,
        "targets": targets(models["base"], models["tuned"]),
        "replies": {name: [asdict(j) for j in js] for name, js in judged.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / "eval.json"
    tmp = dest.with_name(".eval.json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, dest)
    lengths = {name: [j.words for j in js] for name, js in judged.items()}
    report["plot"] = str(plot(report, lengths, out_dir / "eval.png"))
    log.info("eval_done", cases=len(cases), samples=cfg.samples, json=str(dest))
    return report
