"""`python -m payphone ...`: the one command line for operators, installers and developers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from payphone.config import Settings, config_file_in_use, load_settings
from payphone.cores import single_threaded_blas
from payphone.log import set_phone_id, setup_logging
from payphone.memory import tune_malloc
from payphone.models import ModelNotFound as ModelNotFoundError
from payphone.settings_errors import SettingsError
from payphone.versions.cli import model_app

if TYPE_CHECKING:
    from payphone.sim.echo_path import HandsetEcho

EXIT_FAIL = 1
EXIT_BAD_SETTINGS = 2

app = typer.Typer(
    name="payphone",
    help="The talking payphone: run the service, simulate calls, check an install.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
app.add_typer(model_app, name="model")


class State:
    """What the global options chose; settings are read on first use."""

    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = settings_or_exit(self.config)
        return self._settings


def settings_or_exit(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings; on a bad value print one line per problem and exit 2, no traceback."""
    try:
        settings = load_settings(config, overrides=overrides)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"payphone: bad setting: {problem}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    set_phone_id(settings.phone_id)  # every log event from here on says which phone
    return settings


EchoDbOption = Annotated[
    float | None,
    typer.Option(
        "--echo-db",
        help="The earpiece leaks back into the mic this loud, -60 to 0 dB (default: no echo).",
    ),
]
EchoDelayOption = Annotated[
    float | None,
    typer.Option(
        "--echo-delay-ms", help="...this late, 0 to 200 ms (default 20; needs --echo-db)."
    ),
]


def echo_or_exit(db: float | None, delay_ms: float | None) -> HandsetEcho | None:
    """The simulated handset's echo from the command line; out of range: one line, exit 2."""
    from payphone.sim.echo_path import EchoSettingError, echo_settings

    try:
        return echo_settings(db, delay_ms)
    except EchoSettingError as exc:
        print(f"payphone: bad setting: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $PAYPHONE_CONFIG, else /etc/payphone/payphone.toml).",
        dir_okay=False,
    ),
]


@app.callback()
def main_options(ctx: typer.Context, config: ConfigOption = None) -> None:
    """The talking payphone. Settings: defaults < TOML file < .env < PAYPHONE_* variables."""
    ctx.obj = State(config)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def configure_logging(settings: Settings) -> None:
    setup_logging(settings.logging.level, settings.logging.format)


@app.command("config")
def config_command(ctx: typer.Context) -> None:
    """Validate the settings and print the effective values (exit 2 when any is bad)."""
    st = state(ctx)
    settings = st.settings
    source = config_file_in_use(st.config)
    out.print(f"# settings valid; file: {source or '(none)'}, then .env, then PAYPHONE_* variables")
    print(render_toml(hide_secrets(settings.model_dump(mode="json"))))


SECRETS = (("status", "token"),)  # printed as set / unset, never as they are


def hide_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """The settings with every secret replaced by a note (a terminal or a pasted bug report
    must not carry the status page's token)."""
    shown = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for group, key in SECRETS:
        if shown.get(group, {}).get(key):
            shown[group][key] = "(set, hidden)"
    return shown


def render_toml(data: dict[str, Any]) -> str:
    """The settings as TOML: top-level keys (`phone_id`) first, then one table per group (unset
    values as comments)."""
    lines = [
        f"{key} = {json.dumps(value)}" for key, value in data.items() if not isinstance(value, dict)
    ]
    if lines:
        lines.append("")
    for group, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[{group}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


@app.command("models")
def models_command(
    ctx: typer.Context,
    download: Annotated[
        bool,
        typer.Option("--download", help="Download missing models (production, needs network)."),
    ] = False,
) -> None:
    """Show where each model resolves (path, demo package, download); fetch missing ones,
    the personas' production voices included. A persona voice that is missing while its
    fallback speaks is a warning; with --download, a failure."""
    from payphone.models import resolve_all
    from payphone.personas.loader import load_personas

    settings = state(ctx).settings
    voices, fallbacks = load_personas(settings.personas.user_dir).voice_models()
    results = resolve_all(settings, voices, download or None, fallbacks)
    table = Table("setting", "value", "resolved to")
    notes = []
    for r in results:
        if r.path is not None:
            where = str(r.path)
        elif r.fallback is not None and not download:
            where = f"[yellow]missing: the fallback speaks, {r.fallback}[/yellow]"
            notes.append(f"{r.error}; meanwhile the fallback speaks: {r.fallback}")
        else:
            where = f"[red]{r.error}[/red]"
        table.add_row(r.setting.key, r.value, where)
    out.print(table)
    for note in notes:
        out.print(note, markup=False, soft_wrap=True, style="yellow")
    if any(r.failed or (download and r.error) for r in results):
        raise typer.Exit(EXIT_FAIL)


@app.command("demo")
def demo_command(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Where the recording goes.")] = Path(
        "demo-output"
    ),
) -> None:
    """The quick-start demo: check settings and models, then make a simulated call."""
    import asyncio

    from payphone.models import resolve_all
    from payphone.sim.simulate import render_demo_lines, simulate

    settings = state(ctx).settings
    out.print("[green]settings valid[/green]")
    results = resolve_all(settings, voices=[])
    for r in results:
        if r.error:
            err.print(f"payphone: {r.error}")
        else:
            out.print(f"model found: {r.setting.key} = {r.value} -> {r.path}")
    if any(r.error for r in results):
        raise typer.Exit(EXIT_FAIL)
    out.print("[green]models found[/green]; calling the payphone (a minute or two)...")
    setup_logging("warning", settings.logging.format)

    async def run_demo() -> None:
        script = await render_demo_lines(settings, out_dir)
        await simulate(settings, script, out_dir, False, out)

    asyncio.run(run_demo())


@app.command("run")
def run_command(ctx: typer.Context) -> None:
    """Run the payphone service: load everything, notify systemd, take calls forever."""
    import asyncio

    from payphone.service import Service

    settings = state(ctx).settings
    configure_logging(settings)
    try:
        code = asyncio.run(Service(settings).run())
    except ModelNotFoundError as exc:
        err.print(f"payphone: {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAIL) from None
    raise typer.Exit(code)


@app.command("simulate")
def simulate_command(
    ctx: typer.Context,
    script: Annotated[
        Path | None, typer.Argument(help="Call script (YAML).", dir_okay=False)
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where call.wav and report.json go.")
    ] = Path("sim-output"),
    llm: Annotated[
        str | None, typer.Option("--llm", help="embedded | ollama (default: llm.backend).")
    ] = None,
    ollama_host: Annotated[
        str | None, typer.Option("--ollama-host", help="e.g. http://pi2:11434")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="GGUF path for the embedded LLM.")
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="Feed audio without real-time pacing.")
    ] = False,
    interactive: Annotated[
        bool, typer.Option("--interactive", help="Keyboard and microphone.")
    ] = False,
    echo_db: EchoDbOption = None,
    echo_delay_ms: EchoDelayOption = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Serve the status page during the call at HOST:PORT."),
    ] = None,
) -> None:
    """Drive a simulated phone through the real call loop and models from a YAML script."""
    import asyncio

    from payphone.sim.script import ScriptError

    echo = echo_or_exit(echo_db, echo_delay_ms)
    if interactive:
        from payphone.sim.interactive import interactive as run_interactive

        settings = with_llm_overrides(state(ctx), llm, ollama_host, model)
        setup_logging("warning", settings.logging.format)
        asyncio.run(run_interactive(settings, out_dir, out, echo))
        return
    if script is None:
        err.print("payphone: simulate needs a SCRIPT.yaml (or --interactive)")
        raise typer.Exit(EXIT_BAD_SETTINGS)
    settings = with_llm_overrides(state(ctx), llm, ollama_host, model, status)
    configure_logging(
        settings.model_copy(
            update={"logging": settings.logging.model_copy(update={"level": "warning"})}
        )
    )
    from payphone.sim.simulate import simulate

    try:
        asyncio.run(simulate(settings, script, out_dir, fast, out, echo, status=status is not None))
    except ScriptError as exc:
        err.print(f"payphone: {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    except ModelNotFoundError as exc:
        err.print(f"payphone: {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAIL) from None


def with_llm_overrides(
    st: State,
    llm: str | None,
    ollama_host: str | None,
    model: str | None,
    status: str | None = None,
) -> Settings:
    """Command-line LLM choices (and `--status`), validated like any setting (exit 2 when bad)."""
    chosen = {
        "backend": llm,
        "ollama_host": ollama_host,
        # one host from the command line replaces a list in the file too
        "ollama_hosts": [ollama_host] if ollama_host else None,
        "gguf": str(Path(model).resolve()) if model else None,
    }
    overrides: dict[str, Any] = {
        "llm": {key: value for key, value in chosen.items() if value is not None}
    }
    if status is not None:
        overrides["status"] = {"listen": [status]}
    return settings_or_exit(st.config, overrides)


@app.command("doctor")
def doctor_command(ctx: typer.Context) -> None:
    """Check an installation: settings, audio, GPIO, models, Ollama. Exit 1 on a failure."""
    from payphone.doctor import main as doctor_main

    raise typer.Exit(doctor_main(state(ctx).config))


@app.command("personas")
def personas_command(ctx: typer.Context) -> None:
    """List the personas: key, 555 number, name, the voice that really speaks (the production
    voice, or the fallback and why), greeting (exit 1 if a file is broken or a voice missing)."""
    from payphone.models import ModelNotFound
    from payphone.personas.loader import load_personas
    from payphone.speech.voices import choose_here

    settings = state(ctx).settings
    book = load_personas(settings.personas.user_dir)
    table = Table("key", "number", "name", "voice", "greeting")
    notes: list[str] = []
    missing: list[str] = []
    for p in book:
        try:
            choice = choose_here(settings, p.voice_spec)
        except ModelNotFound as exc:
            missing.append(f"payphone: {p.name} has no voice: {exc}")
            voice = f"[red]{p.voice.model} missing[/red]"
        else:
            voice = f"fallback {choice.used.describe()}" if choice.reason else choice.describe()
            if choice.reason:
                notes.append(f"{p.name} speaks with the fallback voice: {choice.reason}")
        table.add_row(p.key, p.number, p.name, voice, p.greeting)
    out.print(table)
    for note in notes:
        out.print(note, markup=False, soft_wrap=True)
    out.print(f"system prompt: {_prompt_style(state(ctx).settings)}", markup=False, soft_wrap=True)
    for problem in book.errors:
        err.print(f"payphone: persona file problem: {problem}")
    for problem in missing:
        err.print(problem, markup=False, soft_wrap=True)
    if book.errors or missing:
        raise typer.Exit(EXIT_FAIL)


def _prompt_style(settings: Settings) -> str:
    """`tag (why)` or `full (why)`: what calls send, asked of the model like the phone does."""
    import asyncio

    from payphone.llm.factory import chosen_prompt_style

    try:
        return asyncio.run(chosen_prompt_style(settings)).explain()
    except Exception as exc:  # a missing model: `doctor` says more
        return f"unknown: cannot read the model ({type(exc).__name__}: {exc})"


BENCHES = ("hangup", "stt", "vad", "tts", "llm", "latency", "turns", "soak", "bargein", "fleet")
RIG_BENCHES = (
    "hangup",
    "turns",
    "soak",
    "bargein",
)  # the ones that build a whole phone, with its handset


@app.command("bench")
def bench_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=" | ".join(BENCHES))],
    trials: Annotated[
        int | None,
        typer.Option("--trials", "--calls", min=1, help="Repetitions (soak: calls)."),
    ] = None,
    echo_db: EchoDbOption = None,
    echo_delay_ms: EchoDelayOption = None,
    phones: Annotated[
        str | None,
        typer.Option("--phones", help="bench fleet: simulated phones per run, e.g. 1,2,4."),
    ] = None,
    room_db: Annotated[
        float | None,
        typer.Option(
            "--room-db",
            help="bench turns: four other people talk this many dB under the caller, 0 to 40 "
            "(a bar; default: a quiet room).",
        ),
    ] = None,
) -> None:
    """Benchmarks that print figures (JSON on the last line), never pass/fail."""
    import importlib

    if name not in BENCHES:
        err.print(f"payphone: unknown bench {name!r}; choose one of: {', '.join(BENCHES)}")
        raise typer.Exit(EXIT_BAD_SETTINGS)
    echo = echo_or_exit(echo_db, echo_delay_ms)
    if echo is not None and name not in RIG_BENCHES:
        print(
            f"payphone: bad setting: --echo-db: bench {name} has no handset; "
            f"only these take it: {', '.join(RIG_BENCHES)}",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_BAD_SETTINGS)
    phone_counts = phones_or_exit(name, phones)
    room = room_or_exit(name, room_db)
    module = importlib.import_module(f"payphone.bench.{name}")
    settings = state(ctx).settings
    setup_logging("warning", settings.logging.format)
    options: dict[str, Any] = {} if trials is None else {"trials": trials}
    if echo is not None:
        options["echo"] = echo
    if phone_counts is not None:
        options["phones"] = phone_counts
    if room is not None:
        options["room_db"] = room
    result = module.main(settings, **options)
    print(json.dumps(result))


def room_or_exit(bench: str, db: float | None) -> float | None:
    """`--room-db` for bench turns, in range; anything else: one line, exit 2."""
    from payphone.sim.room import RoomLevelError, room_level

    try:
        if db is not None and bench != "turns":
            raise RoomLevelError(f"--room-db: bench {bench} has no room; only turns takes it")
        return room_level(db)
    except RoomLevelError as exc:
        print(f"payphone: bad setting: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


def phones_or_exit(bench: str, phones: str | None) -> tuple[int, ...] | None:
    """`--phones 1,2,4` for bench fleet: counts from 1 to 32; anything else: one line, exit 2."""
    if phones is None:
        return None
    problem = ""
    if bench != "fleet":
        problem = f"bench {bench} has no simulated phones; only fleet takes it"
    else:
        parts = [p.strip() for p in phones.split(",")]
        if all(p.isdigit() and 1 <= int(p) <= 32 for p in parts):
            return tuple(int(p) for p in parts)
        problem = f"{phones!r} is not valid; allowed: phone counts from 1 to 32, e.g. 1,2,4"
    print(f"payphone: bad setting: --phones: {problem}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_SETTINGS)


@app.command("dtmf")
def dtmf_command(
    wav: Annotated[Path, typer.Argument(help="A WAV file, any rate.", exists=True, dir_okay=False)],
) -> None:
    """Print the DTMF digits found in a WAV file on one line."""
    import wave

    from payphone.speech.dtmf import detect_wav

    setup_logging("warning")
    try:
        digits = detect_wav(wav)
    except (wave.Error, EOFError, ValueError) as exc:
        err.print(f"payphone: {wav}: not a readable WAV file ({exc or type(exc).__name__})")
        raise typer.Exit(EXIT_FAIL) from None
    print(digits)


@app.command("stats")
def stats_command(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="JSON log lines (default: journalctl -u payphone).", dir_okay=False
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="today, yesterday, 2h, 30m, 7d, or 2026-11-22[T18:00] (UTC)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Summarise the service's JSON logs: calls, turns, latency percentiles, fallbacks."""
    from payphone.stats import main as stats_main

    raise typer.Exit(stats_main(file, since, as_json))


def main() -> None:
    single_threaded_blas()  # before numpy loads: see payphone/cores.py
    tune_malloc()  # before any model loads or thread starts: see payphone/memory.py
    app(prog_name="payphone")
