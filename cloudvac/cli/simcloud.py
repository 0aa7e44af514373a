"""``cloudvac sim-cloud``: the simulated cloud as its own process, speaking Keystone v3,
Nova v2.1 and Glance v2 on 127.0.0.1 (``cloudvac/clouds/simapi.py``), for tests and demos
of the real OpenStack adapter, several managers and chaos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from cloudvac.cli.base import LogLevel, app, err

if TYPE_CHECKING:
    from cloudvac.clouds.simapi import SimApiOptions

__all__ = ["app", "sim_cloud"]

READY = "listening on"
"""The line printed (with the URL) once the server accepts connections."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]cannot start:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command("sim-cloud")
def sim_cloud(  # noqa: PLR0913 - one parameter per option of the command
        password_file: Annotated[Path, typer.Option(help="File (mode 0600) holding the "
                                                    "password of --username.")],
        listen: Annotated[str, typer.Option(help="HOST:PORT to serve on, loopback only "
                                            "(port 0: any free port).")] = "127.0.0.1:0",
        username: Annotated[str, typer.Option(help="The Keystone user.")] = "cloudvac",
        user: Annotated[list[str] | None, typer.Option(
            help="One more user with the same password and projects (repeat for several; "
                 "the audit of /_sim/state tells them apart).")] = None,
        project_name: Annotated[str, typer.Option(help="Its project, when neither --project "
                                                  "nor --projects is given.")] = "sim-project",
        project: Annotated[list[str] | None, typer.Option(
            help="A project of the user (repeat for several).")] = None,
        projects: Annotated[int | None, typer.Option(min=1, help="N projects: project-0001 "
                                                     "... (the same quota each).")] = None,
        app_cred_id: Annotated[str | None, typer.Option(help="An application credential id "
                                                        "of the user.")] = None,
        app_cred_secret_file: Annotated[Path | None, typer.Option(
            help="File (0600) holding that credential's secret.")] = None,
        app_cred_project: Annotated[str | None, typer.Option(
            help="The project of the application credential (default: the first).")] = None,
        admin_token_file: Annotated[Path | None, typer.Option(
            help="File (0600) holding the bearer token of /_sim/faults and /_sim/state "
                 "(without one they refuse every request).")] = None,
        flavors: Annotated[str | None, typer.Option(
            help="Comma-separated NAME:VCPUS:RAM_MB[:BENCHMARK[:TYPE]] flavors.")] = None,
        unschedulable_flavors: Annotated[str, typer.Option(
            help="Comma-separated flavors whose servers end in ERROR.")] = "",
        quota_processors: Annotated[int | None, typer.Option(min=0)] = None,
        quota_instances: Annotated[int | None, typer.Option(min=0)] = None,
        page_limit: Annotated[int, typer.Option(min=1, help="Nova's max_limit: servers "
                                                "per listing page.")] = 1000,
        boot_seconds: Annotated[float, typer.Option(min=0)] = 5.0,
        job_seconds: Annotated[float, typer.Option(min=0.001, help="Mean time a server's "
                                                   "pilot runs before it powers off.")] = 600.0,
        failure_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
        delete_seconds: Annotated[float, typer.Option(min=0)] = 1.0,
        token_seconds: Annotated[float, typer.Option(min=1)] = 3600.0,
        image_name: Annotated[str, typer.Option(help="The one Glance image.")]
        = "cloudvac-sim-image",
        seed: Annotated[int | None, typer.Option(help="Random seed (project i: seed+i).")]
        = None,
        heartbeat_seconds: Annotated[float, typer.Option(min=0.01, help="How often each "
                                                         "VM heartbeats.")] = 60.0,
        vm_door: Annotated[str, typer.Option(help="Comma-separated base URLs VMs report to "
                                             "instead of their user_data's.")] = "",
        vm_concurrency: Annotated[int, typer.Option(min=1, help="VM uploads in flight, "
                                                    "at most.")] = 100,
        tombstone_seconds: Annotated[float, typer.Option(min=0, help="How long deleted "
                                                         "servers stay listed (changes-since)."
                                                         )] = 3600.0,
        log_level: LogLevel = "INFO") -> None:
    """Serve simulated OpenStack projects (Keystone at URL/v3, Nova, Glance) until SIGTERM,
    whose VMs report to the manager named in their user_data; prints `listening on URL`
    once it accepts connections."""
    _run(_Args(**locals()))


@dataclass(frozen=True)
class _Args:
    """The command's options, as given."""

    password_file: Path
    listen: str
    username: str
    user: list[str] | None
    project_name: str
    project: list[str] | None
    projects: int | None
    app_cred_id: str | None
    app_cred_secret_file: Path | None
    app_cred_project: str | None
    admin_token_file: Path | None
    flavors: str | None
    unschedulable_flavors: str
    quota_processors: int | None
    quota_instances: int | None
    page_limit: int
    boot_seconds: float
    job_seconds: float
    failure_rate: float
    delete_seconds: float
    token_seconds: float
    image_name: str
    seed: int | None
    heartbeat_seconds: float
    vm_door: str
    vm_concurrency: int
    tombstone_seconds: float
    log_level: str


def _projects(args: _Args) -> tuple[str, ...]:
    if args.project and args.projects is not None:
        raise _fail("give --project or --projects, not both")
    names = tuple(args.project or ()) or tuple(
        f"project-{i:04d}" for i in range(1, (args.projects or 0) + 1)) or (args.project_name,)
    if len(set(names)) != len(names):
        raise _fail("--project: a name is given twice")
    if args.app_cred_project is not None and args.app_cred_project not in names:
        raise _fail(f"--app-cred-project {args.app_cred_project}: not one of the projects")
    return names


def _doors(text: str) -> tuple[str, ...]:
    doors = tuple(_split(text))
    for door in doors:
        parts = urlsplit(door)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail(f"--vm-door {door}: not an http:// or https:// URL")
    return doors


def _options(args: _Args) -> SimApiOptions:
    """What to serve; exits 2 naming the option or file at fault."""
    import pydantic

    from cloudvac.clouds.simapi import SimApiOptions
    from cloudvac.clouds.simkeystone import Identity
    from cloudvac.config.models import SimMachinetype, SimSpace
    from cloudvac.config.secrets import SecretError, read_secret

    try:
        password = read_secret(args.password_file, None, "password")
        secret = read_secret(args.app_cred_secret_file, None, "application credential "
                             "secret") if args.app_cred_secret_file is not None else None
        admin = read_secret(args.admin_token_file, None, "admin token") \
            if args.admin_token_file is not None else None
        space = SimSpace(quota_processors=args.quota_processors,
                         quota_instances=args.quota_instances, boot_seconds=args.boot_seconds,
                         failure_rate=args.failure_rate, seed=args.seed,
                         unschedulable_flavors=_split(args.unschedulable_flavors),
                         **({"flavors": _split(args.flavors)} if args.flavors else {}))
        pilots = SimMachinetype(job_seconds=args.job_seconds)
    except (SecretError, pydantic.ValidationError) as exc:
        message = str(exc)
        if isinstance(exc, pydantic.ValidationError):
            message = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: "
                                f"{e['msg']}" for e in exc.errors())
        raise _fail(message) from None
    if (args.app_cred_id is None) != (secret is None):
        raise _fail("give --app-cred-id and --app-cred-secret-file together")
    identity = Identity(args.username, password, _projects(args), args.app_cred_id, secret,
                        token_seconds=args.token_seconds, app_cred_project=args.app_cred_project,
                        other_users=tuple(args.user or ()))
    return SimApiOptions(identity, space, pilots, args.page_limit, args.image_name, admin,
                         args.delete_seconds, args.heartbeat_seconds, _doors(args.vm_door),
                         args.vm_concurrency, args.tombstone_seconds)


def _run(args: _Args) -> None:
    import asyncio
    import logging
    import signal

    from cloudvac.clouds.simapi import SimApi, serve
    from cloudvac.logs import setup_logging
    from cloudvac.web.listen import WebConfigError, bind, is_loopback, parse_listen

    setup_logging(args.log_level)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)  # our lines say space=...
    try:
        where = parse_listen(args.listen)
    except ValueError:
        raise _fail(f"--listen {args.listen}: not HOST:PORT") from None
    if not where.host or not is_loopback(where.host):
        raise _fail(f"--listen {args.listen}: the sim cloud serves plain HTTP on loopback only")
    api = SimApi(_options(args))
    try:
        sock = bind(where, "--listen")
    except WebConfigError as exc:
        raise _fail(str(exc)) from None

    def ready(url: str) -> None:
        print(f"{READY} {url}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn stops, then re-raises it: exit 0
    asyncio.run(serve(api, sock, ready))
