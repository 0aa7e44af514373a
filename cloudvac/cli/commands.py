"""The engine's and the VM side's commands: ``run | web | validate | status | demo | render |
dirac-cs | simulate | version``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cloudvac import __version__
from cloudvac.cli.base import (
    DEFAULT_CONFIG_DIR,
    ConfigDir,
    LogLevel,
    app,
    err,
    hold_store,
    open_store,
    print_issues,
)

if TYPE_CHECKING:
    from cloudvac.config import LoadedConfig, Settings, Space
    from cloudvac.config.dirac import DiracInstance

# Every import of cloudvac beyond the command line's own, and of the libraries behind it,
# happens inside the command that needs it: `cloudvac --help` and `validate` start fast
# (benchmarks/cli_startup.py; tests/unit/test_cli_imports.py).


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def validate(config_dir: ConfigDir = DEFAULT_CONFIG_DIR) -> None:
    """Check the configuration: every problem of every file at once, each with file:line,
    section and option; the last line counts errors and warnings; exit 1 iff any error."""
    from cloudvac.cli.validation import print_outcome, validate_dir

    raise typer.Exit(print_outcome(validate_dir(config_dir)))


LogFile = Annotated[Path | None, typer.Option(
    "--log-file", help="Log to this file (appended; reopened once logrotate renamed it) "
    "instead of standard error (the journal under systemd).")]


@app.command()
def run(config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
        cycles: Annotated[int | None, typer.Option(help="Stop after N cycles per space.")] = None,
        log_level: LogLevel = "INFO", log_file: LogFile = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="One cycle per space against the real cloud, read-only: print "
            "what would be created and deleted and why; change nothing.")] = False) -> None:
    """Run the daemon: every valid space cycles; broken spaces are reported and skipped."""
    if dry_run:
        from cloudvac.cli.ops import dry_run as dry

        dry(config_dir, "WARNING" if log_level == "INFO" else log_level)
        return
    _serve(config_dir, log_level, engine=True, cycles=cycles, log_file=log_file)


@app.command()
def web(config_dir: ConfigDir = DEFAULT_CONFIG_DIR, log_level: LogLevel = "INFO",
        log_file: LogFile = None) -> None:
    """Serve only the VM-facing web service (a separate web host sharing the store)."""
    _serve(config_dir, log_level, engine=False, cycles=None, log_file=log_file)


def _serve(config_dir: Path, log_level: str, engine: bool, cycles: int | None,
           log_file: Path | None = None) -> None:
    import asyncio

    from cloudvac.auth.vmtokens import SecretFileError
    from cloudvac.config import load_config_dir
    from cloudvac.config.secrets import SecretError
    from cloudvac.engine.configsource import ConfigSource
    from cloudvac.logs import LogFileError, setup_logging
    from cloudvac.service import build, run_service
    from cloudvac.web.listen import WebConfigError
    from cloudvac.web.protocols import loop_factory

    try:
        setup_logging(log_level, log_file)
    except LogFileError as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    loaded = load_config_dir(config_dir)
    print_issues(loaded)
    if loaded.settings is None:
        err.print("[red]cannot start:[/red] [settings] is invalid (see above)")
        raise typer.Exit(2)
    if engine and not loaded.spaces:
        # Still start: the VMs' door keeps their heartbeats coming (a VM that cannot reach
        # its manager powers itself off), and a fixed file is picked up at the next re-read.
        err.print("[red]error:[/red] no valid space in the configuration yet: serving the "
                  "VMs' door; fix the files, then `systemctl reload cloudvac` (or wait for "
                  "the next re-read)")
    url = loaded.settings.database_url
    # the engine alone owns the store's machines: one per store; the web side only reads
    # and records what VMs send, so any number may share it
    lock = hold_store(url) if engine else None
    try:
        store = open_store(url, writable=True)
        try:
            service = build(ConfigSource(config_dir), loaded.settings, store, engine=engine)
            # uvloop when installed: the start-up line of each listener names the loop
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(run_service(service, cycles))
        except (WebConfigError, SecretFileError, SecretError) as exc:
            err.print(f"[red]cannot start:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()


@app.command()
def status(config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
           as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
           instances: Annotated[bool, typer.Option(
               "--instances", help="The instances sharing the store instead: spaces owned "
               "and last renewal of each.")] = False) -> None:
    """Spaces x machinetypes: machines, processors, shares, backoff, drains, last error;
    notes on drains, kills and foreign usage that leaves no room; the owner of each
    space's lease (``--json``), and the instances under the table."""
    from cloudvac.config import load_config_dir
    from cloudvac.status import (
        instances_json,
        instances_table,
        read_view,
        status_notes,
        status_rows,
        status_table,
    )

    loaded = load_config_dir(config_dir)
    if loaded.settings is None:
        print_issues(loaded)
        raise typer.Exit(2)
    store = open_store(loaded.settings.database_url)
    try:
        view = read_view(store, events=500)
        rows = status_rows(loaded.spaces, view, time.time())
    finally:
        store.close()
    leases = view.leases
    if instances and leases is not None and as_json:
        typer.echo(json.dumps(instances_json(leases), indent=2))
    elif instances and leases is not None:
        Console().print(instances_table(leases))
    elif as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        console = Console()
        console.print(status_table(rows, width=console.width))
        for note in status_notes(rows, time.time()):
            typer.echo(f"note: {note}")
        if leases is not None and leases.instances:
            console.print(instances_table(leases, width=min(console.width, 80)))
    if loaded.issues or loaded.warnings:
        print_issues(loaded)


@app.command()
def demo(cycles: Annotated[int | None, typer.Option(help="Stop after N cycles.")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary at the "
                                               "end instead of a live table.")] = False,
         state_dir: Annotated[Path | None, typer.Option(help="Keep the demo's database here "
                                                        "(default: a new temporary dir).")]
         = None,
         log_level: LogLevel = "WARNING") -> None:
    """Run the whole system on two simulated clouds, with its live events.

    The embedded default: belle, t2k and hyperk machinetypes whose pilots work, run out of
    work and fail.  On a terminal, the status table with the newest events under it; piped,
    one line per event and the table after each cycle (80 columns either way)."""
    from cloudvac.demo import run_demo
    from cloudvac.logs import setup_logging

    setup_logging(log_level)
    summary = run_demo(cycles, state_dir, None if as_json else Console())
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for problem in summary.get("errors", []):
            err.print(f"[red]error[/red] {escape(str(problem))}", highlight=False,
                      soft_wrap=True)
    sys.exit(0 if summary["ok"] else 1)


def _space_or_exit(config_dir: Path, space: str) -> tuple[LoadedConfig, Space]:
    from cloudvac.config import load_config_dir

    loaded = load_config_dir(config_dir)
    found = loaded.spaces.get(space)
    if found is None:
        print_issues(loaded)
        known = ", ".join(sorted(loaded.spaces)) or "none"
        err.print(f"[red]no valid space {escape(space)}[/red] (valid spaces: {known})")
        raise typer.Exit(2)
    return loaded, found


@app.command()
def render(space: str, machinetype: str, config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
           show_secrets: Annotated[bool, typer.Option(help="Print the VM token, host key, "
                                                      "proxy, user_data_file_* contents and "
                                                      "secret-looking user_data_option_* "
                                                      "values instead of masking them.")]
           = False,
           name: Annotated[str | None, typer.Option(help="Machine name to render for.")]
           = None) -> None:
    """Print the user_data a new machine of SPACE/MACHINETYPE would get, validated."""
    from cloudvac.auth.vmtokens import TokenSigner
    from cloudvac.context.errors import RenderError
    from cloudvac.context.userdata import ContextRenderer
    from cloudvac.context.validate import schema_found, validate_user_data
    from cloudvac.model.naming import machine_name

    loaded, found = _space_or_exit(config_dir, space)
    mt = found.machinetypes.get(machinetype)
    if mt is None or loaded.settings is None:
        err.print(f"[red]no machinetype {escape(machinetype)} in {escape(space)}[/red]")
        raise typer.Exit(2)
    renderer = ContextRenderer(loaded.settings, TokenSigner(b"x" * 32 if not show_secrets
                                                            else _secret(loaded.settings)))
    machine = name or machine_name(space, machinetype)
    try:
        text = renderer.render(found, mt, machine, mask=not show_secrets)
        validate_user_data(renderer.render(found, mt, machine), f"{space}/{machinetype}")
    except RenderError as exc:
        err.print(f"[red]invalid user_data:[/red] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(1) from None
    if not schema_found():
        err.print("[yellow]warning:[/yellow] cloud-init's schema is not installed "
                  "(Debian package cloud-init); only structural checks ran")
    typer.echo(text, nl=False)


def _secret(settings: Settings) -> bytes:
    """The secret the running instances sign with: checked against the store's fingerprint
    (never recorded from here: only a starting instance records it)."""
    from cloudvac.auth.vmtokens import SecretFileError, shared_secret

    store = open_store(settings.database_url)
    try:
        return shared_secret(settings.state_dir, store, record=False)
    except SecretFileError as exc:
        err.print(f"[red]cannot read the server secret:[/red] {escape(str(exc))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        store.close()


@app.command(name="dirac-cs")
def dirac_cs(space: str, config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
             dirac: Annotated[str | None, typer.Option(
                 "--dirac", help="The [dirac NAME] instance to print the CFG for; required "
                 "when the space reports to more than one (each has its own CS).")] = None
             ) -> None:
    """Print the DIRAC Configuration Service CFG (site, CE, queues sized from the cloud's
    flavors, host DNs) registering SPACE in one DIRAC instance; loadable as printed."""
    loaded, found = _space_or_exit(config_dir, space)
    names = ", ".join(found.dirac_instances) or "none"
    if not found.dirac_instances:
        err.print(f"[red]space {escape(space)} has no machinetype with dirac = ...[/red]")
        raise typer.Exit(2)
    if dirac is None and len(found.dirac_instances) > 1:
        err.print(f"[red]space {escape(space)} reports to {len(found.dirac_instances)} DIRAC "
                  f"instances ({escape(names)}), each with its own CS:[/red] choose one with "
                  "--dirac NAME", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    instance = found.dirac_instances.get(dirac or next(iter(found.dirac_instances)))
    if instance is None:
        err.print(f"[red]space {escape(space)} does not report to DIRAC instance "
                  f"{escape(str(dirac))}[/red] (it reports to: {escape(names)})",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if loaded.settings is None:
        print_issues(loaded)
        raise typer.Exit(2)
    try:
        typer.echo(_cs_text(found, loaded.settings, instance), nl=False)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _cs_text(space: Space, settings: Settings, instance: DiracInstance) -> str:
    """The CFG of ``space`` for ``instance``; problems finding sizes go to stderr, and a
    queue whose size cannot be told raises ``ValueError``."""
    import asyncio

    from cloudvac.context.diraccs import cs_text, host_identity
    from cloudvac.engine.queuesizes import resolve_sizes

    mts = [mt for mt in space.machinetypes.values() if mt.dirac == instance.name]
    sizes, problems = asyncio.run(resolve_sizes(space, settings, mts))
    for problem in problems:
        err.print(f"[yellow]warning:[/yellow] {escape(problem)}", highlight=False,
                  soft_wrap=True)
    hosts = {mt.name: host_identity(mt.host_cert_file) for mt in mts if mt.host_cert_file}
    return cs_text(instance, space, sizes, hosts)


@app.command()
def simulate(scenario: Annotated[str, typer.Argument(help="A scenario file, or the name of a "
                                                     "shipped one: " + ", ".join(
                                                         shipped_scenarios()))],
             out: Annotated[Path, typer.Option(help="Directory for NAME.csv, NAME.json and "
                                               "NAME.png.")] = Path("simulation"),
             seed: Annotated[int | None, typer.Option(
                 help="Replaces every space's sim_seed: the same seed, the same CSV and "
                      "JSON bytes.")] = None) -> None:
    """Run the real planner and cycle on the sim cloud on a virtual clock (hours in
    seconds); write per-cycle CSV/JSON and a plot of processors per machinetype."""
    from cloudvac.simulate.output import plot, summarize, write_csv, write_json
    from cloudvac.simulate.runner import run as run_simulation
    from cloudvac.simulate.scenario import ScenarioError, load_scenario

    path = Path(scenario)
    if not path.is_file():
        path = scenario_dir() / f"{scenario}.conf"
    if not path.is_file():
        err.print(f"[red]no scenario {escape(scenario)}[/red]; shipped: "
                  f"{', '.join(shipped_scenarios())}")
        raise typer.Exit(2)
    try:
        loaded = load_scenario(path)
    except ScenarioError as exc:
        err.print(f"[red]invalid scenario:[/red]\n{escape(str(exc))}")
        raise typer.Exit(1) from None
    rows = run_simulation(loaded, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    name = path.stem
    summary = summarize(rows)
    write_csv(rows, out / f"{name}.csv")
    write_json(rows, out / f"{name}.json", summary)
    plot(rows, out / f"{name}.png", f"cloudvac simulate {name} ({loaded.hours:g} h)")
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"wrote {out / name}.csv, .json, .png", err=True)


def scenario_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("cloudvac") / "examples" / "scenarios"))


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in scenario_dir().glob("*.conf"))
