"""`python -m training`: every stage in order, or one stage as a subcommand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from training.config import TrainingConfig
    from training.dataset import Conversation

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
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=(
            "Training config TOML (default training/configs/quick.toml; full CPU run: cpu.toml; "
            "GPU: production.toml)."
        ),
    ),
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue training from the newest checkpoint.")
]


def load(config: Path | None) -> TrainingConfig:
    """The training config, or exit 2 naming the file and each bad setting."""
    from training.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


def load_data() -> list[Conversation]:
    """The authored conversations, or exit 2 with every bad line as `file:line: problem`."""
    from training.dataset import DataValidationError, load_dir

    try:
        return load_dir()
    except DataValidationError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


@contextmanager
def stage_errors() -> Iterator[None]:
    """Known stage failures: one clear line, exit 1, no traceback (bad data: exit 2)."""
    from training.dataset import DataValidationError
    from training.pipeline import STAGE_ERRORS

    try:
        yield
    except DataValidationError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    except STAGE_ERRORS as exc:
        err.print(f"training: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from exc


@app.callback()
def everything(
    ctx: typer.Context,
    out: OutOption = DEFAULT_OUT,
    config: ConfigOption = None,
    resume: ResumeOption = False,
) -> None:
    """Run every stage when no subcommand is given."""
    if ctx.invoked_subcommand is None:
        from training.pipeline import run_all

        cfg = load(config)
        with stage_errors():
            run_all(cfg, out, Console(), resume=resume)


@app.command()
def data(
    out: OutOption = DEFAULT_OUT,
    seed: Annotated[int, typer.Option(help="Seed for the STT-style augmentation.")] = 0,
    copies: Annotated[int, typer.Option(help="Augmented copies of each conversation.")] = 1,
    eval_share: Annotated[float, typer.Option(help="Share of conversations held out.")] = 0.1,
) -> None:
    """Validate the authored conversations, augment user turns, split train/eval."""
    from training.augment import augment, coverage
    from training.dataset import write_jsonl
    from training.hear import heard_variants
    from training.split import split

    conversations = load_data()
    parts = split(conversations, eval_share=eval_share)
    heard = heard_variants()
    train = [*parts.train, *augment(parts.train, seed=seed, copies=copies, heard=heard)]
    n_train = write_jsonl(train, out / "data" / "train.jsonl")
    n_eval = write_jsonl(parts.eval, out / "data" / "eval.jsonl")
    err.print(
        f"data: {len(conversations)} conversations valid; train {n_train} "
        f"({len(parts.train)} + {n_train - len(parts.train)} STT copies), eval {n_eval} "
        f"{parts.eval_counts()}; {coverage(parts.train, heard)}"
    )


@app.command()
def hear(
    heard_file: Annotated[
        Path | None,
        typer.Option("--file", help="The heard file (default training/data/heard/callers.jsonl)."),
    ] = None,
) -> None:
    """Speak every authored caller line (Piper, four caller voices) through the telephone band
    into the phone's Whisper and keep what it heard; lines already heard are not redone."""
    from rich.progress import Progress

    from payphone.log import setup_logging
    from payphone.models import ModelNotFound
    from training.hear import HEARD_FILE, VOICES, caller_lines, read_heard, todo
    from training.hear import hear as run_hear

    setup_logging("warning")
    path = heard_file or HEARD_FILE
    conversations = load_data()
    pending = len(todo(caller_lines(conversations), read_heard(path), VOICES))
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("hearing caller lines", total=pending)
            result = run_hear(conversations, path, progress=lambda n: bar.advance(task, n))
    except ModelNotFound as exc:
        err.print(f"hear: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from exc
    rate = f", {result.done / result.seconds:.2f} clips/s" if result.done else ""
    err.print(
        f"hear: {result.lines} caller lines x {len(VOICES)} voices: {result.done} heard now "
        f"({result.audio_seconds:.0f} s of speech in {result.seconds:.0f} s{rate}), "
        f"{result.reused} kept, {result.dropped} stale lines dropped; {path}"
    )


@app.command()
def train(
    out: OutOption = DEFAULT_OUT, config: ConfigOption = None, resume: ResumeOption = False
) -> None:
    """LoRA fine-tune (peft + TRL SFT) on the prepared data; resumable, seeded."""
    from training.pipeline import stage_train

    cfg = load(config)
    with stage_errors():
        result = stage_train(cfg, out, resume=resume)
    base_loss, loss = result.base_eval_loss or float("nan"), result.eval_loss or float("nan")
    err.print(
        f"train: {result.steps} steps on {result.device}, eval loss {base_loss:.3f} -> {loss:.3f}, "
        f"{result.tokens} tokens in {result.train_seconds:.0f} s = "
        f"{result.tokens_per_second:.0f} tokens/s; adapter in {out / 'adapter'}"
        + (f" (best checkpoint: step {result.best_step})" if result.best_step is not None else "")
    )


@app.command()
def dpo(out: OutOption = DEFAULT_OUT, config: ConfigOption = None) -> None:
    """Preference tuning (TRL DPO) of the SFT adapter: authored reply over the model's worse one."""
    from training.pipeline import stage_dpo

    cfg = load(config)
    with stage_errors():
        result = stage_dpo(cfg, out)
    err.print(
        f"dpo: {result.pairs} pairs ({result.problems}) from {result.sampled} sampled replies; "
        f"{result.steps} steps, loss {result.train_loss:.3f}, reward accuracy "
        f"{result.reward_accuracy if result.reward_accuracy is not None else float('nan'):.2f}; "
        f"adapter in {out / 'adapter'} (pairs in {out / 'dpo' / 'pairs.jsonl'})"
    )


@app.command()
def export(out: OutOption = DEFAULT_OUT, config: ConfigOption = None) -> None:
    """Merge the adapter, write a GGUF, quantize it (atomic writes)."""
    from training.pipeline import stage_export

    cfg = load(config)
    with stage_errors():
        result = stage_export(cfg, out)
    for line in result.fallbacks:
        err.print(f"export: fallback: {line}", markup=False, highlight=False)
    err.print(
        f"export: {result.float_gguf or '(float GGUF not kept)'}; {result.gguf} "
        f"(prompt style {result.prompt_style}: the phone sends that form of the persona prompt)"
    )


@app.command()
def modelfile(out: OutOption = DEFAULT_OUT, config: ConfigOption = None) -> None:
    """Write the Ollama Modelfile for the exported GGUF."""
    from training.pipeline import stage_modelfile

    cfg = load(config)
    with stage_errors():
        path = stage_modelfile(cfg, out)
    err.print(f"modelfile: {path}; deploy: ollama create NAME -f {path}")


@app.command("eval")
def evaluate(
    out: OutOption = DEFAULT_OUT,
    config: ConfigOption = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Two cases of each kind per persona only.")
    ] = False,
) -> None:
    """Base (full prompt) vs tuned on held-out turns, break attempts and memory probes."""
    from training.evaluate import table
    from training.pipeline import stage_eval

    cfg = load(config)
    if quick:
        cfg = cfg.model_copy(update={"eval": cfg.eval.quick()})
    with stage_errors():
        report = stage_eval(cfg, out)
    Console().print(table(report))
    err.print(f"eval: {out / 'eval' / 'eval.json'}; plot {report['plot']}")


@app.command("classify-eval")
def classify_eval(
    folds: Annotated[int, typer.Option(help="Cross-validation folds, split by conversation.")] = 5,
) -> None:
    """Held-out accuracy of the persona classifier on the authored replies (JSON last line)."""
    import json

    from training.persona_classifier import held_out_accuracy

    conversations = load_data()
    result = held_out_accuracy(conversations, folds=folds).as_dict()
    low, high = result["ci95"]
    print(
        f"persona classifier: {result['accuracy']:.1%} of {result['replies']} authored replies "
        f"(95 % CI {low:.1%}-{high:.1%}), {folds}-fold by conversation"
    )
    for persona, share in result["per_persona"].items():
        print(f"  {persona:<16} {share:.1%}")
    print(json.dumps(result))


@app.command("bench-persona")
def bench_persona(
    model: Annotated[
        Path | None, typer.Option(help="GGUF to measure (default: llm.gguf, the demo model).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Replies per caller line, one seed each.")] = 3,
    seed: Annotated[int, typer.Option(help="First sampling seed (then seed+1, ...).")] = 0,
    condition: Annotated[
        str, typer.Option(help="before (prompt only), after (primed examples), or both.")
    ] = "both",
    threads: Annotated[int, typer.Option(help="llama.cpp threads (0: half the cores).")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write every reply and the figures as JSON.")
    ] = None,
) -> None:
    """The untuned model with the full persona prompt, before and after priming: in character
    (persona classifier), <= 50 words, mean words, token-limit hits. Figures, JSON last line."""
    import json

    from payphone.config import Settings
    from payphone.models import resolve_gguf
    from training.persona_bench import CONDITIONS, quotes, run, summarise

    if condition not in (*CONDITIONS, "both"):
        err.print(f"--condition: {condition!r} is not one of before, after, both")
        raise typer.Exit(2)
    settings = Settings()
    gguf = model or resolve_gguf(settings)
    conditions = CONDITIONS if condition == "both" else (condition,)
    done = run(
        gguf,
        settings,
        samples,
        seed,
        conditions,
        threads,
        progress=lambda s: err.print(
            f"{s.condition} {s.persona} seed {s.seed}: {s.words} words", highlight=False
        ),
    )
    figures: dict[str, object] = {
        "model": gguf.name,
        "seed": seed,
        "samples_per_line": samples,
        "temperature": settings.llm.temperature,
        "num_predict": settings.llm.num_predict,
        "max_reply_words": settings.llm.max_reply_words,
    }
    seeds = f"{seed}..{seed + samples - 1}"
    print(f"{gguf.name}, full prompt, T={settings.llm.temperature}, seeds {seeds}")
    header = ("condition", "n", "in char", "95% CI", "<=50w", "mean w", "limit", "deflect")
    print(f"{header[0]:<10}" + "".join(f"{h:>9}" for h in header[1:]))
    for name in conditions:
        got = summarise([s for s in done if s.condition == name])
        figures[name] = got
        low, high = got["in_character_ci95"]
        print(
            f"{name:<10}{got['n']:>9}{got['in_character']:>9.0%}{f'{low:.0%}-{high:.0%}':>9}"
            f"{got['le_50_words']:>9.0%}{got['mean_words']:>9.1f}{got['hit_limit']:>9.0%}"
            f"{got['deflected']:>9.0%}"
        )
    last = [s for s in done if s.condition == conditions[-1]]
    for s in quotes(last, 3, seed):
        print(f"  [{s.condition} {s.persona} seed {s.seed}] {s.caller!r} -> {s.reply!r}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        replies = [s.__dict__ for s in done]
        out.write_text(json.dumps({"figures": figures, "replies": replies}, indent=1), "utf-8")
    print(json.dumps(figures))


def main() -> None:
    app(prog_name="python -m training")
