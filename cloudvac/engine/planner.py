"""The pure planner: ``plan(space, observation, reconciled, history, now) -> Plan``.

No I/O, no randomness, no hidden clock: the same inputs always give the same plan, so the
planner is table-tested.  It returns decisions only (what to delete and why, what to
create) and a status per machinetype; what those decisions make of the machines' records
is ``lifecycle``'s, and recording them is the cycle's.  It decides

* deletions, by the rule table in ``rules.py``; machines of a drain whose grace has passed
  at most ``DRAIN_SHARE`` of the space's machines per cycle (at least
  ``DRAIN_MIN_PER_CYCLE``), in listing order: a drain empties a space over a few cycles,
  never in one burst of deletes (what the cloud would take as an incident, and what an
  operator's mistaken drain would cost), while a machine's own reasons (ended, failed,
  wallclock, heartbeat, an operator's kill) are never held back;
* creations, by HS06-weighted target shares: repeatedly pick, among the machinetypes that
  may start a machine now, the one with the lowest ``weight / target_share`` (weight =
  HS06 if the machinetype has ``hs06_per_processor``, else processors; the same weight for
  new and old machines), within the space's ``Capacity``: ``processors_limit`` (space and
  machinetype, foreign usage included), ``max_starting_processors`` (counted once), the
  cloud's free cores, instances and RAM (minus creates not yet listed), and the per-cycle
  burst;
* removals (``removal.py``): machinetypes, or the whole space, that left the configuration
  are drained by the ``removed`` rule within the same per-cycle share as drains, once
  confirmed; a space that left creates nothing;
* backoff: after an abort no machinetype creates for ``backoff_seconds``; then one probe
  machine at a time until one survives ``fizzle_seconds``.  Quota refusals never abort.

Machines being deleted still hold quota, so they count against limits but not shares.

Cost: the planner looks at every machine of the space every cycle (100,000 at the scale
of ``benchmarks/scale.py``), so its per-machine work is kept small: one pass for the
rules, one for the tallies, and with the space's ``RuleMemo`` (``Observation.memo``) a
machine whose record did not change is not walked through the rules again before the
first time one of them could apply.  The memo is a cache: the plan is the same without.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.lifecycle import Deletion, aborts_of, delete
from cloudvac.engine.reconcile import Reconciled
from cloudvac.engine.removal import RemovalPlan, removals
from cloudvac.engine.rules import RuleMemo, deletion_rule
from cloudvac.model.cloud import Flavor, Limits, ObservedMachine
from cloudvac.model.records import MachineRecord, SpaceHistory
from cloudvac.model.shares import shares
from cloudvac.model.states import FINISHED, STARTING, MachineState

PROBING = "probing after backoff: one machine until it passes fizzle_seconds"
#: Deletions by a passed drain per cycle: this share of the space's machines (rounded up),
#: and at least DRAIN_MIN_PER_CYCLE.  10 % is the usual anchor for voluntary disruption
#: (a drain of 1,000 machines whose pilots did not end by themselves takes ~30 cycles).
DRAIN_SHARE = 0.1
DRAIN_MIN_PER_CYCLE = 10
#: The deletion rules that share the per-cycle drain budget.
DRAIN_RULES = frozenset({"drained", "removed"})
_DELETING, _RUNNING = MachineState.DELETING, MachineState.RUNNING


@dataclass(frozen=True, slots=True)
class Observation:
    """What the cloud told us this cycle."""

    machines: Sequence[ObservedMachine]
    limits: Limits = field(default_factory=Limits)
    flavors: Mapping[str, Flavor] = field(default_factory=dict)
    """Resolved flavor per machinetype; a machinetype missing here cannot create."""
    absent: frozenset[str] = frozenset()
    """Names the cloud, asked directly, said it has no server for (intents left by a
    crash): their intents are freed at once."""
    blocked_flavors: Mapping[str, str] = field(default_factory=dict)
    """Flavor name -> why the cloud's recent refusals keep it from being created now."""
    stopped: str = ""
    """Why no create may happen in the space now (the circuit breaker), or ""."""
    memo: RuleMemo | None = field(default=None, compare=False, repr=False)
    """What this space's last plan found about its machines' rules (the cycle keeps it
    from one plan to the next): a cache that never changes a decision."""


@dataclass(frozen=True, slots=True)
class Create:
    machinetype: str
    flavor: Flavor
    hs06: float | None


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """Per-machinetype figures for status displays (not used for decisions elsewhere)."""

    machines: Mapping[str, int] = field(default_factory=dict)
    """Machines by state value."""
    processors: int = 0
    starting_processors: int = 0
    weight: float = 0.0
    target_share: float = 0.0
    actual_share: float = 0.0
    backoff_until: float | None = None
    blocked: str = ""
    held: bool = False
    """Waiting on a backoff of any cause: the VO's (fizzle, codes 300-699), the cloud's
    refusals of its flavor, or the space's circuit breaker."""


@dataclass(frozen=True, slots=True)
class Plan:
    creates: tuple[Create, ...] = ()
    deletes: tuple[Deletion, ...] = ()
    status: Mapping[str, TypeStatus] = field(default_factory=dict)
    removal: RemovalPlan = field(default_factory=RemovalPlan)


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What one plan of creates is made from."""

    space: Space
    observation: Observation
    history: SpaceHistory
    last_abort: Mapping[str, float]
    """Latest abort per machinetype: the store's, and this cycle's."""
    now: float
    space_removed: bool = False
    """The space left the configuration: it only drains."""

    def backoff_until(self, mt: Machinetype) -> float | None:
        """End of ``mt``'s backoff while it is within backoff or probing, else None."""
        abort = self.last_abort.get(mt.name)
        if abort is not None and self.now < abort + mt.backoff_seconds + mt.fizzle_seconds:
            return abort + mt.backoff_seconds
        return None


def plan(space: Space, observation: Observation, reconciled: Reconciled,
         history: SpaceHistory, now: float) -> Plan:
    removal = removals(space, reconciled.records, history, now)
    memo = observation.memo if observation.memo is not None else RuleMemo()
    memo.start(space, history.drains, removal.deadlines)
    deletes, live = _deletions(space, reconciled, removal, now, memo)
    last_abort = dict(history.last_abort)
    for name, at in aborts_of([*reconciled.aborts, *(d.abort for d in deletes)]).items():
        last_abort[name] = max(last_abort.get(name, at), at)
    inputs = _Inputs(space, observation, history, last_abort, now, removal.space_removed)
    tallies, capacity = _tally(space, live, reconciled.unlisted, observation, now)
    blocked = {name: why for name, mt in space.machinetypes.items()
               if (why := _closed(inputs, mt, tallies[name]))}
    creates = _creates(inputs, tallies, capacity, blocked)
    return Plan(tuple(creates), tuple(deletes), _status(inputs, tallies, blocked), removal)


def _deletions(space: Space, reconciled: Reconciled, removal: RemovalPlan, now: float,
               memo: RuleMemo) -> tuple[list[Deletion], list[MachineRecord]]:
    """Choose deletions; return them and the machines that still hold capacity.  A
    machine whose record ``memo`` judged last time, and whose quiet time has not come,
    is not walked through the rules again."""
    deletes: list[Deletion] = []
    kept: list[MachineRecord] = []
    retry, unlisted = space.delete_retry_seconds, reconciled.unlisted
    drain_budget = max(DRAIN_MIN_PER_CYCLE, math.ceil(DRAIN_SHARE * len(reconciled.records)))
    for record in reconciled.records:
        requested = record.delete_requested_at
        if record.state is _DELETING or (requested is not None and now - requested < retry) \
                or (unlisted and record.name in unlisted):
            kept.append(record)
            continue
        ctx = memo.judge(record, now)
        rule = None if ctx is None else deletion_rule(ctx)
        if rule is not None and rule.name in DRAIN_RULES:
            drain_budget -= 1
            if drain_budget < 0:
                rule = None  # this cycle's share of drain deletions is used
        if rule is None or ctx is None:
            if ctx is not None:
                memo.note(ctx)
            kept.append(record)
            continue
        deletion = delete(space, record, rule.name, rule.message(ctx), now)
        deletes.append(deletion)
        kept.append(deletion.record)
    return deletes, kept


@dataclass(slots=True)
class _Tally:
    """One machinetype's machines, summed in the planner's single pass."""

    total: int = 0
    starting: int = 0
    weight: float = 0.0
    unproven: int = 0  # starting, or running for less than fizzle_seconds
    states: dict[str, int] = field(default_factory=dict)  # machines by state value

    def add_new(self, mt: Machinetype, processors: int) -> None:
        self.total += processors
        self.starting += processors
        self.weight += mt.share_weight(processors)
        self.unproven += 1


@dataclass(slots=True)
class Capacity:
    """Room left in a space while one plan is made: its own limits, the cloud's free
    capacity (``None``: unlimited) and this cycle's creation burst."""

    space: Space
    total: int
    """Processors held in the space, foreign ones included."""
    starting: int
    free_cpu: int | None
    free_instances: int | None
    free_ram: int | None
    budget: int

    def refusal(self, mt: Machinetype, tally: _Tally, flavor: Flavor) -> str:
        """Why one more machine of ``flavor`` for ``mt`` does not fit, or ""."""
        p, space = flavor.processors, self.space
        checks = (
            (mt.processors_limit is not None and tally.total + p > mt.processors_limit,
             "machinetype processors_limit reached"),
            (mt.max_starting_processors is not None
             and tally.starting + p > mt.max_starting_processors,
             "machinetype max_starting_processors reached"),
            (space.processors_limit is not None and self.total + p > space.processors_limit,
             "space processors_limit reached"),
            (space.max_starting_processors is not None
             and self.starting + p > space.max_starting_processors,
             "space max_starting_processors reached"),
            (self.free_cpu is not None and p > self.free_cpu, "cloud quota: no free cores"),
            (self.free_instances is not None and self.free_instances < 1,
             "cloud quota: no free instances"),
            (self.free_ram is not None and flavor.ram_mb > self.free_ram,
             "cloud quota: no free RAM"),
            (p > self.budget, "creation burst for this cycle used"),
        )
        return next((why for failed, why in checks if failed), "")

    def take(self, flavor: Flavor) -> None:
        p = flavor.processors
        self.total += p
        self.starting += p
        self.budget -= p
        self.free_cpu = _minus(self.free_cpu, p)
        self.free_instances = _minus(self.free_instances, 1)
        self.free_ram = _minus(self.free_ram, flavor.ram_mb)


def _minus(value: int | None, amount: int) -> int | None:
    return None if value is None else value - amount


def _tally(space: Space, live: Sequence[MachineRecord], unlisted: frozenset[str],
           obs: Observation, now: float) -> tuple[dict[str, _Tally], Capacity]:
    """One pass over every machine of the space, for limits, shares and status alike."""
    tallies = {name: _Tally() for name in space.machinetypes}
    # per machinetype: its tally, machines by state, HS06 per processor, fizzle_seconds
    kinds: dict[str, tuple[_Tally, dict[MachineState, int], float | None, float]] = {
        name: (tallies[name], {}, mt.hs06_per_processor, mt.fizzle_seconds)
        for name, mt in space.machinetypes.items()}
    total, starting = obs.limits.foreign_processors, 0
    for record in live:
        state, processors = record.state, record.processors
        total += processors
        kind = kinds.get(record.machinetype)
        if kind is None:
            continue
        tally, states, hs06, fizzle = kind
        tally.total += processors
        states[state] = states.get(state, 0) + 1
        if state in STARTING:
            tally.starting += processors
            starting += processors
            tally.unproven += 1
        elif state is _RUNNING:
            started = record.started_at
            if started is not None and now - started < fizzle:
                tally.unproven += 1
        if state not in FINISHED and record.delete_requested_at is None:
            # Machinetype.share_weight, inline: this loop runs for every machine
            tally.weight += processors * hs06 if hs06 else float(processors)
    for tally, states, _, _ in kinds.values():  # by state value, in the order first seen
        tally.states.update((state.value, n) for state, n in states.items())
    pending = sum(r.processors for r in live if r.name in unlisted) if unlisted else 0
    limits = obs.limits
    largest = max((f.processors for f in obs.flavors.values()), default=1)
    return tallies, Capacity(space, total, starting, _minus(limits.free_processors, pending),
                             limits.free_instances, limits.free_ram_mb,
                             space.burst_processors(largest))


def _space_closed(inputs: _Inputs) -> str:
    """Why no machinetype of the space may create this cycle, or ""."""
    space, now = inputs.space, inputs.now
    if inputs.space_removed:
        return "space removed from the configuration"
    if "*" in inputs.history.drains:
        return "space drained"
    if inputs.observation.stopped:
        return inputs.observation.stopped
    if space.shutdown_time is not None and now >= space.shutdown_time:
        return "space shutdown_time passed"
    return ""


def _closed(inputs: _Inputs, mt: Machinetype, tally: _Tally) -> str:
    """Why ``mt`` may not create at all this cycle, or ""."""
    history, now = inputs.history, inputs.now
    abort = inputs.last_abort.get(mt.name)
    why = _space_closed(inputs)
    if why:
        return why
    if mt.target_share <= 0:
        return "target_share is 0"
    if mt.name in history.drains:
        return "drained"
    if mt.shutdown_time is not None and now >= mt.shutdown_time:
        return "shutdown_time passed"
    flavor = inputs.observation.flavors.get(mt.name)
    if flavor is None:
        return "no usable flavor"
    if flavor.name in inputs.observation.blocked_flavors:
        return inputs.observation.blocked_flavors[flavor.name]
    if abort is not None:
        if now < abort + mt.backoff_seconds:
            return f"backoff for {abort + mt.backoff_seconds - now:.0f}s more"
        if now < abort + mt.backoff_seconds + mt.fizzle_seconds and tally.unproven > 0:
            return "probing after backoff: waiting for a machine to pass fizzle_seconds"
    return ""


def _creates(inputs: _Inputs, tallies: Mapping[str, _Tally], capacity: Capacity,
             blocked: dict[str, str]) -> list[Create]:
    """Fill by target shares until every machinetype is blocked; ``blocked`` gains why."""
    machinetypes, flavors = inputs.space.machinetypes, inputs.observation.flavors
    creates: list[Create] = []
    while candidates := [n for n in machinetypes if n not in blocked]:
        name = min(candidates, key=lambda n: (tallies[n].weight / machinetypes[n].target_share,
                                              -machinetypes[n].target_share, n))
        mt, tally, flavor = machinetypes[name], tallies[name], flavors[name]
        why = capacity.refusal(mt, tally, flavor)
        if why:
            blocked[name] = why
            continue
        creates.append(Create(name, flavor, machine_hs06(mt, flavor)))
        tally.add_new(mt, flavor.processors)
        capacity.take(flavor)
        if inputs.backoff_until(mt) is not None:
            blocked[name] = PROBING
    return creates


def machine_hs06(mt: Machinetype, flavor: Flavor) -> float | None:
    """A new machine's HS06: processors x the machinetype's ``hs06_per_processor``, else x
    the flavor's ``accounting:benchmark_value`` (what the site's own cloud accounting
    reports), else unknown.  Config wins when both are set (``observe`` warns once)."""
    per_processor = mt.hs06_per_processor or flavor.benchmark_value
    return flavor.processors * per_processor if per_processor else None


def _status(inputs: _Inputs, tallies: Mapping[str, _Tally],
            blocked: Mapping[str, str]) -> dict[str, TypeStatus]:
    space = inputs.space
    fractions = shares({n: t.weight for n, t in tallies.items()},
                       {n: mt.target_share for n, mt in space.machinetypes.items()})
    return {name: TypeStatus(
        machines=dict(tally.states), processors=tally.total,
        starting_processors=tally.starting, weight=tally.weight,
        target_share=fractions[name].target, actual_share=fractions[name].actual,
        backoff_until=inputs.backoff_until(space.machinetypes[name]),
        blocked=blocked.get(name, ""), held=_held(inputs, space.machinetypes[name]))
        for name, tally in tallies.items()}


def _held(inputs: _Inputs, mt: Machinetype) -> bool:
    until = inputs.backoff_until(mt)
    flavor = inputs.observation.flavors.get(mt.name)
    return (until is not None and inputs.now < until) or bool(inputs.observation.stopped) or (
        flavor is not None and flavor.name in inputs.observation.blocked_flavors)


__all__ = ["Capacity", "Create", "Deletion", "Observation", "Plan", "TypeStatus", "machine_hs06",
           "plan"]
