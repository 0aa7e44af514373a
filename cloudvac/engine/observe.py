"""The cycle's first step: what one space's cloud says now.

One listing every cycle; flavors from the adapter (which caches its flavor list); the
cloud's limits only when they can matter (``CloudReader.limits``); and, for intents an
earlier incarnation left behind, a direct lookup by name (``CloudReader.settle_intents``).
Holds the engine's own caches: the last quota answer that left no room, and the intents
already looked up.  Each read of the limits also tells what the quota leaves this space
once usage by servers cloudvac does not own is counted (``ProjectRoom``); the cycle
records it when it changed, for ``cloudvac status``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.planner import Observation
from cloudvac.model.cloud import Cloud, Flavor, Limits, ObservedMachine
from cloudvac.model.errors import Misconfigured
from cloudvac.model.records import Event, ProjectRoom, SpaceHistory
from cloudvac.model.states import MachineState

log = logging.getLogger("cloudvac.engine.observe")
#: An intent left by an earlier incarnation is looked up once it is this old: by then a
#: create request still in flight when that incarnation died has been answered.
LOOKUP_AFTER_SECONDS = 60.0
#: Lookups per cycle at most (one request each), so a crash loop cannot flood the cloud.
LOOKUPS_PER_CYCLE = 20


@dataclass(frozen=True, slots=True)
class _FullQuota:
    at: float
    ours: tuple[int, int]
    limits: Limits


class CloudReader:
    """Observes one space's cloud, cycle after cycle."""

    def __init__(self, cloud: Cloud, born: float) -> None:
        """``born``: when this reader started (the engine's clock); intents written before
        then are an earlier incarnation's."""
        self.cloud, self.born = cloud, born
        self._full: _FullQuota | None = None
        self._looked_up: set[str] = set()
        self._room: ProjectRoom | None = None
        self._room_new = False
        self._benchmark_warned: set[str] = set()

    def new_room(self) -> ProjectRoom | None:
        """What the quota leaves beside foreign usage, when the last read of the limits
        changed it since the previous call (else None)."""
        room, self._room_new = (self._room if self._room_new else None), False
        return room

    async def settle_intents(self, observation: Observation, history: SpaceHistory,
                             now: float) -> Observation:
        """Ask the cloud directly about intents an earlier incarnation left unlisted: a
        server found joins the observation, a name the cloud has none of is ``absent``
        (its intent is freed at once instead of holding capacity for intent_seconds)."""
        listed = {m.name for m in observation.machines}
        stale = [r.name for r in history.machines.values()
                 if r.state is MachineState.INTENT and r.name not in listed
                 and r.name not in self._looked_up and r.created_at is not None
                 and r.created_at < self.born and now - r.created_at >= LOOKUP_AFTER_SECONDS]
        found, absent = list(observation.machines), set(observation.absent)
        for name in stale[:LOOKUPS_PER_CYCLE]:
            self._looked_up.add(name)
            machine = await self.cloud.find_machine(name)
            if machine is None:
                absent.add(name)
            else:
                found.append(machine)
        if not stale:
            return observation
        return replace(observation, machines=found, absent=frozenset(absent))

    async def observe(self, space: Space, now: float,
                      tick: float) -> tuple[Observation, tuple[Event, ...]]:
        """The observation, and error events (stamped ``now``) for machinetypes whose
        flavor cannot be resolved (those cannot create this cycle; the others carry on).
        ``tick`` is the monotonic clock, for the quota re-read interval."""
        machines = await self.cloud.list_machines()
        flavors, events = await self._flavors(space, now)
        limits = await self.limits(space, machines, flavors, tick, now)
        return Observation(machines, limits, flavors), events

    async def _flavors(self, space: Space,
                       now: float) -> tuple[dict[str, Flavor], tuple[Event, ...]]:
        found: dict[str, Flavor] = {}
        events: list[Event] = []
        for mt in space.machinetypes.values():
            if mt.target_share <= 0:
                continue
            try:
                found[mt.name] = await self.cloud.flavor(
                    space.flavors_for(mt), mt.min_processors, mt.max_processors)
            except Misconfigured as exc:
                events.append(Event(now, space.name, mt.name, "", "error", f"flavor: {exc}"))
                continue
            self._warn_benchmark(space, mt, found[mt.name])
        return found, tuple(events)

    def _warn_benchmark(self, space: Space, mt: Machinetype, flavor: Flavor) -> None:
        """Once per flavor (a reader is one space's): the flavor's benchmark differs from the
        machinetype's ``hs06_per_processor``, which wins (``planner.machine_hs06``)."""
        config, declared = mt.hs06_per_processor, flavor.benchmark_value
        if config is None or declared is None or math.isclose(config, declared) \
                or flavor.name in self._benchmark_warned:
            return
        self._benchmark_warned.add(flavor.name)
        log.warning("space=%s machinetype=%s machine= flavor %s declares %g %s per processor "
                    "(accounting:benchmark_value) but hs06_per_processor is %g: using %g, so "
                    "cloudvac's accounting and the site's cloud accounting differ",
                    space.name, mt.name, flavor.name, declared,
                    flavor.benchmark_type or "HS06", config, config)

    async def limits(self, space: Space, machines: Sequence[ObservedMachine],
                     flavors: Mapping[str, Flavor], tick: float, now: float = 0.0) -> Limits:
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
        live = [m for m in machines if m.state is not MachineState.GONE]  # hold nothing
        ours = (sum(m.processors for m in live), len(live))
        if limit is not None and ours[0] >= limit:
            return Limits()
        full = self._full
        if full is not None and full.ours == ours and \
                tick - full.at < space.quota_reread_seconds:
            return full.limits
        limits = await self.cloud.limits()
        room = any(limits.fits(f) for f in flavors.values())
        self._full = None if room else _FullQuota(tick, ours, limits)
        self._note_room(limits, ours, flavors, now)
        return limits

    def _note_room(self, limits: Limits, ours: tuple[int, int], flavors: Mapping[str, Flavor],
                   now: float) -> None:
        free_p, free_i = limits.free_processors, limits.free_instances
        room = ProjectRoom(
            now, limits.foreign_processors,
            None if free_p is None else free_p + ours[0],
            None if free_i is None else free_i + ours[1],
            min((f.processors for f in flavors.values()), default=0))
        if self._room is None or replace(self._room, at=now) != room:
            self._room, self._room_new = room, True
