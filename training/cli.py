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
def data(out: OutOption = DEFAULT_OUT) -> None:
    """Validate the authored conversations, augment user turns, split train/eval."""
    not_built("data")


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
