"""One cycle of one space: observe -> plan -> act -> record.

* observe: list the space's machines, resolve flavors, read limits when they matter
  (``observe.CloudReader``), and read the store's history of the space;
* plan: ``decide.decide`` (pure) reconciles, plans and says what to record;
* act: first record the decisions (machine rows, aborts) in one transaction, then carry
  out the plan (``act.Actor``: intents before creates);
* record: the events of the whole cycle, in order, and the metrics, and the CPU each
  stage took (``CycleReport.cpu``, ``stages.py``).

The space's ``SpaceCycle`` carries the planner's ``RuleMemo`` from one cycle to the next
(``rules.py``): a machine whose record did not change is not walked through the deletion
rules again before the first time one of them could apply.

Crash safety: every decision is written to the store before the cloud is asked (intents
before creates, delete requests before deletes), and every create carries a name and tags
that the next listing recognises.  A manager killed at any instant therefore leaves no
duplicate (the intent still counts) and no orphan (the listing adopts what it finds).

Several instances: with a ``Tenure`` (``engine/leases.py``) every engine write of the
cycle (decisions, intents, a refused create's end, accounting) carries the lease's fence,
and the actor checks the lease by its own clock before every cloud call that acts; a
lost lease raises ``store.leases.LeaseLost`` (nothing written) to the daemon.

Errors: a ``CloudError`` fails the cycle with its message (reported, retried next cycle);
anything else is a bug and propagates to the daemon, which logs its traceback.  The store
is synchronous; its calls run in worker threads so a slow database never blocks other
spaces' event-loop work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cloudvac.config.models import Space
from cloudvac.config.settings import Settings
from cloudvac.engine.accounting import account_ended
from cloudvac.engine.act import Acted, Actor
from cloudvac.engine.apel import KEEP_SECONDS as APEL_KEEP_SECONDS
from cloudvac.engine.apel import export_apel
from cloudvac.engine.credentials import CredentialWatch
from cloudvac.engine.decide import Changes, Starts, decide
from cloudvac.engine.leases import Tenure
from cloudvac.engine.observe import CloudReader
from cloudvac.engine.planner import Observation, TypeStatus
from cloudvac.engine.pressure import BREAKER_SECONDS, Pressure
from cloudvac.engine.reconcile import reconcile
from cloudvac.engine.removing import record_removals
from cloudvac.engine.rules import RuleMemo
from cloudvac.engine.stages import StageTimes, Stopwatch
from cloudvac.engine.tools import CycleTools
from cloudvac.model.cloud import Cloud
from cloudvac.model.errors import AuthFailed, CloudError
from cloudvac.model.records import Event
from cloudvac.model.states import MachineState
from cloudvac.store.leases import Fence

log = logging.getLogger("cloudvac.engine.cycle")
#: Creates start only in the first half of a cycle's deadline (``space_timeout_seconds``);
#: those left are planned again next cycle, so a burst never gets a cycle cancelled.
ACT_SHARE = 0.5


def log_event(event: Event) -> None:
    level = logging.ERROR if event.kind == "error" else logging.INFO
    log.log(level, "space=%s machinetype=%s machine=%s %s: %s", event.space,
            event.machinetype or "-", event.machine or "-", event.kind, event.message)


@dataclass(frozen=True, slots=True)
class CycleReport:
    space: str
    started: float
    duration: float = 0.0
    ok: bool = True
    error: str = ""
    created: int = 0
    create_failures: int = 0
    deleted: int = 0
    deferred: int = 0
    """Creates left for the next cycle because acting reached its deadline."""
    status: Mapping[str, TypeStatus] = field(default_factory=dict)
    config_ok: bool = True
    listed: int = 0
    api_requests: Mapping[str, int] = field(default_factory=dict)
    """HTTP requests the adapter made this cycle by kind (adapters that count: openstack)."""
    cpu: StageTimes = field(default_factory=StageTimes)
    """CPU seconds per stage of the cycle (``stages.py``)."""


class SpaceCycle:
    """Runs cycles for one space on one cloud adapter with one set of settings (build a
    new one when either changes).  All state that matters is in the store."""

    def __init__(self, cloud: Cloud, settings: Settings, tools: CycleTools) -> None:
        self.cloud, self.settings, self.tools = cloud, settings, tools
        self.reader = CloudReader(cloud, tools.clock())
        self.watch = Stopwatch()  # CPU per stage, added up over every cycle
        self.memo = RuleMemo()  # the planner's judgements, from one cycle to the next
        self.actor = Actor(cloud, settings, tools, self.watch)
        self.credentials = CredentialWatch(cloud, tools.store)
        self.pressure = Pressure()
        self._shown: dict[str, tuple[Mapping[str, int], int]] = {}  # what the gauges hold

    async def run(self, space: Space, tenure: Tenure | None = None) -> CycleReport:
        """One cycle (``tenure``: the lease it runs under, see the module doc); while
        the cloud refuses the space's credentials, no call at all until the backoff
        (``pressure.py``) has passed."""
        metrics, now, tick = self.tools.metrics, self.tools.clock(), self.tools.monotonic()
        wait = self.pressure.auth.left(tick)
        if wait > 0:
            metrics.cycles.labels(space.name, "auth_backoff").inc()
            return CycleReport(space.name, now, ok=False, error=(
                f"credentials refused {self.pressure.auth.failures} time(s): next attempt "
                f"in {wait:.0f}s (not before, to spare the account a lockout)"))
        before = metrics.requests_of(space.name)
        try:
            report = await self._cycle(space, now, tick, tenure)
            self.pressure.auth_accepted()
        except CloudError as exc:
            report = self._failed(space, now, tick, exc)
        after = metrics.requests_of(space.name)
        used = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
        duration = self.tools.monotonic() - tick
        metrics.cycles.labels(space.name, "ok" if report.ok else "error").inc()
        if report.ok:
            metrics.cycle_done(space.name, self.tools.clock())
        metrics.cycle_seconds.labels(space.name).observe(max(duration, 0.0))
        self._waits(space, self.tools.monotonic())
        return replace(report, duration=duration, api_requests=used)

    def _failed(self, space: Space, now: float, tick: float, exc: CloudError) -> CycleReport:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, AuthFailed):
            error += f"; next attempt in {self.pressure.auth_refused(tick):.0f}s"
        self.tools.metrics.cloud_errors.labels(space.name, type(exc).__name__).inc()
        return CycleReport(space.name, now, ok=False, error=error)

    async def _cycle(self, space: Space, now: float, tick: float,
                     tenure: Tenure | None) -> CycleReport:
        store, pressure, watch = self.tools.store, self.pressure, self.watch
        begun = watch.times()
        with watch.stage("listing"):
            observation, seen = await self.reader.observe(space, now, tick)
        observation = replace(observation, blocked_flavors=pressure.blocked_flavors(tick),
                              stopped=pressure.breaker(tick), memo=self.memo)
        history = await asyncio.to_thread(watch.call, "store_read", store.history, space.name)
        room = self.reader.new_room()
        if room is not None:  # for status: foreign usage leaving no room is told there
            await asyncio.to_thread(watch.call, "store_write", store.set_room, space.name, room)
        observation = await self.reader.settle_intents(observation, history, now)
        with watch.stage("reconcile"):
            reconciled = reconcile(space, observation.machines, history, now,
                                   observation.absent)
        with watch.stage("plan"):
            decision = decide(space, observation, history, now, reconciled)
        opened = self._note_starts(space, observation, decision.starts, now, tick)
        await self._record(space, decision.changes, now,
                           None if tenure is None else tenure.fence)
        await record_removals(self.tools, space, decision.plan.removal)
        # The decisions' events are stored before acting: a manager killed while acting
        # loses only what acting itself would have said (the next listing says the rest).
        await self._log(space, (*seen, *decision.changes.events, *opened))
        deadline = tick + ACT_SHARE * self.settings.space_timeout_seconds
        creates = () if opened else decision.plan.creates  # the breaker opened just now
        acted = await self.actor.act(space, decision.plan.deletes, creates, deadline, tenure)
        self._note_acted(acted, self.tools.monotonic())
        warnings = await self.credentials.check(space, now)
        await self._log(space, (*acted.events, *warnings))
        self._gauges(space, decision.plan.status, decision.changes.aborts)
        return CycleReport(space.name, now, created=acted.created,
                           create_failures=acted.create_failures, deleted=acted.deleted,
                           deferred=acted.deferred, status=decision.plan.status,
                           listed=len(observation.machines),
                           cpu=watch.times().since(begun))

    def _note_starts(self, space: Space, observation: Observation, starts: Starts,
                     now: float, tick: float) -> tuple[Event, ...]:
        """Feed this cycle's start outcomes to the breaker and the flavor backoff."""
        for mt in starts.no_host:
            flavor = observation.flavors.get(mt)
            if flavor is not None:
                self.pressure.flavor_refused(flavor.name, tick)
        why = self.pressure.note_starts(starts.ok, starts.failed, tick)
        if not why:
            return ()
        return (Event(now, space.name, "", "", "error", f"circuit breaker open: {why}; "
                      f"no creation for {BREAKER_SECONDS:.0f}s"),)

    def _note_acted(self, acted: Acted, tick: float) -> None:
        for flavor in acted.refused:
            self.pressure.flavor_refused(flavor, tick)
        for flavor in acted.accepted:
            self.pressure.flavor_accepted(flavor)
        if acted.auth_refused:
            self.pressure.auth_refused(tick)

    async def _record(self, space: Space, changes: Changes, now: float,
                      fence: Fence | None = None) -> None:
        if changes.records or changes.aborts:  # a steady cycle changes nothing: no thread hop
            store, watch = self.tools.store, self.watch
            await asyncio.to_thread(watch.call, "store_write", store.apply, space.name,
                                    changes.records, changes.aborts, now, fence)
            if await asyncio.to_thread(watch.call, "store_write", account_ended, store, space,
                                       changes.records, now, fence) \
                    and self.settings.apel_outgoing_dir is not None:
                records = await asyncio.to_thread(store.accounting, now - APEL_KEEP_SECONDS)
                await asyncio.to_thread(export_apel, self.settings, space, records, lambda: now)

    async def _log(self, space: Space, events: tuple[Event, ...]) -> None:
        for event in events:
            log_event(event)
        if events:
            await asyncio.to_thread(self.watch.call, "store_write",
                                    self.tools.store.add_events, events)

    def _waits(self, space: Space, tick: float) -> None:
        waits = self.tools.metrics.space_waits
        waits.labels(space.name, "credentials").set(self.pressure.auth.left(tick))
        waits.labels(space.name, "breaker").set(max(0.0, self.pressure.breaker_until - tick))
        flavors = self.pressure.blocked_flavors(tick)
        waits.labels(space.name, "flavors").set(len(flavors))

    def _gauges(self, space: Space, status: Mapping[str, TypeStatus],
                aborts: Mapping[str, float]) -> None:
        metrics = self.tools.metrics
        for mt in aborts:
            metrics.aborts.labels(space.name, mt).inc()
        shown = {mt: (st.machines, st.processors) for mt, st in status.items()}
        if shown == self._shown:
            return  # the gauges hold these already (16 label lookups a space cycle)
        self._shown = shown
        for mt, st in status.items():
            for state in MachineState:
                metrics.machines.labels(space.name, mt, state.value).set(
                    st.machines.get(state.value, 0))
            metrics.processors.labels(space.name, mt).set(st.processors)
