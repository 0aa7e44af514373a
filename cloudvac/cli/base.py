"""What every command shares: the Typer ``app``, the error console, common options, and
opening the store with a clear exit instead of a traceback.

``cloudvac --help`` and ``cloudvac validate`` must answer fast (benchmarks/cli_startup.py):
this module and the command modules import only the standard library, typer and rich at
module level; a command imports what it needs (the store, the web service, the clouds...)
inside its own body.  ``tests/unit/test_cli_imports.py`` keeps it so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cloudvac import __version__

if TYPE_CHECKING:
    from cloudvac.config import LoadedConfig
    from cloudvac.store import Store
    from cloudvac.store.lock import StoreLock

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Keep IaaS clouds full of VMs running DIRAC pilots (vacuum model).")
err = Console(stderr=True)

DEFAULT_CONFIG_DIR = Path("/etc/cloudvac.d")
"""``cloudvac.config.DEFAULT_CONFIG_DIR``, spelt here so that the options' defaults need no
import of the configuration models (a test checks the two agree)."""

ConfigDir = Annotated[Path, typer.Option("--config-dir", "-c", help="Drop-in directory of "
                                         "*.conf files, read in alphanumeric order.")]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Keep IaaS clouds full of VMs running DIRAC pilots (vacuum model)."""


def print_issues(loaded: LoadedConfig) -> None:
    for issue in loaded.issues:
        err.print(f"[red]error[/red] {escape(str(issue))}", highlight=False, soft_wrap=True)
    for issue in loaded.warnings:
        err.print(f"[yellow]warning[/yellow] {escape(str(issue))}", highlight=False,
                  soft_wrap=True)


def open_store(url: str, writable: bool = False) -> Store:
    """The store at ``url`` (accepting writes if ``writable``), or exit 2 with the
    database and the system's reason."""
    from cloudvac.store import Store
    from cloudvac.store.engine import StoreUnavailable

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
    from cloudvac.store.lock import StoreLock, StoreLocked

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
