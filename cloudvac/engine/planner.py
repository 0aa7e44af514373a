"""The pure planner: ``plan(space, observation, history, now) -> Plan``.

No I/O, no randomness, no hidden clock: the same inputs always give the same plan, so the
planner is table-tested.  It decides

* deletions, by the rule table in ``rules.py``;
* creations, by HS06-weighted target shares: repeatedly pick, among the machinetypes that
  may start a machine now, the one with the lowest ``weight / target_share`` (weight =
  HS06 if the machinetype has ``hs06_per_processor``, else processors; the same weight for
  new and old machines), within ``processors_limit`` (space and machinetype, foreign usage
  included), ``max_starting_processors`` (counted once), the cloud's free cores, instances
  and RAM (minus creates not yet listed), and the per-cycle burst;
* backoff: after an abort no machinetype creates for ``backoff_seconds``; then one probe
  machine at a time until one survives ``fizzle_seconds``.  Quota refusals never abort.

Machines being deleted still hold quota, so they count against limits but not shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from cloudvac.clouds.base import Flavor, Limits, ObservedMachine
from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.reconcile import MachineView, Reconciled, end_machine, reconcile, to_update
from cloudvac.engine.records import Event, MachineRecord, SpaceHistory
from cloudvac.engine.rules import RuleContext, deletion_rule
from cloudvac.engine.states import MachineState, ShutdownMessage


@dataclass(frozen=True, slots=True)
class Observation:
    """What the cloud told us this cycle."""

    machines: Sequence[ObservedMachine]
    limits: Limits = field(default_factory=Limits)
    flavors: Mapping[str, Flavor] = field(default_factory=dict)
    """Resolved flavor per machinetype; a machinetype missing here cannot create."""


@dataclass(frozen=True, slots=True)
class Create:
    machinetype: str
    flavor: Flavor
    hs06: float | None


@dataclass(frozen=True, slots=True)
class Delete:
    name: str
    cloud_id: str
    machinetype: str
    reason: str
    message: ShutdownMessage | None


@dataclass(slots=True)
class TypeStatus:
    """Per-machinetype figures for status displays (not used for decisions elsewhere)."""

    machines: dict[str, int] = field(default_factory=dict)
    processors: int = 0
    starting_processors: int = 0
    weight: float = 0.0
    target_share: float = 0.0
    actual_share: float = 0.0
    backoff_until: float | None = None
    blocked: str = ""


@dataclass(slots=True)
class Plan:
    creates: list[Create] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    reconciled: Reconciled = field(default_factory=Reconciled)
    status: dict[str, TypeStatus] = field(default_factory=dict)

    @property
    def events(self) -> list[Event]:
        return self.reconciled.events


def plan(space: Space, observation: Observation, history: SpaceHistory, now: float) -> Plan:
    result = Plan(reconciled=reconcile(space, observation.machines, history, now))
    live = _apply_deletions(space, result, history, now)
    _plan_creates(space, observation, history, live, result, now)
    return result


def _apply_deletions(space: Space, result: Plan, history: SpaceHistory,
                     now: float) -> list[MachineView]:
    """Choose deletions; return the machines that still count as capacity-holding."""
    rec = result.reconciled
    kept: list[MachineView] = []
    retry, machinetypes, drained = space.delete_retry_seconds, space.machinetypes, history.drained
    for view in rec.machines:
        record = view.record
        requested = record.delete_requested_at
        if not view.listed or record.state is MachineState.DELETING or (
                requested is not None and now - requested < retry):
            kept.append(view)
            continue
        ctx = RuleContext(space, machinetypes.get(record.machinetype), record, now, drained)
        rule = deletion_rule(ctx)
        if rule is None:
            kept.append(view)
            continue
        message = rule.message(ctx)
        record = replace(record, delete_requested_at=now, delete_reason=rule.name)
        if record.stopped_at is None:
            record = end_machine(space, record, now, message, rec)
        result.deletes.append(Delete(record.name, record.cloud_id, record.machinetype,
                                     rule.name, message))
        rec.events.append(Event(now, space.name, record.machinetype, record.name, "delete",
                                f"deleting ({rule.name}) in state {record.state}"
                                + (f": {message}" if message else "")))
        _replace_update(rec, record)
        kept.append(MachineView(record, view.listed, view.from_intent))
    return kept


def _replace_update(rec: Reconciled, record: MachineRecord) -> None:
    rec.updates = [u for u in rec.updates if u.name != record.name]
    rec.updates.append(to_update(record))


def machine_weight(mt: Machinetype, processors: int) -> float:
    """Share weight of one machine: its HS06 if the machinetype has a benchmark, else its
    processors.  The same for new and old machines (VCycle mixed the two)."""
    return processors * mt.hs06_per_processor if mt.hs06_per_processor else float(processors)


@dataclass(slots=True)
class _Tally:
    total: int = 0
    starting: int = 0
    weight: float = 0.0
    unproven: int = 0  # starting, or running for less than fizzle_seconds
    states: dict[str, int] = field(default_factory=dict)  # machines by state value


_STARTING = frozenset({MachineState.STARTING, MachineState.INTENT})
_FINISHED = frozenset(state for state in MachineState if state.finished)


def _plan_creates(space: Space, obs: Observation, history: SpaceHistory,
                  live: list[MachineView], result: Plan, now: float) -> None:
    tallies = {name: _Tally() for name in space.machinetypes}
    machinetypes = space.machinetypes
    space_total = obs.limits.foreign_processors
    space_starting = 0
    unlisted = 0
    # One pass over every machine of the space, for limits, shares and status alike.
    for view in live:
        record = view.record
        state = record.state
        if state is MachineState.GONE:
            continue
        processors = record.processors
        space_total += processors
        if not view.listed:
            unlisted += processors
        mt = machinetypes.get(record.machinetype)
        if mt is None:
            continue
        tally = tallies[mt.name]
        tally.total += processors
        tally.states[state.value] = tally.states.get(state.value, 0) + 1
        starting = state in _STARTING
        if starting:
            tally.starting += processors
            space_starting += processors
        if state not in _FINISHED and record.delete_requested_at is None:
            tally.weight += machine_weight(mt, processors)
        started = record.started_at
        if starting or (state is MachineState.RUNNING and started is not None
                        and now - started < mt.fizzle_seconds):
            tally.unproven += 1

    last_abort = dict(history.last_abort)
    for name, at in result.reconciled.aborts.items():
        last_abort[name] = max(last_abort.get(name, 0.0), at)

    free_cpu = _minus(obs.limits.free_processors, unlisted)
    free_instances = obs.limits.free_instances
    free_ram = obs.limits.free_ram_mb
    largest = max((f.processors for f in obs.flavors.values()), default=1)
    budget = space.burst_processors(largest)
    space_closed = _space_closed(space, history, now)
    blocked: dict[str, str] = {}

    for name, mt in space.machinetypes.items():
        status = result.status[name] = TypeStatus(target_share=mt.target_share)
        abort = last_abort.get(name)
        if abort is not None and now < abort + mt.backoff_seconds + mt.fizzle_seconds:
            status.backoff_until = abort + mt.backoff_seconds
        reason = space_closed or _type_closed(mt, obs, history, now, abort, tallies[name])
        if reason:
            blocked[name] = reason

    while True:
        candidates = [n for n in space.machinetypes if n not in blocked]
        if not candidates:
            break
        name = min(candidates, key=lambda n: (tallies[n].weight / space.machinetypes[n]
                                              .target_share, -space.machinetypes[n]
                                              .target_share, n))
        mt, tally, flavor = space.machinetypes[name], tallies[name], obs.flavors[name]
        p = flavor.processors
        why = _capacity_refusal(space, mt, tally, p, flavor.ram_mb, space_total, space_starting,
                                free_cpu, free_instances, free_ram, budget)
        if why:
            blocked[name] = why
            continue
        hs06 = p * mt.hs06_per_processor if mt.hs06_per_processor else None
        result.creates.append(Create(name, flavor, hs06))
        tally.total += p
        tally.starting += p
        tally.weight += machine_weight(mt, p)
        tally.unproven += 1
        space_total += p
        space_starting += p
        budget -= p
        free_cpu = _minus(free_cpu, p)
        free_instances = _minus(free_instances, 1)
        free_ram = _minus(free_ram, flavor.ram_mb)
        abort = last_abort.get(name)
        if abort is not None and now < abort + mt.backoff_seconds + mt.fizzle_seconds:
            blocked[name] = "probing after backoff: one machine until it passes fizzle_seconds"

    _fill_status(space, tallies, blocked, result)


def _minus(value: int | None, amount: int) -> int | None:
    return None if value is None else value - amount


def _space_closed(space: Space, history: SpaceHistory, now: float) -> str:
    if "*" in history.drained:
        return "space drained"
    if space.shutdown_time is not None and now >= space.shutdown_time:
        return "space shutdown_time passed"
    return ""


def _type_closed(mt: Machinetype, obs: Observation, history: SpaceHistory, now: float,
                 abort: float | None, tally: _Tally) -> str:
    if mt.target_share <= 0:
        return "target_share is 0"
    if mt.name in history.drained:
        return "drained"
    if mt.shutdown_time is not None and now >= mt.shutdown_time:
        return "shutdown_time passed"
    if mt.name not in obs.flavors:
        return "no usable flavor"
    if abort is not None:
        if now < abort + mt.backoff_seconds:
            return f"backoff for {abort + mt.backoff_seconds - now:.0f}s more"
        if now < abort + mt.backoff_seconds + mt.fizzle_seconds and tally.unproven > 0:
            return "probing after backoff: waiting for a machine to pass fizzle_seconds"
    return ""


def _capacity_refusal(space: Space, mt: Machinetype, tally: _Tally, p: int, ram: int,
                      space_total: int, space_starting: int, free_cpu: int | None,
                      free_instances: int | None, free_ram: int | None, budget: int) -> str:
    checks = (
        (mt.processors_limit is not None and tally.total + p > mt.processors_limit,
         "machinetype processors_limit reached"),
        (mt.max_starting_processors is not None
         and tally.starting + p > mt.max_starting_processors,
         "machinetype max_starting_processors reached"),
        (space.processors_limit is not None and space_total + p > space.processors_limit,
         "space processors_limit reached"),
        (space.max_starting_processors is not None
         and space_starting + p > space.max_starting_processors,
         "space max_starting_processors reached"),
        (free_cpu is not None and p > free_cpu, "cloud quota: no free cores"),
        (free_instances is not None and free_instances < 1, "cloud quota: no free instances"),
        (free_ram is not None and ram > free_ram, "cloud quota: no free RAM"),
        (p > budget, "creation burst for this cycle used"),
    )
    return next((why for failed, why in checks if failed), "")


def _fill_status(space: Space, tallies: Mapping[str, _Tally], blocked: Mapping[str, str],
                 result: Plan) -> None:
    total_weight = sum(t.weight for t in tallies.values())
    total_share = sum(mt.target_share for mt in space.machinetypes.values())
    for name, mt in space.machinetypes.items():
        status, tally = result.status[name], tallies[name]
        status.machines = dict(tally.states)
        status.processors = tally.total
        status.starting_processors = tally.starting
        status.weight = tally.weight
        status.actual_share = tally.weight / total_weight if total_weight else 0.0
        status.target_share = mt.target_share / total_share if total_share else 0.0
        status.blocked = blocked.get(name, "")
