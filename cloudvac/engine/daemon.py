"""The daemon: every space is its own asyncio task with its own deadline.

Contract:

* The configuration directory is re-read and validated once per ``cycle_seconds``.  A
  space whose new configuration is broken keeps its last good one (and is reported); a
  broken space never seen good is skipped; every other space carries on.
* A space's cycle that raises, or overruns ``space_timeout_seconds``, is cancelled and
  reported; its task carries on at the next period.  Nothing a cloud does can stop the
  daemon or delay another space.
* ``stop()`` (SIGTERM) lets cycles in progress finish within their deadline, then returns.
* With ``cycles=N`` each space runs N cycles and ``run()`` returns (demo, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudvac.clouds.base import CloudError
from cloudvac.clouds.factory import CloudFactory
from cloudvac.clouds.sim import PilotReporter
from cloudvac.config import LoadedConfig, Settings, Space, load_config_dir
from cloudvac.context.userdata import check_space
from cloudvac.engine.cycle import CycleReport, SpaceCycle, UserDataRenderer, generic_user_data
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.records import Event
from cloudvac.engine.reporter import StoreReporter
from cloudvac.store import Store

log = logging.getLogger("cloudvac.engine.daemon")


@dataclass(slots=True)
class SpaceState:
    config: Space
    config_ok: bool = True
    task: asyncio.Task[None] | None = None
    cycles: int = 0
    reports: list[CycleReport] = field(default_factory=list)


class Daemon:
    def __init__(self, config_dir: Path, settings: Settings, store: Store,
                 clock: Callable[[], float] = time.time,
                 metrics: EngineMetrics | None = None,
                 render: UserDataRenderer = generic_user_data,
                 keep_reports: int = 0,
                 settings_overrides: Mapping[str, Any] | None = None,
                 reporter: PilotReporter | None = None) -> None:
        self.config_dir, self.settings, self.store, self.clock = config_dir, settings, store, clock
        self.metrics = metrics or EngineMetrics()
        self.factory = CloudFactory(settings, reporter or StoreReporter(store), clock,
                                    self.metrics)
        self.render = render
        self.keep_reports = keep_reports
        self.overrides = dict(settings_overrides or {})
        self.spaces: dict[str, SpaceState] = {}
        self.last_load: LoadedConfig | None = None
        self._stop = asyncio.Event()
        self._cycles: int | None = None

    def current_spaces(self) -> dict[str, Space]:
        """The configuration in force for every managed space (last good one if broken)."""
        return {name: state.config for name, state in self.spaces.items()}

    def heartbeat_file(self, space: str, machinetype: str) -> str:
        state = self.spaces.get(space)
        mt = state.config.machinetypes.get(machinetype) if state else None
        return (mt.heartbeat_file if mt else None) or "heartbeat"

    def stop(self) -> None:
        self._stop.set()

    async def run(self, cycles: int | None = None) -> None:
        # A cycle of 100 spaces x 1,000 machines builds ~10^6 short-lived objects; the default
        # generation-0 threshold (700) made collection cost 3x more (benchmarks/scale.py).
        gc.set_threshold(50_000, 20, 100)
        self._cycles = cycles
        try:
            while not self._stop.is_set():
                self.reload()
                if cycles is not None and self.spaces and all(
                        s.task is not None and s.task.done() for s in self.spaces.values()):
                    break
                if cycles is not None and not self.spaces:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.cycle_seconds)
        finally:
            self._stop.set()
            tasks = [s.task for s in self.spaces.values() if s.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            for name in list(self.spaces):
                await self.factory.forget(name)

    def reload(self) -> LoadedConfig:
        """Re-read the configuration; start, update or stop space tasks accordingly."""
        loaded = load_config_dir(self.config_dir)
        self.last_load = loaded
        self.metrics.config_errors.set(len(loaded.issues))
        for issue in loaded.issues:
            log.error("config: %s", issue)
        new = loaded.settings.model_copy(update=self.overrides) if loaded.settings else None
        if new is not None and new != self.settings:
            log.info("space=- machinetype=- machine=- settings reloaded")
            self.settings = new
        for name, space in list(loaded.spaces.items()):
            problems = self._render_check(space)
            if problems:
                for problem in problems:
                    log.error("space=%s machinetype=- machine=- user_data %s", name, problem)
                del loaded.spaces[name]
                loaded.broken.add(name)
                continue
            state = self.spaces.get(name)
            if state is None:
                state = self.spaces[name] = SpaceState(space)
                log.info("space=%s machinetype=- machine=- managing (%d machinetypes)", name,
                         len(space.machinetypes))
            state.config, state.config_ok = space, True
            self.metrics.space_config_ok.labels(name).set(1)
        for name in loaded.broken:
            state = self.spaces.get(name)
            self.metrics.space_config_ok.labels(name).set(0)
            if state is None:
                log.error("space=%s machinetype=- machine=- skipped: configuration invalid "
                          "and no earlier good configuration", name)
            else:
                state.config_ok = False
                log.error("space=%s machinetype=- machine=- configuration invalid: keeping "
                          "the last good one", name)
        seen = set(loaded.spaces) | loaded.broken
        for name in [n for n in self.spaces if n not in seen and not loaded.issues]:
            log.warning("space=%s machinetype=- machine=- removed from configuration: no longer "
                        "managed; its machines are left as they are", name)
            state = self.spaces.pop(name)
            if state.task is not None:
                state.task.cancel()
        for name, state in self.spaces.items():
            if state.task is not None and state.task.done() and self._cycles is None:
                # A space task only ends on stop; anything else is a death to report and heal.
                log.error("space=%s machinetype=- machine=- space task ended unexpectedly "
                          "(%s); restarting it", name,
                          "cancelled" if state.task.cancelled() else state.task.exception())
                state.task = None
            if state.task is None:
                state.task = asyncio.get_running_loop().create_task(self._space_loop(name),
                                                                    name=f"space:{name}")
        return loaded

    def _render_check(self, space: Space) -> list[str]:
        """Trial-render a space's machinetypes when its configuration changed."""
        state = self.spaces.get(space.name)
        if state is not None and state.config == space and state.config_ok:
            return []
        return check_space(space, self.settings)

    async def _space_loop(self, name: str) -> None:
        cycle: SpaceCycle | None = None
        while not self._stop.is_set():
            state = self.spaces.get(name)
            if state is None:
                return
            started = self.clock()
            report = await self._one_cycle(name, state, cycle)
            cycle = report[1]
            state.cycles += 1
            if self.keep_reports:
                state.reports = [*state.reports[-(self.keep_reports - 1):], report[0]]
            if self._cycles is not None and state.cycles >= self._cycles:
                return
            delay = max(0.0, started + self.settings.cycle_seconds - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _one_cycle(self, name: str, state: SpaceState,
                         cycle: SpaceCycle | None) -> tuple[CycleReport, SpaceCycle | None]:
        space = state.config
        started = self.clock()
        try:
            cloud = self.factory.get(space)
            if cycle is None or cycle.cloud is not cloud:
                cycle = SpaceCycle(cloud, self.store, self.settings, self.metrics, self.clock,
                                   self.render)
            cycle.settings = self.settings
            report = await asyncio.wait_for(cycle.run(space),
                                            self.settings.space_timeout_seconds)
        except TimeoutError:
            report = CycleReport(name, started, ok=False, error=(
                f"cycle exceeded space_timeout_seconds={self.settings.space_timeout_seconds:g}"
                " and was cancelled"))
            self.metrics.cycles.labels(name, "timeout").inc()
        except CloudError as exc:  # e.g. the adapter cannot be built (secret file)
            report = CycleReport(name, started, ok=False, error=f"{type(exc).__name__}: {exc}")
            self.metrics.cycles.labels(name, "error").inc()
        except Exception as exc:  # a bug or an unexpected library error: report, carry on
            log.exception("space=%s machinetype=- machine=- cycle failed", name)
            report = CycleReport(name, started, ok=False,
                                 error=f"internal error {type(exc).__name__}: {exc}")
            self.metrics.cycles.labels(name, "crash").inc()
        report.config_ok = state.config_ok
        report.duration = self.clock() - started
        if not report.ok:
            log.error("space=%s machinetype=- machine=- cycle failed: %s", name, report.error)
            event = Event(self.clock(), name, "", "", "error", report.error)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.add_events, [event])
        return report, cycle
