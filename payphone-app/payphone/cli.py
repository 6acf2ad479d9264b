"""`python -m payphone ...`: the one command line for operators, installers and developers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from payphone.config import Settings, config_file_in_use, load_settings
from payphone.log import setup_logging
from payphone.settings_errors import SettingsError

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


def settings_or_exit(config: Path | None) -> Settings:
    """Load settings; on a bad value print one line per problem and exit 2, no traceback."""
    try:
        return load_settings(config)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"payphone: bad setting: {problem}", file=sys.stderr)
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


def not_built(what: str, issue: int) -> None:
    """A subcommand whose issue has not landed yet: say so clearly and fail."""
    err.print(f"payphone: `{what}` is not built yet (issue #{issue}).")
    raise typer.Exit(EXIT_FAIL)


@app.command("config")
def config_command(ctx: typer.Context) -> None:
    """Validate the settings and print the effective values (exit 2 when any is bad)."""
    st = state(ctx)
    settings = st.settings
    source = config_file_in_use(st.config)
    out.print(f"# settings valid; file: {source or '(none)'}, then .env, then PAYPHONE_* variables")
    print(render_toml(settings.model_dump(mode="json")))


def render_toml(data: dict[str, Any]) -> str:
    """The settings as TOML, one table per group (unset values as comments)."""
    lines: list[str] = []
    for group, values in data.items():
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
    """Show where each model resolves (path, demo package, download); fetch missing ones."""
    from payphone.models import resolve_all

    results = resolve_all(state(ctx).settings, voices=[], download=download or None)
    table = Table("setting", "value", "resolved to")
    for r in results:
        table.add_row(r.setting.key, r.value, str(r.path) if r.path else f"[red]{r.error}[/red]")
    out.print(table)
    if any(r.error for r in results):
        raise typer.Exit(EXIT_FAIL)


@app.command("demo")
def demo_command(ctx: typer.Context) -> None:
    """The quick-start demo: check settings and models, then make a simulated call."""
    from payphone.models import resolve_all

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
    out.print("[green]models found[/green]")
    out.print("The simulated demo call arrives with the simulator (issue #6).")


@app.command("run")
def run_command() -> None:
    """Run the payphone service: load everything, notify systemd, take calls forever."""
    not_built("run", 8)


@app.command("simulate")
def simulate_command(
    script: Annotated[Path | None, typer.Argument(help="Call script (YAML).")] = None,
) -> None:
    """Drive a simulated phone through the real call loop from a YAML script."""
    not_built("simulate", 6)


@app.command("doctor")
def doctor_command() -> None:
    """Check an installation: settings, audio, GPIO, models, Ollama. Exit 1 on a failure."""
    not_built("doctor", 8)


@app.command("personas")
def personas_command() -> None:
    """List the personas: key, 555 number, name, voice."""
    not_built("personas", 3)


@app.command("bench")
def bench_command(
    name: Annotated[str, typer.Argument(help="hangup | stt | tts | vad | llm | latency | soak")],
) -> None:
    """Benchmarks that print figures (JSON on the last line), never pass/fail."""
    not_built(f"bench {name}", 3)


@app.command("dtmf")
def dtmf_command(
    wav: Annotated[Path, typer.Argument(help="A WAV file, any rate.")],
) -> None:
    """Print the DTMF digits found in a WAV file on one line."""
    not_built("dtmf", 3)


@app.command("stats")
def stats_command() -> None:
    """Summarise the service's JSON logs: calls, turns, latency percentiles, fallbacks."""
    not_built("stats", 8)


def main() -> None:
    app(prog_name="payphone")
