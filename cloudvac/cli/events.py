"""``cloudvac events``: the event log of the store, one line per event (``cloudvac.events``),
and ``--follow`` to keep printing new ones as the daemon records them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from cloudvac.cli.base import DEFAULT_CONFIG_DIR, ConfigDir, app, err, open_store, print_issues

if TYPE_CHECKING:
    from collections.abc import Callable

    from cloudvac.model.records import Event
    from cloudvac.model.states import ShutdownMessage
    from cloudvac.store import Store

__all__ = ["app", "events"]

POLL_SECONDS = 1.0
"""With ``--follow``: how often the store is read."""


@app.command()
def events(config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
           space: Annotated[str | None, typer.Option(help="Only this space's events.")] = None,
           machinetype: Annotated[str | None, typer.Option(
               help="Only this machinetype's events.")] = None,
           follow: Annotated[bool, typer.Option(
               "--follow", "-f", help="Then print new events as they come (Ctrl-C stops).")]
           = False,
           limit: Annotated[int, typer.Option(
               min=0, help="How many of the newest events to print first.")] = 20) -> None:
    """Print the newest events (oldest first): creations, shutdown codes with their
    meaning, backoffs, deletions with their reasons, errors; one line of 80 columns each."""
    from cloudvac.config import load_config_dir
    from cloudvac.events import matches

    loaded = load_config_dir(config_dir)
    if loaded.settings is None:
        print_issues(loaded)
        raise typer.Exit(2)
    store = open_store(loaded.settings.database_url)
    try:
        _print_events(store, space, lambda e: matches(e, space, machinetype), follow, limit)
    except KeyboardInterrupt:
        err.print("stopped", highlight=False)
    finally:
        store.close()


def _print_events(store: Store, space: str | None, keep: Callable[[Event], bool],
                  follow: bool, limit: int) -> None:
    """The ``limit`` newest events of ``space`` that ``keep`` accepts, then (``follow``) the
    new ones, read every ``POLL_SECONDS``."""
    from cloudvac.events import follow as follow_events
    from cloudvac.events import lines, newest

    def read(n: int) -> list[Event]:
        return store.events(space, n)

    def shutdown_of(event: Event) -> ShutdownMessage | None:
        record = store.machine(event.space, event.machine) if event.machine else None
        return record.shutdown if record is not None else None

    first, cursor = newest(read, limit, keep)
    for line in lines(first, shutdown_of, time_format=_time_format(first)):
        typer.echo(line)
    if follow:
        fresh = (e for e in follow_events(read, cursor, time.sleep, POLL_SECONDS) if keep(e))
        for line in lines(fresh, shutdown_of):
            typer.echo(line)


def _time_format(events: list[Event]) -> str:
    """Hours only when every event is of the last day, else the date too."""
    day = 86400.0
    return "%H:%M:%S" if all(time.time() - e.at < day for e in events) else "%m-%d %H:%M"
