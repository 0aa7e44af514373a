"""What every command shares: the Typer ``app``, the error console, common options, and
opening the store with a clear exit instead of a traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cloudvac.config import LoadedConfig
from cloudvac.store import Store
from cloudvac.store.engine import StoreUnavailable
from cloudvac.store.lock import StoreLock, StoreLocked

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep IaaS clouds full of VMs running DIRAC pilots (vacuum model).")
err = Console(stderr=True)

ConfigDir = Annotated[Path, typer.Option("--config-dir", "-c", help="Drop-in directory of "
                                         "*.conf files, read in alphanumeric order.")]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def print_issues(loaded: LoadedConfig) -> None:
    for issue in loaded.issues:
        err.print(f"[red]error[/red] {escape(str(issue))}", highlight=False, soft_wrap=True)
    for issue in loaded.warnings:
        err.print(f"[yellow]warning[/yellow] {escape(str(issue))}", highlight=False,
                  soft_wrap=True)


def open_store(url: str, writable: bool = False) -> Store:
    """The store at ``url`` (accepting writes if ``writable``), or exit 2 with the
    database and the system's reason."""
    try:
        return Store(url, writable=writable)
    except (StoreUnavailable, ValueError) as exc:
        message = str(exc) if isinstance(exc, StoreUnavailable) else \
            f"cannot open the store: {exc}"
        err.print(f"[red]{'cannot start' if writable else 'error'}:[/red] {escape(message)}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def hold_store(url: str) -> StoreLock | None:
    """This daemon's lock on the store at ``url`` (None for PostgreSQL), or exit 2 naming
    the process that holds it."""
    lock = StoreLock.for_url(url)
    if lock is None:
        logging.getLogger("cloudvac.store.lock").warning(
            "space=- machinetype=- machine=- the store is not a SQLite file: nothing stops a "
            "second cloudvac run on it yet (leases come with HA); run only one")
        return None
    try:
        lock.acquire()
    except StoreLocked as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]cannot start:[/red] cannot lock the store: {escape(str(lock.path))}: "
                  f"{escape(exc.strerror or str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    return lock
