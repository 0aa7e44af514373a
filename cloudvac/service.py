"""Assemble the running service, in dependency order: store, secret, listening socket (so
the URL VMs are told is known), renderer, simulated pilots, cloud adapters, engine, web.

``cloudvac run`` serves the engine and the web together in one event loop; ``cloudvac
web`` serves only the web side (for a separate web host sharing the store); the demo is
``run`` on the shipped configuration with the web bound to a free loopback port.  Nothing
is patched after it is built.

Signals (``run_service``): SIGTERM and SIGINT stop; SIGHUP (``systemctl reload``) re-reads
the configuration at once: the daemon's spaces, or the spaces ``cloudvac web`` serves.
Settings the listeners were built with (listen addresses, TLS, limits) need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from cloudvac.auth.vmtokens import TokenSigner, shared_secret
from cloudvac.clouds.factory import CloudFactory
from cloudvac.clouds.simpilots import HttpPilots, PilotReporter, StorePilots
from cloudvac.config import Settings, Space, load_config_dir
from cloudvac.config.loader import config_files
from cloudvac.context.userdata import ContextRenderer
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.leases import LeaseKeeper
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.engine.wakes import ShutdownWaker, WakeWatcher
from cloudvac.store import Store
from cloudvac.store.clock import StoreClock
from cloudvac.web.app import create_app
from cloudvac.web.context import WebContext
from cloudvac.web.files import Joboutputs, UploadLimits, import_directory
from cloudvac.web.guard import WebLimits
from cloudvac.web.listen import WebConfigError, bind
from cloudvac.web.operator import create_operator_app, operator_access, operator_server
from cloudvac.web.server import listen_socket, make_server, socket_port

log = logging.getLogger("cloudvac.service")
HOUSEKEEPING_SECONDS = 600.0
SPACES_RECHECK_SECONDS = 5.0
HISTORY_SECONDS = 30 * 86400.0  # ended machines and events kept in the store this long


def housekeeping(settings: Settings, store: Store, files: Joboutputs, now: float) -> int:
    """Remove uploads of ended machines after log_retention_hours and store history after
    HISTORY_SECONDS.  Uploads of machines still alive are never removed."""
    removed = files.cleanup(now - settings.log_retention_hours * 3600.0)
    removed += store.prune(now - max(HISTORY_SECONDS, settings.log_retention_hours * 3600.0))
    return removed


async def _started(tasks: list[asyncio.Task[None]],
                   servers: tuple[uvicorn.Server, ...]) -> None:
    """Wait until every server listens; the first start-up error is raised."""
    while not all(server.started for server in servers):
        for task in tasks:
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError(f"{task.get_name()} door stopped while starting")
        await asyncio.sleep(0.05)


@dataclass
class FileSpaces:
    """For ``cloudvac web`` alone: the spaces of the config files, re-read when a file
    changes (checked at most every few seconds); a broken space keeps its last good
    configuration, as in the daemon."""

    directory: Path
    _spaces: dict[str, Space] = field(default_factory=dict)
    _stamp: tuple[tuple[str, int], ...] = ()
    _checked: float = -1e9

    def reread(self) -> None:
        """Re-read the files now, changed or not (SIGHUP)."""
        self._stamp, self._checked = (), -1e9
        spaces = self()
        log.info("space=- machinetype=- machine=- SIGHUP: configuration re-read from %s: %d "
                 "spaces served", self.directory, len(spaces))

    def __call__(self) -> Mapping[str, Space]:
        now = time.monotonic()
        if now - self._checked < SPACES_RECHECK_SECONDS:
            return self._spaces
        self._checked = now
        stamp = tuple((p.name, p.stat().st_mtime_ns) for p in config_files(self.directory))
        if stamp != self._stamp:
            self._stamp = stamp
            self._spaces = {**self._spaces, **load_config_dir(self.directory).spaces}
        return self._spaces


@dataclass(frozen=True)
class Service:
    """Everything ``serve`` runs, built by ``build``."""

    settings: Settings
    """As configured, with ``web_url`` resolved to the bound port when it was unset."""
    store: Store
    registry: CollectorRegistry
    files: Joboutputs
    web: WebContext
    sock: socket.socket
    server: uvicorn.Server
    operator_sock: socket.socket
    operator_server: uvicorn.Server
    daemon: Daemon | None
    pilots: HttpPilots | None
    watcher: WakeWatcher | None = None
    """Wakes this daemon's spaces for shutdown messages other processes received."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return socket_port(self.sock)

    @property
    def operator_port(self) -> int:
        return socket_port(self.operator_sock)

    def stop(self) -> None:
        self.stopping.set()
        if self.daemon is not None:
            self.daemon.stop()

    def reread(self) -> None:
        """Re-read the configuration now (SIGHUP)."""
        if self.daemon is not None:
            self.daemon.reread()
        elif isinstance(self.web.spaces, FileSpaces):
            self.web.spaces.reread()

    async def serve(self, cycles: int | None = None) -> None:
        """Run until ``stop()`` (or, with ``cycles``, until every space ran that many)."""
        if self.daemon is not None:
            self.daemon.load()  # before serving: an upload must find its machine's space
        doors = [asyncio.create_task(self.server.serve(sockets=[self.sock]), name="web"),
                 asyncio.create_task(self.operator_server.serve(sockets=[self.operator_sock]),
                                     name="operator")]
        try:
            await _started(doors, (self.server, self.operator_server))
            # What exists now (modules, configuration, the applications) lives as long as
            # the process: frozen, no full collection walks it again while requests come.
            gc.freeze()
            keeper = asyncio.create_task(self._housekeeping(), name="housekeeping")
            watching = None if self.watcher is None else \
                asyncio.create_task(self.watcher.watch(self.stopping), name="wakes")
            log.info("space=- machinetype=- machine=- web service on %s, operator door on "
                     "%s", self.settings.web_base_url, self._operator_url())
            try:
                if self.daemon is not None:
                    await self.daemon.run(cycles)
                else:
                    await self.stopping.wait()
            finally:
                keeper.cancel()
                if watching is not None:
                    watching.cancel()
        finally:
            for server in (self.server, self.operator_server):
                server.should_exit = True
            for task in doors:
                with contextlib.suppress(Exception):
                    await task
            if self.pilots is not None:
                await self.pilots.close()
            self.sock.close()
            self.operator_sock.close()

    def _operator_url(self) -> str:
        host = self.settings.operator_listen.rpartition(":")[0]
        scheme = "https" if self.settings.operator_tls_cert else "http"
        return f"{scheme}://{host}:{self.operator_port}"

    async def _housekeeping(self) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(housekeeping, self.settings, self.store,
                                                  self.files, self.web.clock())
                if removed:
                    log.info("space=- machinetype=- machine=- housekeeping removed %d old "
                             "uploads/records", removed)
            except Exception:
                log.exception("space=- machinetype=- machine=- housekeeping failed")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)


def build(config: ConfigSource, settings: Settings, store: Store, engine: bool = True,
          keep_reports: int = 0) -> Service:
    """Build the service in dependency order; raises WebConfigError or SecretFileError
    when it cannot serve as configured (nothing is left open then): a secret that is not
    the one the store's other instances use (``auth/vmtokens.py:shared_secret``)."""
    signer = TokenSigner(shared_secret(settings.state_dir, store))
    clock = StoreClock()
    clock.measure(store)  # every time written goes on the database's clock (store/clock.py)
    import_directory(store, settings.state_dir / "joboutputs")  # uploads from before 0009
    files = Joboutputs(store, UploadLimits(settings.upload_max_file_bytes,
                                           settings.upload_max_machine_bytes), clock.now)
    access = operator_access(settings)
    sock = listen_socket(settings)
    try:
        operator_sock = bind(access.door.listen, "operator_listen")
    except WebConfigError:
        sock.close()
        raise
    configured, port = settings, socket_port(sock)
    if settings.web_url is None:  # tell VMs the port really bound (web_listen may say 0)
        base = settings.web_base_url
        settings = settings.model_copy(update={"web_url": f"{base.rsplit(':', 1)[0]}:{port}"})
    renderer = ContextRenderer(settings, signer, clock.now, squids=lambda space, mt, since: [
        m.address for m in store.heartbeating(space, mt, since) if m.address])
    registry = CollectorRegistry()
    daemon = pilots = watcher = None
    waker = ShutdownWaker(store, clock.now)  # cloudvac web: the owner reads the board
    if engine:
        metrics = EngineMetrics(registry)
        pilots = HttpPilots(settings.web_base_url, signer)
        keeper = LeaseKeeper.for_store(store, settings.database_url,
                                       lambda: daemon.settings.cycle_seconds if daemon else 60.0,
                                       clock=clock)
        tools = CycleTools(store, metrics, render=renderer, clock=clock.now)
        daemon = Daemon(config, configured, tools,
                        CloudFactory(metrics, pilots), keep_reports, keeper)
        waker = ShutdownWaker(store, clock.now, daemon.wake, keeper.owned)
        watcher = WakeWatcher(store, daemon.wake, keeper.owned)
    spaces = daemon.current_spaces if daemon is not None else FileSpaces(config.directory)
    web = WebContext(settings, store, signer, files, spaces, registry,
                     render=lambda space, mt, name, at: renderer.as_of(at)(space, mt, name),
                     clock=clock.now, wake=waker)
    vm_app = create_app(web)
    return Service(settings, store, registry, files, web, sock, make_server(vm_app, settings),
                   operator_sock,
                   operator_server(create_operator_app(vm_app, access), access.door,
                                   WebLimits.from_settings(settings)),
                   daemon, pilots, watcher)


def build_daemon(config_dir: Path, settings: Settings, store: Store, keep_reports: int = 0,
                 pilots: PilotReporter | None = None) -> Daemon:
    """The engine alone on ``config_dir``: its own metrics, the generic user_data, and
    simulated pilots that report straight into ``store`` unless ``pilots`` says otherwise
    (tests and benchmarks of the engine; ``build`` assembles the whole service)."""
    metrics = EngineMetrics()
    return Daemon(ConfigSource(config_dir), settings, CycleTools(store, metrics),
                  CloudFactory(metrics, pilots or StorePilots(store)), keep_reports)


async def run_service(service: Service, cycles: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``cycles``); SIGHUP re-reads the configuration."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    loop.add_signal_handler(signal.SIGHUP, service.reread)
    await service.serve(cycles)
