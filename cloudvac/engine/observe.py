"""The cycle's first step: what one space's cloud says now.

One listing every cycle; flavors from the adapter (which caches its flavor list); the
cloud's limits only when they can matter (``CloudReader.limits``).  Holds the one cache
that is the engine's own: the last quota answer that left no room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cloudvac.config.models import Space
from cloudvac.engine.planner import Observation
from cloudvac.model.cloud import Cloud, Flavor, Limits, ObservedMachine
from cloudvac.model.errors import Misconfigured
from cloudvac.model.records import Event


@dataclass(frozen=True, slots=True)
class _FullQuota:
    at: float
    ours: tuple[int, int]
    limits: Limits


class CloudReader:
    """Observes one space's cloud, cycle after cycle."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self._full: _FullQuota | None = None

    async def observe(self, space: Space, now: float,
                      tick: float) -> tuple[Observation, tuple[Event, ...]]:
        """The observation, and error events (stamped ``now``) for machinetypes whose
        flavor cannot be resolved (those cannot create this cycle; the others carry on).
        ``tick`` is the monotonic clock, for the quota re-read interval."""
        machines = await self.cloud.list_machines()
        flavors, events = await self._flavors(space, now)
        limits = await self.limits(space, machines, flavors, tick)
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
        return found, tuple(events)

    async def limits(self, space: Space, machines: Sequence[ObservedMachine],
                     flavors: Mapping[str, Flavor], tick: float) -> Limits:
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
        full = self._full
        if full is not None and full.ours == ours and \
                tick - full.at < space.quota_reread_seconds:
            return full.limits
        limits = await self.cloud.limits()
        room = any(limits.fits(f) for f in flavors.values())
        self._full = None if room else _FullQuota(tick, ours, limits)
        return limits
