"""One cycle of one space: observe -> reconcile -> plan -> record -> act -> record.

Crash safety: every decision is written to the store before the cloud is asked (intents
before creates, delete requests before deletes), and every create carries a name and tags
that the next listing recognises.  A manager killed at any instant therefore leaves no
duplicate (the intent still counts) and no orphan (the listing adopts what it finds).

The store is synchronous; its calls run in worker threads so a slow database never
blocks other spaces' event-loop work.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloudvac.clouds.base import (
    TAG_CREATED,
    TAG_MACHINETYPE,
    TAG_MANAGER,
    TAG_SPACE,
    AuthFailed,
    Cloud,
    CloudError,
    Flavor,
    Gone,
    Limits,
    MachineSpec,
    Misconfigured,
    ObservedMachine,
    QuotaExceeded,
)
from cloudvac.config.models import Machinetype, Settings, Space
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.planner import Create, Delete, Observation, TypeStatus, plan
from cloudvac.engine.records import Event, Intent, MachineUpdate
from cloudvac.engine.states import MachineState
from cloudvac.store import Store

log = logging.getLogger("cloudvac.engine.cycle")

UserDataRenderer = Callable[[Space, Machinetype, str], str]
FLAVOR_CACHE_SECONDS = 3600.0
LONG_LIVED = {"checkin_refresh": "Check-in refresh token"}
EXPIRY_WARNING_SECONDS = 14 * 86400.0
EXPIRY_WARNING_EVERY = 6 * 3600.0
_ALPHABET = string.ascii_lowercase + string.digits


def machine_name(space: str, machinetype: str) -> str:
    """``cloudvac-<space hash>-<machinetype>-<random>``: unique, recognisable, DNS-safe."""
    digest = hashlib.sha256(space.encode()).hexdigest()[:6]
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    return f"cloudvac-{digest}-{machinetype}-{suffix}"


def generic_user_data(space: Space, mt: Machinetype, name: str) -> str:
    """Placeholder until the contextualization layer renders per-VO templates."""
    return f"#cloud-config\n# cloudvac machine {name} ({space.name}/{mt.name})\n"


def _fits(limits: Limits, flavor: Flavor) -> bool:
    """Whether the cloud's free capacity could take one more machine of ``flavor``."""
    return (limits.free_processors is None or limits.free_processors >= flavor.processors) \
        and (limits.free_instances is None or limits.free_instances >= 1) \
        and (limits.free_ram_mb is None or limits.free_ram_mb >= flavor.ram_mb)


def log_event(event: Event, level: int = logging.INFO) -> None:
    log.log(level, "space=%s machinetype=%s machine=%s %s: %s", event.space,
            event.machinetype or "-", event.machine or "-", event.kind, event.message)


@dataclass(slots=True)
class CycleReport:
    space: str
    started: float
    duration: float = 0.0
    ok: bool = True
    error: str = ""
    created: int = 0
    create_failures: int = 0
    deleted: int = 0
    status: dict[str, TypeStatus] = field(default_factory=dict)
    config_ok: bool = True
    listed: int = 0
    api_requests: dict[str, int] = field(default_factory=dict)
    """HTTP requests the adapter made this cycle by kind (adapters that count: openstack)."""


class SpaceCycle:
    """Runs cycles for one space.  Holds only caches (flavors); all state is in the store."""

    def __init__(self, cloud: Cloud, store: Store, settings: Settings, metrics: EngineMetrics,
                 clock: Callable[[], float] = time.time,
                 render: UserDataRenderer = generic_user_data,
                 namer: Callable[[str, str], str] = machine_name) -> None:
        self.cloud, self.store, self.settings, self.metrics = cloud, store, settings, metrics
        self.clock, self.render, self.namer = clock, render, namer
        self._flavors: dict[tuple[tuple[str, ...], int, int | None], tuple[float, Flavor]] = {}
        self._warned_at = -EXPIRY_WARNING_EVERY
        self._quota_full: tuple[float, tuple[int, int], Limits] | None = None

    async def run(self, space: Space) -> CycleReport:
        now = self.clock()
        report = CycleReport(space.name, now)
        requests_before = self.metrics.requests_of(space.name)
        try:
            machines = await self.cloud.list_machines()
            report.listed = len(machines)
            events: list[Event] = []
            flavors = await self._resolve_flavors(space, now, events)
            limits = await self._limits(space, machines, flavors, now)
            history = await asyncio.to_thread(self.store.history, space.name)
            result = plan(space, Observation(machines, limits, flavors), history, now)
            rec = result.reconciled
            if rec.updates or rec.aborts:  # a steady cycle changes nothing: no thread hop
                await asyncio.to_thread(self.store.apply, space.name, rec.updates, rec.aborts)
            if rec.resolved_intents:
                await asyncio.to_thread(self.store.drop_intents, space.name,
                                        rec.resolved_intents)
            events = [*events, *result.events]
            for mt in rec.aborts:
                self.metrics.aborts.labels(space.name, mt).inc()
            sem = asyncio.Semaphore(self.settings.api_concurrency)
            deletes = [self._delete(space, d, sem, events) for d in result.deletes]
            outcomes = await asyncio.gather(*deletes)
            report.deleted = sum(outcomes)
            created, failed = await self._create_all(space, result.creates, sem, events)
            report.created, report.create_failures = created, failed
            report.status = result.status
            for event in events:
                log_event(event, logging.ERROR if event.kind == "error" else logging.INFO)
            events += await self._credentials(space, now)
            if events:
                await asyncio.to_thread(self.store.add_events, events)
            self._gauges(space, result.status)
        except CloudError as exc:
            report.ok, report.error = False, f"{type(exc).__name__}: {exc}"
            self.metrics.cloud_errors.labels(space.name, type(exc).__name__).inc()
        report.duration = self.clock() - now
        after = self.metrics.requests_of(space.name)
        report.api_requests = {k: n - requests_before.get(k, 0) for k, n in after.items()
                               if n != requests_before.get(k, 0)}
        self.metrics.cycles.labels(space.name, "ok" if report.ok else "error").inc()
        self.metrics.cycle_seconds.labels(space.name).observe(max(report.duration, 0.0))
        return report

    async def _limits(self, space: Space, machines: Sequence[ObservedMachine],
                      flavors: dict[str, Flavor], now: float) -> Limits:
        """The cloud's free capacity, read only when it can matter (each read is one
        request per cycle, the largest share of a full space's API traffic):

        * not at all when the machines just listed hold ``processors_limit``: limits
          only ever restrict creates, and foreign usage only restricts them further, so
          such a cycle creates nothing whatever the quota says (the planner then names
          the space limit as the reason);
        * the last answer again when it left no room for any flavor and our own usage
          (listed processors and servers) is unchanged: only foreign usage could free
          room then, and that is re-read at least every ``quota_reread_seconds``.
        """
        limit = space.processors_limit
        ours = (sum(m.processors for m in machines), len(machines))
        if limit is not None and ours[0] >= limit:
            return Limits()
        full = self._quota_full
        if full is not None and full[1] == ours and now - full[0] < space.quota_reread_seconds:
            return full[2]
        limits = await self.cloud.limits()
        room = any(_fits(limits, f) for f in flavors.values())
        self._quota_full = None if room else (now, ours, limits)
        return limits

    async def _resolve_flavors(self, space: Space, now: float,
                               events: list[Event]) -> dict[str, Flavor]:
        found: dict[str, Flavor] = {}
        for mt in space.machinetypes.values():
            if mt.target_share <= 0:
                continue
            key = (tuple(space.flavors_for(mt)), mt.min_processors, mt.max_processors)
            cached = self._flavors.get(key)
            if cached is not None and now - cached[0] < FLAVOR_CACHE_SECONDS:
                found[mt.name] = cached[1]
                continue
            try:
                flavor = await self.cloud.flavor(key[0], mt.min_processors, mt.max_processors)
            except Misconfigured as exc:
                events.append(Event(now, space.name, mt.name, "", "error", f"flavor: {exc}"))
                continue
            self._flavors[key] = (now, flavor)
            found[mt.name] = flavor
        return found

    async def _delete(self, space: Space, d: Delete, sem: asyncio.Semaphore,
                      events: list[Event]) -> bool:
        async with sem:
            try:
                await self.cloud.delete_machine(d.cloud_id)
            except Gone:
                pass
            except CloudError as exc:
                self.metrics.deletes.labels(space.name, d.machinetype, d.reason, "error").inc()
                events.append(Event(self.clock(), space.name, d.machinetype, d.name, "error",
                                    f"delete failed, retried later: {exc}"))
                return False
        self.metrics.deletes.labels(space.name, d.machinetype, d.reason, "ok").inc()
        return True

    async def _create_all(self, space: Space, creates: Sequence[Create], sem: asyncio.Semaphore,
                          events: list[Event]) -> tuple[int, int]:
        refused: set[str] = set()  # machinetypes (or "*") refused this cycle: stop asking

        async def one(create: Create) -> bool:
            async with sem:
                if "*" in refused or create.machinetype in refused:
                    return False
                return await self._create(space, create, refused, events)

        results = await asyncio.gather(*(one(c) for c in creates))
        return sum(results), len(results) - sum(results)

    async def _create(self, space: Space, create: Create, refused: set[str],
                      events: list[Event]) -> bool:
        mt = space.machinetypes[create.machinetype]
        now = self.clock()
        name = self.namer(space.name, mt.name)
        try:
            user_data = self.render(space, mt, name)
        except ValueError as exc:  # RenderError, UserDataInvalid: fix the config, no create
            refused.add(mt.name)
            self.metrics.creates.labels(space.name, mt.name, "RenderError").inc()
            events.append(Event(now, space.name, mt.name, name, "error",
                                f"user_data not rendered: {exc}"))
            return False
        intent = Intent(space.name, name, mt.name, create.flavor.processors, create.hs06, now)
        await asyncio.to_thread(self.store.add_intent, intent)
        spec = MachineSpec(
            name=name, space=space.name, machinetype=mt.name, flavor=create.flavor,
            image=mt.root_image or "", user_data=user_data,
            metadata={TAG_SPACE: space.name, TAG_MACHINETYPE: mt.name,
                      TAG_MANAGER: self.settings.manager_id, TAG_CREATED: f"{now:.0f}"})
        label = self.metrics.creates.labels
        try:
            cloud_id = await self.cloud.create_machine(spec)
        except (QuotaExceeded, Misconfigured, AuthFailed) as exc:
            # A definite refusal: nothing was created, so the intent must not hold capacity.
            await asyncio.to_thread(self.store.drop_intents, space.name, [name])
            refused.add("*" if not isinstance(exc, Misconfigured) else mt.name)
            label(space.name, mt.name, type(exc).__name__).inc()
            events.append(Event(now, space.name, mt.name, name, "error",
                                f"create refused ({type(exc).__name__}): {exc}"))
            return False
        except CloudError as exc:
            # Outcome unknown (timeout, 5xx): keep the intent; the listing will tell.
            label(space.name, mt.name, type(exc).__name__).inc()
            events.append(Event(now, space.name, mt.name, name, "error",
                                f"create outcome unknown ({type(exc).__name__}): {exc}"))
            return False
        update = MachineUpdate(name=name, machinetype=mt.name, state=MachineState.STARTING,
                               cloud_id=cloud_id, processors=create.flavor.processors,
                               hs06=create.hs06, created_at=now)
        await asyncio.to_thread(self.store.apply, space.name, [update], {})
        label(space.name, mt.name, "ok").inc()
        events.append(Event(now, space.name, mt.name, name, "create",
                            f"created with flavor {create.flavor.name} "
                            f"({create.flavor.processors} processors)"))
        return True

    async def _credentials(self, space: Space, now: float) -> list[Event]:
        """Record token expiry for status; warn ahead of long-lived credentials expiring."""
        expiry = getattr(self.cloud, "token_expiry", None)
        if expiry is None:
            return []
        found: dict[str, float] = expiry()
        await asyncio.to_thread(self.store.set_credentials, space.name, found)
        warnings = []
        for kind, label in LONG_LIVED.items():
            left = found.get(kind, now + EXPIRY_WARNING_SECONDS) - now
            if left < EXPIRY_WARNING_SECONDS and now - self._warned_at >= EXPIRY_WARNING_EVERY:
                self._warned_at = now
                warnings.append(Event(now, space.name, "", "", "error", f"{label} expires in "
                                      f"{left / 86400:.1f} days: renew it before then"))
        return warnings

    def _gauges(self, space: Space, status: dict[str, TypeStatus]) -> None:
        for mt, st in status.items():
            for state in MachineState:
                self.metrics.machines.labels(space.name, mt, state.value).set(
                    st.machines.get(state.value, 0))
            self.metrics.processors.labels(space.name, mt).set(st.processors)
