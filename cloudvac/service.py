"""Assemble the running service: store, secret, renderer, engine, web server.

``cloudvac run`` serves the engine and the web together in one event loop; ``cloudvac
web`` serves only the web side (for a separate web host sharing the store); the demo is
``run`` on the shipped configuration with the web bound to a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cloudvac.clouds.simhttp import HttpPilotReporter
from cloudvac.config import Settings, Space, load_config_dir
from cloudvac.config.loader import config_files
from cloudvac.context.userdata import ContextRenderer
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.states import MachineState
from cloudvac.store import Store
from cloudvac.web.app import WebContext, create_app
from cloudvac.web.files import JoboutputsDir, UploadLimits
from cloudvac.web.server import bound_port, make_server
from cloudvac.web.tokens import TokenSigner, load_or_create_secret

log = logging.getLogger("cloudvac.service")
HOUSEKEEPING_SECONDS = 600.0
SPACES_RECHECK_SECONDS = 5.0
HISTORY_SECONDS = 30 * 86400.0  # ended machines and events kept in the store this long


def housekeeping(settings: Settings, store: Store, files: JoboutputsDir, now: float) -> int:
    """Remove uploads of ended machines after log_retention_hours and store history after
    HISTORY_SECONDS.  Uploads of machines still alive are never removed."""
    alive = {(m.space, m.name) for m in store.machines()}
    removed = files.cleanup(now - settings.log_retention_hours * 3600.0, alive)
    removed += store.prune(now - max(HISTORY_SECONDS, settings.log_retention_hours * 3600.0))
    return removed


@dataclass
class Service:
    config_dir: Path
    settings: Settings
    store: Store
    overrides: Mapping[str, Any] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    daemon: Daemon | None = None
    web: WebContext | None = None
    port: int | None = None
    """The port the web service listens on, once started (web_listen may say 0)."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _spaces: dict[str, Space] = field(default_factory=dict)
    _spaces_stamp: tuple[tuple[str, int], ...] = ()
    _spaces_checked: float = -1e9

    def stop(self) -> None:
        self._stop.set()
        if self.daemon is not None:
            self.daemon.stop()

    def _squids(self, space: str, machinetype: str) -> list[str]:
        """Addresses of the squid machinetype's running VMs that heartbeat (the VCycle
        heartbeat-list rule), newest beat first."""
        config = (self.daemon.current_spaces() if self.daemon else self._spaces).get(space)
        mt = config.machinetypes.get(machinetype) if config else None
        horizon = time.time() - ((mt.heartbeat_seconds if mt else None) or 3600)
        alive = [m for m in self.store.machines(space)
                 if m.machinetype == machinetype and m.state is MachineState.RUNNING
                 and m.address and m.heartbeat_at is not None and m.heartbeat_at >= horizon]
        return [m.address for m in sorted(alive, key=lambda m: -(m.heartbeat_at or 0))]

    def _spaces_from_files(self) -> Mapping[str, Space]:
        """For ``cloudvac web`` alone: the spaces of the config files, re-read when a file
        changes (checked at most every few seconds); a broken space keeps its last good
        configuration, as in the daemon."""
        now = time.monotonic()
        if now - self._spaces_checked < SPACES_RECHECK_SECONDS:
            return self._spaces
        self._spaces_checked = now
        stamp = tuple((p.name, p.stat().st_mtime_ns) for p in config_files(self.config_dir))
        if stamp != self._spaces_stamp:
            self._spaces_stamp = stamp
            self._spaces = {**self._spaces, **load_config_dir(self.config_dir).spaces}
        return self._spaces

    async def serve(self, engine: bool = True, cycles: int | None = None,
                    keep_reports: int = 0) -> None:
        """Run until ``stop()`` (or, with ``cycles``, until every space ran that many)."""
        signer = TokenSigner(load_or_create_secret(self.settings.state_dir))
        files = JoboutputsDir(self.settings.state_dir / "joboutputs",
                              UploadLimits(self.settings.upload_max_file_bytes,
                                           self.settings.upload_max_machine_bytes))
        renderer = ContextRenderer(self.settings, signer, squids=self._squids)
        if engine:
            self.daemon = Daemon(self.config_dir, self.settings, self.store,
                                 metrics=EngineMetrics(self.registry), render=renderer,
                                 keep_reports=keep_reports, settings_overrides=self.overrides)
        spaces = self.daemon.current_spaces if self.daemon else self._spaces_from_files
        self.web = WebContext(self.settings, self.store, signer, files, spaces, self.registry,
                              render=renderer)
        server = make_server(create_app(self.web), self.settings)
        web_task = asyncio.create_task(server.serve(), name="web")
        while not server.started and not web_task.done():
            await asyncio.sleep(0.05)
        if web_task.done():
            web_task.result()  # raises the start-up error (e.g. port in use)
        self.port = bound_port(server)
        keeper = asyncio.create_task(self._housekeeping(files), name="housekeeping")
        base = self.settings.web_url or \
            f"{self.settings.web_base_url.rsplit(':', 1)[0]}:{self.port}"
        log.info("space=- machinetype=- machine=- web service on %s", base)
        try:
            if self.daemon is not None:
                reporter = HttpPilotReporter(base, signer, self.daemon.heartbeat_file)
                self.daemon.factory.reporter = reporter
                renderer.settings = self.settings.model_copy(update={"web_url": base})
                try:
                    await self.daemon.run(cycles)
                finally:
                    await reporter.close()
            else:
                await self._stop.wait()
        finally:
            keeper.cancel()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await web_task

    async def _housekeeping(self, files: JoboutputsDir) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(housekeeping, self.settings, self.store, files,
                                                  time.time())
                if removed:
                    log.info("space=- machinetype=- machine=- housekeeping removed %d old "
                             "uploads/records", removed)
            except Exception:
                log.exception("space=- machinetype=- machine=- housekeeping failed")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)


async def run_service(service: Service, engine: bool = True, cycles: int | None = None,
                      keep_reports: int = 0) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.serve(engine, cycles, keep_reports)
