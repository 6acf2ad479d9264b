"""`python -m payphone model ...`: list, install, switch and roll back persona model versions.

The store follows the settings: `llm.backend = "embedded"` (one Pi) keeps versions in
`<models.dir>/persona/`; `"ollama"` keeps them on Pi #2 (`llm.ollama_host`, `llm.ollama_model`).
`--dir` or `--host` name a store directly (the installer, a test, an SSH tunnel to Pi #2).
Every changing command takes `--dry-run`. A bad version, a missing file, nothing to roll back
to: one line naming it, exit 2, nothing changed; the store failing half-way: exit 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from payphone.config import Settings
from payphone.versions.local import LocalStore, persona_dir
from payphone.versions.modelfile import find_source
from payphone.versions.naming import Version, VersionError, parse_version
from payphone.versions.store import Steps, Store, StoreError, install, rollback, switch

EXIT_FAIL = 1
EXIT_BAD = 2
DEFAULT_KEEP = 3
T = TypeVar("T")

model_app = typer.Typer(
    help="Persona model versions: install a new GGUF (the previous one is kept), switch, "
    "roll back.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="One-Pi store folder (default: <models.dir>/persona).", file_okay=False
    ),
]
HostOption = Annotated[
    str | None, typer.Option("--host", help="Ollama on Pi #2 (default: llm.ollama_host).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print every step and change nothing.")
]
RestartOption = Annotated[
    bool,
    typer.Option(
        "--restart/--no-restart",
        help="Restart the phone after a switch, so it loads and primes the new version "
        "(systemctl try-restart: only if it runs).",
    ),
]


def _say(text: str) -> None:
    print(text, flush=True)


def _settings(ctx: typer.Context) -> Settings:
    """The settings the main command line's `--config` chose (its State, read on first use)."""
    settings = ctx.find_root().obj.settings
    assert isinstance(settings, Settings)
    return settings


def open_store(settings: Settings, directory: Path | None, host: str | None) -> Store:
    """The store `--dir` / `--host` name, else the one `llm.backend` uses."""
    if directory is not None and host is not None:
        raise VersionError("--dir and --host: give one (the one-Pi folder or Pi #2's Ollama)")
    llm = settings.llm
    if directory is None and (host is not None or llm.backend == "ollama"):
        from payphone.llm.ollama_backend import keep_alive_value
        from payphone.versions.remote import OllamaStore  # the ollama client: only when needed

        return OllamaStore(
            host or str(llm.ollama_host), llm.ollama_model, keep_alive_value(llm.keep_alive)
        )
    return LocalStore(directory or persona_dir(settings.models.dir))


def service_note(settings: Settings, store: Store, explicit_dir: bool) -> None:
    """One Pi: say so when the service's `llm.gguf` is not the store's `current.gguf`."""
    if explicit_dir or not isinstance(store, LocalStore) or settings.llm.backend != "embedded":
        return
    configured = Path(settings.llm.gguf).expanduser()
    if configured != store.current_link:
        print(
            f"note: llm.gguf = {settings.llm.gguf!r}: the service loads that, not the current "
            f'version; set llm.gguf = "{store.current_link}" in the settings file',
            file=sys.stderr,
        )


def run_on_store(
    ctx: typer.Context,
    directory: Path | None,
    host: str | None,
    dry_run: bool,
    work: Callable[[Store, Steps], Awaitable[T]],
) -> T:
    """Open the store, run `work`, and turn refusals and failures into one line and an exit."""
    settings = _settings(ctx)
    steps = Steps(dry_run, _say)

    async def go() -> T:
        store = open_store(settings, directory, host)
        try:
            if dry_run:
                _say(f"dry run, nothing changes ({store.describe})")
            result = await work(store, steps)
            service_note(settings, store, directory is not None)
            return result
        finally:
            await store.aclose()

    try:
        return asyncio.run(go())
    except VersionError as exc:
        print(f"payphone model: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD) from None
    except (StoreError, OSError) as exc:
        done = f" (done before it failed: {'; '.join(steps.done)})" if steps.done else ""
        print(f"payphone model: failed: {exc}{done}", file=sys.stderr)
        raise typer.Exit(EXIT_FAIL) from None


def version_or_exit(text: str) -> Version:
    try:
        return parse_version(text)
    except VersionError as exc:
        print(f"payphone model: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD) from None


@model_app.command("list")
def list_command(ctx: typer.Context, directory: DirOption = None, host: HostOption = None) -> None:
    """The installed versions, oldest first; `*` marks the one the phone uses."""

    async def show(store: Store, steps: Steps) -> None:
        listing = await store.listing()
        _say(f"persona model versions in {store.describe}:")
        for version in listing.versions:
            mark = "*" if version == listing.current else " "
            _say(f" {mark} {version.name}")
        if not listing.versions:
            _say("   (none: python -m payphone model install PATH)")

    run_on_store(ctx, directory, host, False, show)


@model_app.command("install")
def install_command(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            help="The training output folder (training/out/model), its Modelfile, or a GGUF."
        ),
    ],
    directory: DirOption = None,
    host: HostOption = None,
    keep: Annotated[
        int, typer.Option("--keep", help="Versions kept (the newest; at least 2).")
    ] = DEFAULT_KEEP,
    dry_run: DryRunOption = False,
    restart: RestartOption = True,
) -> None:
    """Install a GGUF as a new version and make it current; the previous one is kept."""

    async def work(store: Store, steps: Steps) -> None:
        gguf, modelfile = find_source(source)
        version = await install(store, steps, gguf, modelfile, keep=keep, restart=restart)
        _say(f"current version: {version.name}" + (" (after the dry run)" if dry_run else ""))
        _say("roll back with: python -m payphone model rollback")

    run_on_store(ctx, directory, host, dry_run, work)


@model_app.command("switch")
def switch_command(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="An installed version (see `model list`).")],
    directory: DirOption = None,
    host: HostOption = None,
    dry_run: DryRunOption = False,
    restart: RestartOption = True,
) -> None:
    """Make an installed version the current one."""
    wanted = version_or_exit(version)

    async def work(store: Store, steps: Steps) -> None:
        await switch(store, steps, wanted, restart=restart)

    run_on_store(ctx, directory, host, dry_run, work)


@model_app.command("rollback")
def rollback_command(
    ctx: typer.Context,
    directory: DirOption = None,
    host: HostOption = None,
    dry_run: DryRunOption = False,
    restart: RestartOption = True,
) -> None:
    """Go back to the version installed before the current one."""

    async def work(store: Store, steps: Steps) -> None:
        version = await rollback(store, steps, restart=restart)
        _say(f"current version: {version.name}" + (" (after the dry run)" if dry_run else ""))

    run_on_store(ctx, directory, host, dry_run, work)
