"""`python -m training`: every stage in order, or one stage as a subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_OUT = Path(__file__).resolve().parent / "out"

app = typer.Typer(
    name="training",
    help=(
        "Build the persona model: authored conversations -> LoRA fine-tune -> merged GGUF -> "
        "quantized -> Ollama Modelfile -> evaluation against the base model. "
        "With no subcommand every stage runs with the default config."
    ),
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)

OutOption = Annotated[Path, typer.Option("--out", help="Where stages write (ignored by git).")]


def not_built(stage: str) -> None:
    err.print(f"training: the `{stage}` stage is not built yet (issue #7).")
    raise typer.Exit(1)


@app.callback()
def everything(ctx: typer.Context, out: OutOption = DEFAULT_OUT) -> None:
    """Run every stage when no subcommand is given."""
    if ctx.invoked_subcommand is None:
        not_built("all")


@app.command()
def data(
    out: OutOption = DEFAULT_OUT,
    seed: Annotated[int, typer.Option(help="Seed for the STT-style augmentation.")] = 0,
    copies: Annotated[int, typer.Option(help="Augmented copies of each conversation.")] = 1,
    eval_share: Annotated[float, typer.Option(help="Share of conversations held out.")] = 0.1,
) -> None:
    """Validate the authored conversations, augment user turns, split train/eval."""
    from training.augment import augment
    from training.dataset import DataValidationError, load_dir, write_jsonl
    from training.split import split

    try:
        conversations = load_dir()
    except DataValidationError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from exc
    parts = split(conversations, eval_share=eval_share)
    train = [*parts.train, *augment(parts.train, seed=seed, copies=copies)]
    n_train = write_jsonl(train, out / "data" / "train.jsonl")
    n_eval = write_jsonl(parts.eval, out / "data" / "eval.jsonl")
    err.print(
        f"data: {len(conversations)} conversations valid; train {n_train} "
        f"({len(parts.train)} + {n_train - len(parts.train)} STT copies), eval {n_eval} "
        f"{parts.eval_counts()}"
    )


@app.command()
def train(out: OutOption = DEFAULT_OUT) -> None:
    """LoRA fine-tune (peft + TRL SFT) on the prepared data; resumable, seeded."""
    not_built("train")


@app.command()
def export(out: OutOption = DEFAULT_OUT) -> None:
    """Merge the adapter, write a GGUF, quantize it (atomic writes)."""
    not_built("export")


@app.command()
def modelfile(out: OutOption = DEFAULT_OUT) -> None:
    """Write the Ollama Modelfile for the exported GGUF."""
    not_built("modelfile")


@app.command("eval")
def evaluate(out: OutOption = DEFAULT_OUT) -> None:
    """Compare base and fine-tuned models on held-out prompts per persona."""
    not_built("eval")


def main() -> None:
    app(prog_name="python -m training")
