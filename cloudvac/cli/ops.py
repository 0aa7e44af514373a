"""Commands that act on a running daemon through the store: ``drain``, ``undrain``, ``kill``,
``confirm-removal``, ``logs`` (and ``run --dry-run``'s report, ``dry_run``).

The daemon is another process: these commands write the store named by the configuration
(``database``, else the SQLite file in ``state_dir``), and the daemon acts at its next
cycle of the space.  An unknown space, machinetype or machine is one line on stderr and
exit status 2, never a traceback.  Heavy imports happen inside the commands
(``cli/base.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cloudvac.cli.base import DEFAULT_CONFIG_DIR, ConfigDir, app, err, open_store, print_issues

if TYPE_CHECKING:
    from cloudvac.config import LoadedConfig
    from cloudvac.model.records import Event, MachineRecord
    from cloudvac.store import Store

__all__ = ["app", "dry_run"]

DEFAULT_GRACE_SECONDS = 3600
SHOWN_BYTES = 4096  # of shutdown_message and heartbeat, printed by ``logs``
SHOWN_FILES = ("shutdown_message", "heartbeat")
LOG_TIME = "%Y-%m-%d %H:%M:%S"
REASON_CHARS = 160  # a kill's reason, so that "100 Killed by operator: ..." fits a message

SpaceOption = Annotated[str | None, typer.Option(
    "--space", help="The machine's space (default: found in the store by the name).")]


def _fail(message: str, status: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(status)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _config(config_dir: Path) -> LoadedConfig:
    from cloudvac.config import load_config_dir

    loaded = load_config_dir(config_dir)
    if loaded.settings is None:
        print_issues(loaded)
        raise _fail("[settings] is invalid (see above)")
    return loaded


def _check_target(loaded: LoadedConfig, space: str, machinetype: str | None) -> None:
    """Exit 2 unless ``space`` (and ``machinetype``) are configured."""
    known = sorted({*loaded.spaces, *loaded.broken})
    if space not in known:
        raise _fail(f"no space {space} in the configuration (spaces: "
                    f"{', '.join(known) or 'none'})")
    found = loaded.spaces.get(space)
    if machinetype is not None and found is not None and machinetype not in found.machinetypes:
        raise _fail(f"no machinetype {machinetype} in space {space} (machinetypes: "
                    f"{', '.join(sorted(found.machinetypes)) or 'none'})")


def _operator_event(store: Store, at: float, where: tuple[str, str, str], message: str) -> None:
    """Record what an operator did; ``where``: space, machinetype, machine."""
    from cloudvac.model.records import Event

    store.add_events([Event(at, *where, "operator", message)])


@app.command()
def drain(space: str,
          machinetype: Annotated[str | None, typer.Argument(
              help="Only this machinetype (default: the whole space).")] = None,
          grace: Annotated[float, typer.Option(
              "--grace", min=0, help="Seconds the machines keep to finish their jobs: "
              "pilots are told (MJF shutdowntime) to take no job that cannot end by then, "
              "and machines still there after it are deleted.")] = DEFAULT_GRACE_SECONDS,
          config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Stop creating machines of SPACE (or of one MACHINETYPE); delete its machines once
    the grace has passed (those that end sooner are cleaned as usual)."""
    loaded = _config(config_dir)
    _check_target(loaded, space, machinetype)
    assert loaded.settings is not None
    store = open_store(loaded.settings.database_url, writable=True)
    now = time.time()
    target = f"{space}/{machinetype}" if machinetype else space
    try:
        store.set_drain(space, machinetype or "*", True, now, grace)
        _operator_event(store, now, (space, machinetype or "", ""), f"drained by an "
                        f"operator with a grace of {grace:g}s (until {_when(now + grace)})")
    finally:
        store.close()
    undo = f"cloudvac undrain {space}" + (f" {machinetype}" if machinetype else "")
    typer.echo(f"drained {target}: no new machines from the daemon's next cycle; pilots "
               f"take no job that cannot end by {_when(now + grace)} (grace {grace:g}s); "
               "machines still running then are deleted (a tenth of the space per cycle "
               f"at most, 10 at least). `{undo}` cancels it.")


@app.command()
def undrain(space: str,
            machinetype: Annotated[str | None, typer.Argument(
                help="The drained machinetype (default: the whole space's drain).")] = None,
            config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Cancel a drain: creations resume and pilots are told their usual shutdowntime."""
    loaded = _config(config_dir)
    _check_target(loaded, space, machinetype)
    assert loaded.settings is not None
    store = open_store(loaded.settings.database_url, writable=True)
    now = time.time()
    target = f"{space}/{machinetype}" if machinetype else space
    try:
        was = store.set_drain(space, machinetype or "*", False)
        if was:
            _operator_event(store, now, (space, machinetype or "", ""),
                            "drain cancelled by an operator")
        others = store.drains(space).get(space, {})
    finally:
        store.close()
    typer.echo(f"undrained {target}" if was else f"{target} was not drained: nothing to do")
    if machinetype and "*" in others:
        typer.echo(f"note: the whole space {space} is still drained: `cloudvac undrain "
                   f"{space}` cancels that")


def _find(store: Store, name: str, space: str | None) -> MachineRecord:
    """The machine ``name`` (of ``space`` if given), GONE included, or exit 2."""
    found = store.named(name) if space is None else \
        [m for m in (store.machine(space, name),) if m is not None]
    if not found:
        where = f" in space {space}" if space else ""
        raise _fail(f"no machine {name}{where} in the store")
    if len(found) > 1:
        raise _fail(f"machine {name} is known in several spaces "
                    f"({', '.join(m.space for m in found)}): choose one with --space")
    return found[0]


@app.command()
def kill(machine: str,
         reason: Annotated[str, typer.Option(
             "--reason", help="Why: recorded in the machine's events and its shutdown "
             "message (code 100).")] = "",
         space: SpaceOption = None,
         config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Ask the daemon to delete MACHINE at its next cycle of the machine's space."""
    from cloudvac.model.states import MachineState

    loaded = _config(config_dir)
    assert loaded.settings is not None
    store = open_store(loaded.settings.database_url, writable=True)
    try:
        record = _find(store, machine, space)
        _check_target(loaded, record.space, None)
        if record.state is MachineState.GONE:
            raise _fail(f"machine {machine} ({record.space}) is gone already", 1)
        now, why = time.time(), " ".join(reason.split())[:REASON_CHARS]
        if not store.request_kill(record.space, machine, why, now):
            raise _fail(f"machine {machine} ({record.space}) is gone already", 1)
        _operator_event(store, now, (record.space, record.machinetype, machine),
                        f"kill requested by an operator: {why or 'no reason given'}")
    finally:
        store.close()
    typer.echo(f"{machine} ({record.space}/{record.machinetype}, {record.state}) will be "
               "deleted at the daemon's next cycle of its space")


@app.command("confirm-removal")
def confirm_removal(space: str,
                    machinetype: Annotated[str | None, typer.Argument(
                        help="The removed machinetype (default: the whole space, removed "
                        "from the configuration).")] = None,
                    config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Let the drain of a machinetype (or a space) removed from the configuration go ahead
    when it waits because it would delete more than removal_confirm_fraction of the
    space's machines at once."""
    loaded = _config(config_dir)
    assert loaded.settings is not None
    key = machinetype or "*"
    target = f"{space}/{machinetype}" if machinetype else space
    store = open_store(loaded.settings.database_url, writable=True)
    try:
        known = store.removals(space).get(space, {})
        if key not in known:
            pending = ", ".join(sorted(f"{space}/{k}" if k != "*" else space for k in known))
            raise _fail(f"no removal of {target} is recorded (recorded: {pending or 'none'}); "
                        "the daemon records one at its first cycle after the removal", 1)
        now = time.time()
        removal = store.confirm_removal(space, key, now)
        assert removal is not None
        _operator_event(store, now, (space, machinetype or "", ""),
                        "removal confirmed by an operator")
    finally:
        store.close()
    found = loaded.spaces.get(space)
    grace = f" ({found.removal_grace_seconds}s)" if found is not None else ""
    typer.echo(f"removal of {target} confirmed ({removal.machines} machine(s) when noticed): "
               f"its machines are deleted removal_grace_seconds{grace} after "
               f"{_when(removal.confirmed_at)}, at the drain rate")


@app.command()
def logs(machine: str,
         file: Annotated[str | None, typer.Option(
             "--file", help="Print this one uploaded file as it is.")] = None,
         space: SpaceOption = None,
         config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """MACHINE's uploaded files (names, sizes, its shutdown_message and last heartbeat) and
    its event history."""
    loaded = _config(config_dir)
    assert loaded.settings is not None
    store = open_store(loaded.settings.database_url)
    try:
        record = _find(store, machine, space)
        if file is not None:
            _print_file(store, record, file)
            return
        lines = [*_summary(record), *_files(store, record)]
        events = _history(store, record)
    finally:
        store.close()
    for line in [*lines, "events (oldest first):", *_event_lines(events, record)]:
        typer.echo(line)


def _history(store: Store, m: MachineRecord) -> list[Event]:
    """The machine's events and the operator's drains of its space or machinetype since
    it was created, newest first."""
    own = store.events(m.space, 1000, machine=m.name)
    since = m.created_at or 0.0
    drains = [e for e in store.events(m.space, 200, machine="")
              if e.kind == "operator" and e.machinetype in ("", m.machinetype)
              and e.at >= since]
    return sorted([*own, *drains], key=lambda e: e.at, reverse=True)


def _summary(m: MachineRecord) -> list[str]:
    message = f"{m.shutdown} (at {_when(m.shutdown_at)})" if m.shutdown else "-"
    lines = [f"machine {m.name}: space {m.space}, machinetype {m.machinetype}, state {m.state}",
             f"  created {_when(m.created_at)}, started {_when(m.started_at)}, "
             f"stopped {_when(m.stopped_at)}",
             f"  last heartbeat {_when(m.heartbeat_at)}; shutdown message {message}"]
    if m.delete_requested_at is not None:
        lines.append(f"  deletion requested {_when(m.delete_requested_at)} "
                     f"({m.delete_reason or '-'})")
    if m.kill_requested_at is not None:
        lines.append(f"  kill requested {_when(m.kill_requested_at)}: "
                     f"{m.kill_reason or 'no reason given'}")
    return lines


def _files(store: Store, m: MachineRecord) -> list[str]:
    """The machine's uploads (kept in the store, whichever instance took them)."""
    stored = store.joboutput_files(m.space, m.name)
    if not stored:
        return ["uploaded files: none (nothing uploaded, or removed after "
                "log_retention_hours)"]
    lines = ["uploaded files:"]
    lines += [f"  {f.file:<24} {f.size:>10} bytes  {_when(f.written_at)}" for f in stored]
    shown = store.joboutputs(m.space, m.name, [f.file for f in stored
                                               if f.file in SHOWN_FILES])
    for name in SHOWN_FILES:
        if name in shown:
            text = shown[name][:SHOWN_BYTES].decode("utf-8", "replace").rstrip()
            lines += [f"{name}:", *(f"  {line}" for line in text.splitlines() or [""])]
    return lines


def _print_file(store: Store, m: MachineRecord, name: str) -> None:
    from cloudvac.model.layout import FILE_NAME

    body = store.joboutput(m.space, m.name, name) if FILE_NAME.fullmatch(name) else None
    if body is None:
        present = [f.file for f in store.joboutput_files(m.space, m.name)]
        raise _fail(f"no uploaded file {name} for this machine (files: "
                    f"{', '.join(present) or 'none'})", 1)
    typer.echo(body.decode("utf-8", "replace"), nl=False)


def _event_lines(events: list[Event], machine: MachineRecord) -> list[str]:
    """The machine's events, oldest first, as ``cloudvac events`` prints them but whole
    (a kill's reason, an error's text) and with the date."""
    from cloudvac.events import event_line

    return [f"  {event_line(e, machine.shutdown, width=1_000_000, time_format=LOG_TIME)}"
            for e in reversed(events)]


def dry_run(config_dir: Path, log_level: str) -> None:
    """``cloudvac run --dry-run``: one read-only cycle per valid space; exit 1 if a space
    could not be observed, 2 if none is valid."""
    import asyncio

    from cloudvac.engine.dryrun import dry_run as dry_cycles
    from cloudvac.engine.dryrun import summary
    from cloudvac.logs import setup_logging
    from cloudvac.store import Store
    from cloudvac.store.engine import StoreUnavailable, sqlite_path

    setup_logging(log_level)
    loaded = _config(config_dir)
    print_issues(loaded)
    assert loaded.settings is not None
    if not loaded.spaces:
        raise _fail("no valid space in the configuration")
    url, store = loaded.settings.database_url, None
    path = sqlite_path(url)
    if path is None or path.exists():
        try:
            store = Store(url, read_only=True)
        except (StoreUnavailable, ValueError) as exc:
            raise _fail(str(exc)) from None
    else:
        typer.echo(f"no store at {path} yet: every listed machine is as if adopted")
    try:
        runs = asyncio.run(dry_cycles(loaded.spaces.values(), loaded.settings, store,
                                      time.time))
    finally:
        if store is not None:
            store.close()
    for run in runs:
        for line in run.lines():
            typer.echo(line)
    typer.echo(summary(runs))
    raise typer.Exit(1 if any(r.error for r in runs) else 0)
