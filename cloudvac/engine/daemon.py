"""The daemon: every space is its own asyncio task with its own deadline.

Contract:

* The configuration directory is re-read and validated once per ``cycle_seconds``.  A
  space whose new configuration is broken keeps its last good one (and is reported); a
  broken space never seen good is skipped; every other space carries on.
* A space's cycle that raises, or overruns ``space_timeout_seconds``, is cancelled and
  reported; its task carries on at the next period.  Nothing a cloud does can stop the
  daemon or delay another space.
* ``stop()`` (SIGTERM) lets cycles in progress finish within their deadline, then returns.
* ``reread()`` (SIGHUP, ``systemctl reload``) re-reads the configuration at once instead
  of at the end of the period, logs that it did, and wakes the spaces whose configuration
  changed (a wake: their next cycle comes forward, no cycle is added).
* With ``cycles=N`` each space runs N cycles and ``run()`` returns (demo, tests).
* ``wake(space)`` (a VM's shutdown message, from any process through ``engine/wakes.py``;
  a cycle that deleted machines) brings the space's next cycle forward to ``wake_seconds``
  from then.  The early cycle takes the place of the next scheduled one, never more than
  ``WAKE_AHEAD`` (2) periods early (a sooner wake waits until then): a space runs one
  cycle per ``cycle_seconds`` slot, woken or not, so wakes never add listings.  Two,
  because a refill takes two cycles (one deletes the stopped VM, the next creates).
* Every delay is on the monotonic clock: a wall-clock step never freezes a space.
* With a ``LeaseKeeper`` (``cloudvac run``; several instances may share a PostgreSQL
  store): a round every ``cycle_seconds / ROUNDS_PER_CYCLE`` (``engine/leases.py``), the
  first before any cycle.  A space cycles only while this instance holds its lease; every
  engine write of the cycle carries the lease's fence.  A space not owned idles (no
  listing, no create) until it is; a newly acquired one cycles at once, with a new
  ``SpaceCycle`` (intents written before are an earlier owner's: ``settle_intents``).
  A write that finds the lease lost (``LeaseLost``) ends the cycle, reported, and the
  space idles.  ``stop()`` releases every lease once the cycles in progress have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cloudvac.clouds.factory import CloudFactory
from cloudvac.config import LoadedConfig, Settings, Space
from cloudvac.context.userdata import check_space
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.cycle import CycleReport, SpaceCycle
from cloudvac.engine.leases import ROUNDS_PER_CYCLE, LeaseKeeper, Tenure
from cloudvac.engine.tools import CycleTools
from cloudvac.model.errors import CloudError
from cloudvac.model.records import Event
from cloudvac.model.redact import redact
from cloudvac.store.leases import LeaseLost

log = logging.getLogger("cloudvac.engine.daemon")
WAKE_AHEAD = 2  # a wake may take a slot this many periods ahead, no further


@dataclass(slots=True)
class SpaceState:
    config: Space
    config_ok: bool = True
    task: asyncio.Task[None] | None = None
    cycles: int = 0
    reports: list[CycleReport] = field(default_factory=list)
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = 0
    """The lease generation the space's cycle object was built for (with a keeper)."""


class Daemon:
    def __init__(  # noqa: PLR0913 - the lease keeper joined the five parts
            self, config: ConfigSource, settings: Settings, tools: CycleTools,
            clouds: CloudFactory, keep_reports: int = 0,
            keeper: LeaseKeeper | None = None) -> None:
        """``keep_reports``: how many of each space's last cycle reports to keep (demo);
        ``keeper``: this instance's leases (None: every space is this daemon's)."""
        self.config, self.settings, self.tools, self.clouds = config, settings, tools, clouds
        self.keep_reports, self.keeper = keep_reports, keeper
        self.spaces: dict[str, SpaceState] = {}
        self._current: dict[str, Space] = {}
        self.last_load: LoadedConfig | None = None
        self._stop = asyncio.Event()
        self._reread = asyncio.Event()
        self._cycles: int | None = None
        self._leased: set[str] = set()
        self._round = asyncio.Lock()  # one keeper round at a time
        """The spaces the last keeper round was given."""

    def current_spaces(self) -> dict[str, Space]:
        """The configuration in force for every managed space (last good one if broken);
        built once per ``load`` (the VM door asks at every request), never changed."""
        return self._current

    def stop(self) -> None:
        self._stop.set()

    def reread(self) -> None:
        """Re-read the configuration now (SIGHUP).  Called from the event loop."""
        self._reread.set()

    def wake(self, space: str, at: float | None = None) -> None:
        """Bring ``space``'s next cycle forward to ``wake_seconds`` from now, or from ``at``
        (``tools.clock``: a message another process got; one older than a period is past).
        Called from the event loop (the web handlers run there)."""
        state, delay = self.spaces.get(space), self.settings.wake_seconds
        if at is not None:
            age = self.tools.clock() - at
            if age > self.settings.cycle_seconds:
                return
            delay = max(0.0, delay - age)
        if state is not None and self.settings.wake_seconds > 0 and not self._stop.is_set():
            asyncio.get_running_loop().call_later(delay, state.woken.set)

    async def run(self, cycles: int | None = None) -> None:
        # A cycle of 100 spaces x 1,000 machines builds ~10^6 short-lived objects; the default
        # generation-0 threshold (700) made collection cost 3x more (benchmarks/scale.py).
        gc.set_threshold(50_000, 20, 100)
        self._cycles = cycles
        keeping: asyncio.Task[None] | None = None
        try:
            asked = False
            if self.keeper is not None:
                self.load()
                await self._lease_round()
                keeping = asyncio.get_running_loop().create_task(self._keep(), name="leases")
            while not self._stop.is_set():
                before = self.current_spaces()
                loaded = self.reload()
                if self.keeper is not None and set(self.spaces) != self._leased:
                    await self._lease_round()  # a space came or went: now, not in a round
                if asked:
                    self._reread_done(loaded, before)
                if cycles is not None and self.spaces and all(
                        s.task is not None and s.task.done() for s in self.spaces.values()):
                    break
                if cycles is not None and not self.spaces:
                    break
                asked = await self._pause()
        finally:
            self._stop.set()
            tasks = [s.task for s in self.spaces.values() if s.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            if keeping is not None:  # a round in a thread cannot be cancelled: let it end
                await asyncio.gather(keeping, return_exceptions=True)
            await self._leave()
            for name in list(self.spaces):
                await self.clouds.forget(name)

    async def _keep(self) -> None:
        """Keeper rounds until the stop; a round that fails is logged and retried."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(),
                                       self.settings.cycle_seconds / ROUNDS_PER_CYCLE)
            if not self._stop.is_set():
                await self._lease_round()

    async def _lease_round(self) -> None:
        keeper = self.keeper
        if keeper is None:
            return
        try:
            async with self._round:
                self._leased = set(self.spaces)
                result = await asyncio.to_thread(keeper.round, sorted(self._leased))
        except Exception as exc:  # the database is away: leases run out, writes are fenced
            log.error("space=- machinetype=- machine=- lease round failed: %s: %s",
                      type(exc).__name__, redact(str(exc)))
            return
        for name in result.acquired:  # cycles at once, on a new cycle object
            state = self.spaces.get(name)
            if state is not None:
                state.woken.set()

    async def _leave(self) -> None:
        if self.keeper is None:
            return
        try:
            released = await asyncio.to_thread(self.keeper.leave)
            log.info("space=- machinetype=- machine=- stopped: %d space leases released",
                     released)
        except Exception as exc:
            log.error("space=- machinetype=- machine=- releasing the leases failed (they "
                      "expire by themselves): %s: %s", type(exc).__name__, redact(str(exc)))

    async def _pause(self) -> bool:
        """Wait one period, or less for the stop, a re-read or (with counted cycles) a space
        that ran its last cycle; True if a re-read was asked."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stop.wait()),
                                           asyncio.ensure_future(self._reread.wait())}
        ending: set[asyncio.Future[Any]] = set()
        if self._cycles is not None:  # `run --cycles N` returns when its cycles end, not later
            ending = {s.task for s in self.spaces.values()
                      if s.task is not None and not s.task.done()}
        _, pending = await asyncio.wait(waits | ending, timeout=self.settings.cycle_seconds,
                                        return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending - ending:
            waiter.cancel()
        asked = self._reread.is_set()
        self._reread.clear()
        return asked

    def _reread_done(self, loaded: LoadedConfig, before: Mapping[str, Space]) -> None:
        """Say what a SIGHUP re-read found; wake the spaces whose configuration changed."""
        changed = sorted(name for name, state in self.spaces.items()
                         if before.get(name) != state.config)
        log.info("space=- machinetype=- machine=- SIGHUP: configuration re-read from %s: %d "
                 "spaces in force, %d invalid, %d problems; changed: %s",
                 self.config.directory, len(self.spaces), len(loaded.broken),
                 len(loaded.issues), ", ".join(changed) or "none")
        for name in changed:
            self.wake(name)

    def reload(self) -> LoadedConfig:
        """Re-read the configuration; start, update or stop space tasks accordingly."""
        loaded = self.load()
        self._start_tasks()
        return loaded

    def load(self) -> LoadedConfig:
        """Re-read the configuration and update the spaces, starting no task: the web
        side must know the spaces before it serves a VM (``current_spaces``)."""
        loaded = self.config.load(self.last_load)
        if self.last_load is None or loaded.warnings != self.last_load.warnings:
            for warning in loaded.warnings:
                log.warning("config: %s", warning)
        self.last_load = loaded
        metrics = self.tools.metrics
        metrics.config_errors.set(len(loaded.issues))
        metrics.store_reopened.set(self.tools.store.reopened)
        for issue in loaded.issues:
            log.error("config: %s", issue)
        if loaded.settings is not None and loaded.settings != self.settings:
            log.info("space=- machinetype=- machine=- settings reloaded")
            self.settings = loaded.settings
        for name, space in list(loaded.spaces.items()):
            if self._render_problems(space):
                del loaded.spaces[name]
                loaded.broken.add(name)
                continue
            state = self.spaces.get(name)
            if state is None:
                state = self.spaces[name] = SpaceState(space)
                log.info("space=%s machinetype=- machine=- managing (%d machinetypes)", name,
                         len(space.machinetypes))
            state.config, state.config_ok = space, True
            metrics.space_config_ok.labels(name).set(1)
        self._mark_broken(loaded.broken)
        try:
            self._drop_removed(loaded)
        except Exception as exc:  # the store is away (a PostgreSQL restart): next re-read
            log.error("space=- machinetype=- machine=- removed spaces not checked, the store "
                      "failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        self._current = {name: state.config for name, state in self.spaces.items()}
        return loaded

    def _render_problems(self, space: Space) -> list[str]:
        """Trial-render a space's machinetypes when its configuration changed."""
        state = self.spaces.get(space.name)
        if state is not None and state.config == space and state.config_ok:
            return []
        problems = check_space(space, self.settings)
        for problem in problems:
            log.error("space=%s machinetype=- machine=- user_data %s", space.name, problem)
        return problems

    def _mark_broken(self, broken: set[str]) -> None:
        for name in broken:
            state = self.spaces.get(name)
            self.tools.metrics.space_config_ok.labels(name).set(0)
            if state is None:
                log.error("space=%s machinetype=- machine=- skipped: configuration invalid "
                          "and no earlier good configuration", name)
            else:
                state.config_ok = False
                log.error("space=%s machinetype=- machine=- configuration invalid: keeping "
                          "the last good one", name)

    def _drop_removed(self, loaded: LoadedConfig) -> None:
        """A space that left the configuration keeps its last one and runs drain-only
        cycles (its ``"*"`` removal row: no creates, every machine removed, subject to the
        confirmation guard, ``engine/removal.py``) until it has no machine; then it is
        dropped.  A space back in the configuration cancels its row.  At start, spaces with
        machines in the store but in no configuration are reported and left alone."""
        store, now = self.tools.store, self.tools.clock()
        for name in store.cancel_space_removals(sorted(loaded.spaces)):
            log.info("space=%s machinetype=- machine=- back in the configuration: its "
                     "removal is cancelled", name)
        seen = set(loaded.spaces) | loaded.broken
        if all(state.task is None for state in self.spaces.values()):  # before any cycle
            for name in sorted(store.live_spaces() - seen - set(self.spaces)):
                log.warning("space=%s machinetype=- machine=- has machines in the store but "
                            "is in no configuration: left alone (no credentials to act on "
                            "them); see `cloudvac status`", name)
        for name in [n for n in self.spaces if n not in seen and not loaded.issues]:
            live = len(store.machines(name))
            if live == 0:
                log.warning("space=%s machinetype=- machine=- removed from configuration and "
                            "no machine of it is left: no longer managed", name)
                state = self.spaces.pop(name)
                if state.task is not None:
                    state.task.cancel()
                store.cancel_space_removals([name])
            elif store.notice_space_removal(name, now, live):
                log.warning("space=%s machinetype=- machine=- removed from configuration with "
                            "%d machine(s): drained on its last configuration (no creates) "
                            "until none is left", name, live)

    def _start_tasks(self) -> None:
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

    async def _space_loop(self, name: str) -> None:
        cycle: SpaceCycle | None = None
        clock = self.tools.monotonic
        slot = clock()  # the scheduled time of the cycle about to run
        while not self._stop.is_set():
            state = self.spaces.get(name)
            if state is None:
                return
            tenure = self.keeper.begin(name) if self.keeper is not None else None
            if self.keeper is not None and tenure is None:
                await self._idle(state)  # not ours: no listing, no create
                slot = clock()
                continue
            if tenure is not None and tenure.fence.generation != state.generation:
                cycle, state.generation = None, tenure.fence.generation
            try:
                report, cycle = await self._one_cycle(name, state, cycle, tenure)
            finally:
                if self.keeper is not None:
                    self.keeper.end(name)
            state.cycles += 1
            if self.keep_reports:
                state.reports = [*state.reports[-(self.keep_reports - 1):], report]
            if self._cycles is not None and state.cycles >= self._cycles:
                return
            if report.deleted:  # capacity frees once the cloud has removed them
                self.wake(name)
            # The next slot a period on; a cycle that overran re-anchors the grid.
            slot = max(slot + self.settings.cycle_seconds, clock())
            slot = await self._until_next(state, slot)

    async def _idle(self, state: SpaceState) -> None:
        """Wait for a wake (the keeper acquired the space), the stop, or a period."""
        state.woken.clear()
        waits = {asyncio.ensure_future(self._stop.wait()),
                 asyncio.ensure_future(state.woken.wait())}
        _, pending = await asyncio.wait(waits, timeout=self.settings.cycle_seconds,
                                        return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    async def _until_next(self, state: SpaceState, slot: float) -> float:
        """Wait for ``slot``, or a wake (which takes that slot early, but never more than
        WAKE_AHEAD periods early: a wake that comes sooner waits until then, not for the
        slot's own time), or the stop; returns the slot the coming cycle fills."""
        clock, period, woken = self.tools.monotonic, self.settings.cycle_seconds, state.woken
        woken.clear()  # wakes before this cycle were served by it
        while not self._stop.is_set():
            now, early = clock(), slot - WAKE_AHEAD * period
            if now >= slot or (woken.is_set() and now >= early):
                break  # the slot's time, or a wake this slot may serve
            waits = {asyncio.ensure_future(self._stop.wait())}
            if not woken.is_set():
                waits.add(asyncio.ensure_future(woken.wait()))
            _, pending = await asyncio.wait(
                waits, timeout=max(0.0, (early if woken.is_set() else slot) - now),
                return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
        return slot

    def _cycle_for(self, space: Space, cycle: SpaceCycle | None) -> SpaceCycle:
        """The space's cycle: the same object while its cloud adapter and the settings
        stay the same, else a new one."""
        cloud = self.clouds.get(space, self.settings)
        if cycle is None or cycle.cloud is not cloud or cycle.settings is not self.settings:
            cycle = SpaceCycle(cloud, self.settings, self.tools)
        return cycle

    async def _one_cycle(self, name: str, state: SpaceState, cycle: SpaceCycle | None,
                         tenure: Tenure | None = None
                         ) -> tuple[CycleReport, SpaceCycle | None]:
        started, metrics = self.tools.clock(), self.tools.metrics
        begun = self.tools.monotonic()
        timeout = self.settings.space_timeout_seconds
        try:
            cycle = self._cycle_for(state.config, cycle)
            report = await asyncio.wait_for(cycle.run(state.config, tenure), timeout)
        except LeaseLost as exc:  # another instance owns it now: idle until ours again
            if self.keeper is not None:
                self.keeper.drop(name, exc.fence)
            report = CycleReport(name, started, ok=False, error=str(exc))
            metrics.cycles.labels(name, "lease_lost").inc()
        except TimeoutError:
            report = CycleReport(name, started, ok=False, error=(
                f"cycle exceeded space_timeout_seconds={timeout:g} and was cancelled"))
            metrics.cycles.labels(name, "timeout").inc()
        except CloudError as exc:  # e.g. the adapter cannot be built (secret file)
            report = CycleReport(name, started, ok=False, error=f"{type(exc).__name__}: {exc}")
            metrics.cycles.labels(name, "error").inc()
        except Exception as exc:  # a bug or an unexpected library error: report, carry on
            log.exception("space=%s machinetype=- machine=- cycle failed", name)
            report = CycleReport(name, started, ok=False,
                                 error=f"internal error {type(exc).__name__}: {exc}")
            metrics.cycles.labels(name, "crash").inc()
        # Error texts carry what clouds and identity providers answered: redacted here,
        # where every cycle report passes, before logs, the store, the demo's summary.
        report = replace(report, config_ok=state.config_ok, error=redact(report.error),
                         duration=self.tools.monotonic() - begun)
        if not report.ok:
            await self._report_failure(name, report)
        return report, cycle

    async def _report_failure(self, name: str, report: CycleReport) -> None:
        log.error("space=%s machinetype=- machine=- cycle failed: %s", name, report.error)
        event = Event(self.tools.clock(), name, "", "", "error", report.error)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.tools.store.add_events, [event])

