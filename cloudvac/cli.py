"""Command line: ``cloudvac run | validate | status | demo``."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudvac import __version__
from cloudvac.config import DEFAULT_CONFIG_DIR, LoadedConfig, load_config_dir
from cloudvac.engine.status import StatusRow, status_rows
from cloudvac.logs import setup_logging
from cloudvac.service import Service, run_service
from cloudvac.store import Store
from cloudvac.web.server import WebConfigError
from cloudvac.web.tokens import SecretFileError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep IaaS clouds full of VMs running DIRAC pilots (vacuum model).")
err = Console(stderr=True)

ConfigDir = Annotated[Path, typer.Option("--config-dir", "-c", help="Drop-in directory of "
                                         "*.conf files, read in alphanumeric order.")]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def _print_issues(loaded: LoadedConfig) -> None:
    for issue in loaded.issues:
        err.print(f"[red]error[/red] {escape(str(issue))}", highlight=False, soft_wrap=True)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def validate(config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Check the configuration; print every problem with file:line; exit 1 if any."""
    loaded = load_config_dir(config_dir)
    _print_issues(loaded)
    mts = sum(len(s.machinetypes) for s in loaded.spaces.values())
    typer.echo(f"{len(loaded.spaces)} valid spaces ({mts} machinetypes), "
               f"{len(loaded.broken)} invalid, {len(loaded.issues)} problems in "
               f"{len(loaded.files)} files")
    raise typer.Exit(1 if loaded.issues else 0)


@app.command()
def run(config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
        cycles: Annotated[int | None, typer.Option(help="Stop after N cycles per space.")] = None,
        log_level: LogLevel = "INFO") -> None:
    """Run the daemon: every valid space cycles; broken spaces are reported and skipped."""
    setup_logging(log_level)
    loaded = load_config_dir(config_dir)
    _print_issues(loaded)
    if loaded.settings is None:
        err.print("[red]cannot start:[/red] [settings] is invalid (see above)")
        raise typer.Exit(2)
    if not loaded.spaces:
        err.print("[red]cannot start:[/red] no valid space in the configuration")
        raise typer.Exit(2)
    store = Store(loaded.settings.database_url)
    service = Service(config_dir, loaded.settings, store)
    try:
        asyncio.run(run_service(service, engine=True, cycles=cycles))
    except (WebConfigError, SecretFileError) as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    finally:
        store.close()


@app.command()
def web(config_dir: ConfigDir = DEFAULT_CONFIG_DIR, log_level: LogLevel = "INFO") -> None:
    """Serve only the VM-facing web service (a separate web host sharing the store)."""
    setup_logging(log_level)
    loaded = load_config_dir(config_dir)
    _print_issues(loaded)
    if loaded.settings is None:
        err.print("[red]cannot start:[/red] [settings] is invalid (see above)")
        raise typer.Exit(2)
    store = Store(loaded.settings.database_url)
    try:
        asyncio.run(run_service(Service(config_dir, loaded.settings, store), engine=False))
    except (WebConfigError, SecretFileError) as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    finally:
        store.close()


@app.command()
def status(config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
           as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
           ) -> None:
    """Spaces x machinetypes: machines, processors, shares, backoff, last error."""
    loaded = load_config_dir(config_dir)
    if loaded.settings is None:
        _print_issues(loaded)
        raise typer.Exit(2)
    store = Store(loaded.settings.database_url)
    try:
        rows = status_rows(loaded.spaces, store.machines(), store.last_aborts(),
                           store.events(limit=500), time.time())
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        Console().print(status_table(rows))
    if loaded.issues:
        _print_issues(loaded)


def status_table(rows: list[StatusRow], title: str = "cloudvac status") -> Table:
    table = Table(title=title)
    for heading in ("space", "machinetype", "starting", "running", "stopping", "processors",
                    "share (actual/target)", "backoff", "last error"):
        table.add_column(heading, overflow="fold")
    for r in rows:
        backoff = f"{r.backoff_seconds_left:.0f}s" if r.backoff_seconds_left else "-"
        table.add_row(r.space, r.machinetype, str(r.starting), str(r.running), str(r.stopping),
                      str(r.processors), f"{r.actual_share:.0%} / {r.target_share:.0%}",
                      backoff, r.last_error[:60] or "-")
    return table


@app.command()
def demo(cycles: Annotated[int | None, typer.Option(help="Stop after N cycles.")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary at the "
                                               "end instead of a live table.")] = False,
         state_dir: Annotated[Path | None, typer.Option(help="Keep the demo's database here "
                                                        "(default: a new temporary dir).")]
         = None,
         log_level: LogLevel = "WARNING") -> None:
    """Run the whole system on the embedded default: two simulated clouds with belle, t2k and
    hyperk machinetypes, pilots that work, run out of work and fail."""
    from cloudvac.demo import run_demo

    setup_logging(log_level)
    summary = run_demo(cycles, state_dir, live=not as_json)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    sys.exit(0 if summary["ok"] else 1)


def main() -> None:  # pragma: no cover - console entry point
    logging.captureWarnings(True)
    app()
