"""``cloudvac run --dry-run``: one cycle per space against the real cloud, read-only.

It observes as a cycle does (``observe.CloudReader``: the listing, flavors, the limits,
lookups of intents left unlisted: read requests only), reads the store's history (a
``Store`` opened ``read_only``, or none when there is no store yet) and decides
(``decide.decide``, the pure step every cycle takes); then it says what the cycle would
delete and why, what it would create, and why a machinetype would create no more.  It
never acts: no create, no delete, no intent and no other store write, no credential or
room record.  What only a running daemon holds in memory (refused credentials, flavors
the cloud refused lately, the circuit breaker) is not known here: such a daemon may
create less than is said.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cloudvac.clouds.factory import CloudFactory
from cloudvac.config.models import Space
from cloudvac.config.settings import Settings
from cloudvac.engine.decide import Decision, decide
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.observe import CloudReader
from cloudvac.engine.planner import Observation
from cloudvac.model.cloud import Cloud
from cloudvac.model.errors import CloudError
from cloudvac.model.records import Event, SpaceHistory
from cloudvac.model.redact import redact
from cloudvac.store import Store


@dataclass(frozen=True, slots=True)
class DryRun:
    """One space's dry cycle: what was seen and decided, or the error that stopped it."""

    space: str
    observation: Observation | None = None
    decision: Decision | None = None
    events: tuple[Event, ...] = ()
    """What observing said (flavors that cannot be resolved)."""
    error: str = ""
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The report, one line per fact, indented under the space's line."""
        if self.error or self.observation is None or self.decision is None:
            return [f"space {self.space}: cannot dry-run: {self.error}"]
        obs, decision = self.observation, self.decision
        states = collections.Counter(m.state.value for m in obs.machines)
        seen = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        out = [f"space {self.space}: {len(obs.machines)} machines listed"
               + (f" ({seen})" if seen else "")]
        out += [f"  {note}" for note in self.notes]
        out += [f"  error: {e.machinetype}: {e.message}" for e in self.events]
        out += _deletions(decision)
        out += _creations(decision)
        out += [f"  {name}: creates no more: {status.blocked}"
                for name, status in decision.plan.status.items() if status.blocked]
        kinds = collections.Counter(e.kind for e in decision.changes.events
                                    if e.kind not in ("delete", "abort"))
        if kinds:
            out.append("  would record: " + ", ".join(f"{n} {kind}"
                                                      for kind, n in sorted(kinds.items())))
        return out


def _deletions(decision: Decision) -> list[str]:
    deletes = decision.plan.deletes
    if not deletes:
        return ["  would delete nothing"]
    return [f"  would delete {d.name} ({d.machinetype}, {d.record.state}): {d.reason}"
            + (f": {d.message}" if d.message else "") for d in deletes]


def _creations(decision: Decision) -> list[str]:
    creates = collections.Counter((c.machinetype, c.flavor.name, c.flavor.processors)
                                  for c in decision.plan.creates)
    if not creates:
        return ["  would create nothing"]
    return [f"  would create {n} x {mt} (flavor {flavor}, {processors} processors each)"
            for (mt, flavor, processors), n in creates.items()]


def _limits_note(observation: Observation) -> str:
    limits = observation.limits
    if limits.free_processors is None and limits.free_instances is None:
        return "cloud limits: none read or none set"
    return (f"cloud limits: {_free(limits.free_processors)} processors and "
            f"{_free(limits.free_instances)} servers free, {limits.foreign_processors} "
            "processors used by servers cloudvac does not own")


def _free(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


async def dry_cycle(space: Space, cloud: Cloud, history: SpaceHistory, now: float) -> DryRun:
    """Observe ``space`` on ``cloud`` and decide as a cycle would, at ``now``; act on
    nothing.  A ``CloudError`` is the result's ``error``."""
    reader = CloudReader(cloud, now)
    try:
        observation, events = await reader.observe(space, now, 0.0)
        observation = await reader.settle_intents(observation, history, now)
    except CloudError as exc:
        return DryRun(space.name, error=redact(f"{type(exc).__name__}: {exc}"))
    notes = [_limits_note(observation)]
    room = reader.new_room()
    if room is not None and room.blocked:
        notes.append(room.note())
    return DryRun(space.name, observation, decide(space, observation, history, now),
                  events, notes=tuple(notes))


async def dry_run(spaces: Iterable[Space], settings: Settings, store: Store | None,
                  clock: Callable[[], float]) -> list[DryRun]:
    """One dry cycle per space (in turn, each within ``space_timeout_seconds``), each on an
    adapter of its own that is closed afterwards; ``store`` None: no history (every listed
    machine is as if adopted)."""
    clouds = CloudFactory(EngineMetrics())
    results: list[DryRun] = []
    for space in spaces:
        try:
            history = SpaceHistory() if store is None else \
                await asyncio.to_thread(store.history, space.name)
            cloud = clouds.get(space, settings)
            results.append(await asyncio.wait_for(
                dry_cycle(space, cloud, history, clock()), settings.space_timeout_seconds))
        except TimeoutError:
            results.append(DryRun(space.name, error="no answer within "
                                  f"space_timeout_seconds={settings.space_timeout_seconds:g}"))
        except CloudError as exc:  # the adapter cannot be built (a secret file)
            results.append(DryRun(space.name, error=redact(f"{type(exc).__name__}: {exc}")))
        finally:
            await clouds.forget(space.name)
    return results


def summary(runs: list[DryRun]) -> str:
    """The closing line of ``cloudvac run --dry-run``."""
    failed = sum(bool(r.error) for r in runs)
    deletes = sum(len(r.decision.plan.deletes) for r in runs if r.decision is not None)
    creates = sum(len(r.decision.plan.creates) for r in runs if r.decision is not None)
    return (f"dry run: {len(runs)} spaces, {failed} failed; would delete {deletes} and create "
            f"{creates} machines; nothing was changed in the clouds or the store")
