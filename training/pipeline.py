"""Every stage in order (data -> train -> [dpo] -> export -> modelfile -> eval), then a summary.

Each stage is also a function the CLI subcommands call, so `python -m training train` and the
all-stages run do exactly the same work. Known failures raise `STAGE_ERRORS`; the CLI prints
their one-line messages and exits 1, without a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from training.base_model import BaseModelError
from training.config import ConfigError, TrainingConfig
from training.dataset import DataValidationError
from training.export import ExportError, ExportResult
from training.modelfile import ModelfileError
from training.train import Paths, TrainingError, TrainResult

if TYPE_CHECKING:
    from training.dpo import DpoResult

STAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataValidationError,
    BaseModelError,
    TrainingError,
    ExportError,
    ModelfileError,
    FileNotFoundError,
)


def stage_data(cfg: TrainingConfig, out: Path) -> str:
    """Validate, split, augment; writes OUT/data/{train,eval}.jsonl."""
    from training.augment import augment, coverage
    from training.dataset import load_dir, write_jsonl
    from training.hear import heard_variants
    from training.split import split

    conversations = load_dir()
    parts = split(conversations, eval_share=cfg.data.eval_share)
    heard = heard_variants()
    train = [
        *parts.train,
        *augment(parts.train, seed=cfg.data.seed, copies=cfg.data.copies, heard=heard),
    ]
    n_train = write_jsonl(train, out / "data" / "train.jsonl")
    n_eval = write_jsonl(parts.eval, out / "data" / "eval.jsonl")
    return (
        f"{len(conversations)} conversations; train {n_train}, eval {n_eval}; "
        f"{coverage(parts.train, heard)}"
    )


def stage_train(cfg: TrainingConfig, out: Path, resume: bool = False) -> TrainResult:
    """LoRA SFT; writes OUT/adapter and OUT/train_summary.json."""
    from training import train

    return train.run(cfg, out, resume=resume)


def stage_dpo(cfg: TrainingConfig, out: Path) -> DpoResult:
    """Preference pairs from the model's own worse replies, then DPO; replaces OUT/adapter."""
    from training import dpo

    return dpo.run(cfg, out)


def stage_export(cfg: TrainingConfig, out: Path) -> ExportResult:
    """Merge and write OUT/model/NAME.{F16,QUANT}.gguf."""
    from training import export

    return export.run(cfg, out)


def stage_modelfile(cfg: TrainingConfig, out: Path) -> Path:
    """OUT/model/Modelfile for the quantized GGUF."""
    from training import export, modelfile

    _, quant = export.gguf_names(cfg, Paths(out))
    return modelfile.write(quant, cfg.modelfile)


def stage_eval(cfg: TrainingConfig, out: Path) -> dict[str, Any]:
    """Base vs tuned, held out; writes OUT/eval/eval.json and eval.png."""
    from training import evaluate, export
    from training.train import read_summary

    paths = Paths(out)
    _, tuned = export.gguf_names(cfg, paths)
    if not tuned.is_file():
        raise FileNotFoundError(f"no tuned GGUF at {tuned}: run `python -m training export`")
    summary = read_summary(out) or {}
    losses = (summary.get("base_eval_loss"), summary.get("eval_loss"))
    return evaluate.run(
        export.base_gguf(cfg, out), tuned, paths.eval_data, out / "eval", cfg.eval, losses
    )


@dataclass
class Summary:
    """Wall time per stage and the figures worth printing at the end."""

    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    train: TrainResult | None = None
    dpo: DpoResult | None = None
    report: dict[str, Any] | None = None

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def table(self) -> Table:
        t = Table(title="training pipeline")
        t.add_column("stage")
        t.add_column("wall", justify="right")
        t.add_column("result")
        for stage, seconds in self.seconds.items():
            t.add_row(stage, f"{seconds:.1f} s", self.notes.get(stage, ""))
        t.add_row("total", f"{self.total:.1f} s", "")
        return t


def run_all(cfg: TrainingConfig, out: Path, console: Console, resume: bool = False) -> Summary:
    """Every stage in order; prints each stage's result and the summary table."""
    summary = Summary()

    def timed(name: str, work: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        result = work()
        summary.seconds[name] = time.perf_counter() - started
        return result

    summary.notes["data"] = timed("data", lambda: stage_data(cfg, out))
    summary.train = result = timed("train", lambda: stage_train(cfg, out, resume))
    summary.notes["train"] = (
        f"{result.steps} steps, {result.tokens} tokens, {result.tokens_per_second:.0f} tokens/s, "
        f"eval loss {_fmt(result.base_eval_loss)} -> {_fmt(result.eval_loss)}"
        + (f" (best, step {result.best_step})" if result.best_step is not None else "")
    )
    if cfg.dpo.enabled:  # export only after every training stage finished
        summary.dpo = tuned = timed("dpo", lambda: stage_dpo(cfg, out))
        summary.notes["dpo"] = (
            f"{tuned.pairs} pairs from {tuned.sampled} samples {tuned.problems}, "
            f"{tuned.steps} steps, reward accuracy {_fmt(tuned.reward_accuracy)}"
        )
    exported = timed("export", lambda: stage_export(cfg, out))
    summary.notes["export"] = (
        f"{exported.gguf.name} ({len(exported.fallbacks)} fallbacks; "
        f"prompt style {exported.prompt_style})"
    )
    summary.notes["modelfile"] = str(timed("modelfile", lambda: stage_modelfile(cfg, out)))
    summary.report = report = timed("eval", lambda: stage_eval(cfg, out))
    met = [row for row in report["targets"] if row["met"]]
    summary.notes["eval"] = (
        f"mean reply {report['base']['mean_words']} -> {report['tuned']['mean_words']} words; "
        f"targets met {len(met)}/{len(report['targets'])} (eval/eval.json)"
    )
    from training.evaluate import table

    console.print(table(report))
    console.print(summary.table())
    console.print(
        f"training: {result.tokens_per_second:.0f} tokens/s on {result.device}; "
        f"end to end {summary.total / 60:.1f} min; model {exported.gguf}"
    )
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
