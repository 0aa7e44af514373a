"""Deletion rules, as data: the first rule that matches a machine decides its deletion.

Each rule is a predicate over a ``RuleContext``, the message recorded when the VM gave
none, and the machine states it can fire in.  Reading the table top to bottom is reading
the lifecycle policy.  Machines already being deleted (cloud ``deleting``, or our delete
still within ``delete_retry_seconds``) are filtered out before the table is consulted.

Operators: ``cloudvac kill`` deletes one machine at the next cycle; a drain deletes the
drained machines only once its grace has passed (``Drain.deadline``), and only after every
rule about the machine's own health had its say, so a machine that ended by itself, or
that broke, is cleaned under its own reason.  A passed ``shutdown_time`` deletes nothing
(VCycle's meaning: no new machines after it); running machines end at their
``max_wallclock_seconds`` as always.

The configuration: a machine whose machinetype is in no configuration is an orphan when
nothing removed it (``removal.py``: only ever adopted, never created by this store), deleted
once ``orphan_seconds`` old (since the cloud created it); a removed machinetype's (or
space's) machines are drained like an operator's drain, once the removal is confirmed and
its grace has passed, and kept while it waits for confirmation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cloudvac.config.models import Machinetype, Space
from cloudvac.model.records import WHOLE_SPACE, Drain, MachineRecord, drain_deadline
from cloudvac.model.states import (
    DRAINED,
    EXCEEDED_WALLCLOCK,
    FAILED_TO_START,
    HEARTBEAT_LOST,
    MAX_MESSAGE_TEXT,
    UNEXPECTED_STATE,
    MachineState,
    ShutdownMessage,
)

ORPHANED = ShutdownMessage(100, "Orphan: machinetype in no configuration, deleted after "
                           "orphan_seconds")
REMOVED = ShutdownMessage(100, "Removed from the configuration: drained")

S = MachineState


@dataclass(frozen=True, slots=True)
class RuleContext:
    space: Space
    mt: Machinetype | None
    record: MachineRecord
    now: float
    drains: Mapping[str, Drain]
    removed: Mapping[str, float | None] = field(default_factory=dict)
    """Removed machinetypes (``"*"``: the space) -> when their machines may be deleted,
    None while the removal waits for confirmation (``removal.RemovalPlan.deadlines``)."""

    @property
    def age(self) -> float:
        """Since the cloud created the machine, or since its adoption when later: a
        machine found without history gets a fresh starting clock."""
        record = self.record
        since = record.created_at or self.now
        if record.adopted_at is not None and record.adopted_at > since:
            since = record.adopted_at
        return self.now - since

    @property
    def ran(self) -> float:
        """Since the cloud started the machine (its wallclock, adopted or not)."""
        started = self.record.started_at
        return self.now - started if started is not None else 0.0

    @property
    def watched(self) -> float:
        """How long cloudvac could have seen heartbeats: since the machine started, or
        since its adoption when later."""
        record = self.record
        since = record.started_at
        if record.adopted_at is not None and (since is None or record.adopted_at > since):
            since = record.adopted_at
        return self.now - since if since is not None else 0.0


# The predicates are plain functions (not lambdas calling methods): the planner consults
# the table for every machine of every space each cycle (benchmarks/scale.py).  A machine's
# state is checked by ``Rule.states``, never again inside a predicate.

def _always(_: RuleContext) -> bool:
    return True


def _drained(c: RuleContext) -> bool:
    """Drained, and its grace has passed."""
    if not c.drains:
        return False
    deadline = drain_deadline(c.drains, c.record.machinetype)
    return deadline is not None and c.now >= deadline


def _killed(c: RuleContext) -> bool:
    return c.record.kill_requested_at is not None


def _starting_too_long(c: RuleContext) -> bool:
    mt = c.mt
    limit = c.space.starting_seconds(mt) if mt is not None else c.space.max_starting_seconds
    return c.age > limit


def _wallclock(c: RuleContext) -> bool:
    return c.mt is not None and c.ran > c.mt.max_wallclock_seconds


def _orphan(c: RuleContext) -> bool:
    """In no configuration and not removed, and older than ``orphan_seconds``."""
    record, removed = c.record, c.removed
    if c.mt is not None or WHOLE_SPACE in removed or record.machinetype in removed:
        return False
    since = record.created_at or record.adopted_at or c.now
    return c.now - since > c.space.orphan_seconds


def _removed(c: RuleContext) -> bool:
    """Removed, confirmed, and its grace has passed."""
    if not c.removed:
        return False
    found = [d for key in (WHOLE_SPACE, c.record.machinetype)
             if (d := c.removed.get(key)) is not None]
    return bool(found) and c.now >= min(found)


def _heartbeat_stale(c: RuleContext) -> bool:
    mt = c.mt
    if mt is None or not mt.heartbeat_check:
        return False
    limit = float(mt.heartbeat_seconds or 0)
    watched = c.watched
    if watched <= mt.fizzle_seconds or watched <= limit:
        return False
    beat = c.record.heartbeat_at
    return beat is None or c.now - beat > limit


def _unknown_too_long(c: RuleContext) -> bool:
    return c.age > c.space.max_starting_seconds


# When each rule may fire first (``Rule.after``): a lower bound of the ``now`` at which the
# predicate above may be true, for the context's record, configuration, drains and
# removals.  -inf when unsure: the rule is then asked every cycle.

_ANY, _NEVER = -math.inf, math.inf


def _any_time(_: RuleContext) -> float:
    return _ANY


def _age_passes(c: RuleContext, limit: float) -> float:
    """When ``age`` passes ``limit``."""
    record = c.record
    if not record.created_at or limit < 0:
        return _ANY  # its age runs from ``now``: not worth a bound
    since = record.created_at
    if record.adopted_at is not None and record.adopted_at > since:
        since = record.adopted_at
    return since + limit


def _killed_after(c: RuleContext) -> float:
    return _ANY if c.record.kill_requested_at is not None else _NEVER


def _starting_after(c: RuleContext) -> float:
    mt = c.mt
    return _age_passes(c, c.space.starting_seconds(mt) if mt is not None
                       else c.space.max_starting_seconds)


def _wallclock_after(c: RuleContext) -> float:
    if c.mt is None:
        return _NEVER
    started = c.record.started_at
    return _ANY if started is None else started + c.mt.max_wallclock_seconds


def _orphan_after(c: RuleContext) -> float:
    record, removed = c.record, c.removed
    if c.mt is not None or WHOLE_SPACE in removed or record.machinetype in removed:
        return _NEVER
    since = record.created_at or record.adopted_at
    return _ANY if not since else since + c.space.orphan_seconds


def _drained_after(c: RuleContext) -> float:
    deadline = drain_deadline(c.drains, c.record.machinetype) if c.drains else None
    return _NEVER if deadline is None else deadline


def _removed_after(c: RuleContext) -> float:
    found = [d for key in (WHOLE_SPACE, c.record.machinetype)
             if (d := c.removed.get(key)) is not None] if c.removed else []
    return min(found) if found else _NEVER


def _heartbeat_after(c: RuleContext) -> float:
    mt, record = c.mt, c.record
    if mt is None or not mt.heartbeat_check:
        return _NEVER
    since = record.started_at
    if record.adopted_at is not None and (since is None or record.adopted_at > since):
        since = record.adopted_at
    if since is None:
        return _ANY
    limit = float(mt.heartbeat_seconds or 0)
    beat = record.heartbeat_at
    return max(since + mt.fizzle_seconds, since + limit, _ANY if beat is None else beat + limit)


def _unknown_after(c: RuleContext) -> float:
    return _age_passes(c, c.space.max_starting_seconds)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    applies: Callable[[RuleContext], bool]
    """Whether the rule deletes the machine; only asked for a machine in ``states``."""
    message: Callable[[RuleContext], ShutdownMessage | None]
    states: frozenset[MachineState] | None = None
    """The machine states the rule can fire in; None: any state."""
    after: Callable[[RuleContext], float] = _any_time
    """When ``applies`` may first be true for this machine while its record, its
    configuration, the drains and the removals stay as they are: a lower bound (-inf:
    any time; inf: never).  The planner asks no rule of a machine before the earliest
    of its rules' (``quiet_until``, ``RuleMemo``); a test checks each bound."""


def _none(_: RuleContext) -> ShutdownMessage | None:
    return None


def _fixed(message: ShutdownMessage) -> Callable[[RuleContext], ShutdownMessage | None]:
    return lambda _: message


def _kill_message(ctx: RuleContext) -> ShutdownMessage:
    reason = f": {ctx.record.kill_reason}" if ctx.record.kill_reason else ""
    return ShutdownMessage(100, f"Killed by operator{reason}"[:MAX_MESSAGE_TEXT])


def _failed_message(ctx: RuleContext) -> ShutdownMessage:
    fault = f": {ctx.record.fault}" if ctx.record.fault else ""
    return ShutdownMessage(700, f"Failed to boot{fault}"[:200])


RULES: tuple[Rule, ...] = (
    Rule("stopped", _always, _none, frozenset({S.STOPPED})),
    Rule("failed", _always, _failed_message, frozenset({S.FAILED})),
    Rule("killed", _killed, _kill_message, after=_killed_after),
    Rule("starting_too_long", _starting_too_long, _fixed(FAILED_TO_START),
         frozenset({S.STARTING}), _starting_after),
    Rule("wallclock", _wallclock, _fixed(EXCEEDED_WALLCLOCK), frozenset({S.RUNNING}),
         _wallclock_after),
    Rule("heartbeat", _heartbeat_stale, _fixed(HEARTBEAT_LOST), frozenset({S.RUNNING}),
         _heartbeat_after),
    Rule("unknown_state", _unknown_too_long, _fixed(UNEXPECTED_STATE), frozenset({S.UNKNOWN}),
         _unknown_after),
    Rule("orphan", _orphan, _fixed(ORPHANED), after=_orphan_after),
    # the planner deletes at most DRAIN_SHARE of a space's machines per cycle by these rules
    Rule("drained", _drained, _fixed(DRAINED), after=_drained_after),
    Rule("removed", _removed, _fixed(REMOVED), after=_removed_after),
)

# The table, in its order, restricted to each state's rules: derived here, never written
# by hand, so RULES stays the one place the policy is stated.
_BY_STATE: dict[MachineState, tuple[Rule, ...]] = {
    state: tuple(rule for rule in RULES if rule.states is None or state in rule.states)
    for state in MachineState
}


def deletion_rule(ctx: RuleContext) -> Rule | None:
    """The first rule deleting this machine, or None to keep it."""
    for rule in _BY_STATE[ctx.record.state]:
        if rule.applies(ctx):
            return rule
    return None


def quiet_until(ctx: RuleContext) -> float:
    """Before this time no rule deletes the machine (its record, configuration, drains and
    removals unchanged): the earliest ``after`` of the rules of its state."""
    return min((rule.after(ctx) for rule in _BY_STATE[ctx.record.state]), default=_NEVER)


#: A machine is judged again this long before its quiet time (float rounding of bounds).
QUIET_MARGIN = 1e-3


@dataclass(slots=True)
class RuleMemo:
    """What the plans of one space carry from one cycle to the next: per machine, the
    record last judged and the time until which no rule can delete it, so that a machine
    whose record did not change is not walked through the table again before then.  Only
    a cache: a plan with it is the plan without it (``tests/unit/test_rule_memo.py``).
    One plan at a time: ``start``, then ``judge`` each machine, ``note`` those kept."""

    space: Space | None = None
    drains: Mapping[str, Drain] = field(default_factory=dict)
    removed: Mapping[str, float | None] = field(default_factory=dict)
    quiet: dict[str, tuple[MachineRecord, float]] = field(default_factory=dict)
    _last: dict[str, tuple[MachineRecord, float]] = field(default_factory=dict)

    def start(self, space: Space, drains: Mapping[str, Drain],
              removed: Mapping[str, float | None]) -> None:
        """Begin a plan of ``space`` under ``drains`` and ``removed``: the last plan's
        judgements hold only while these are the same."""
        same = (space, drains, removed) == (self.space, self.drains, self.removed)
        self._last = self.quiet if same else {}
        self.space, self.drains, self.removed, self.quiet = space, drains, removed, {}

    def judge(self, record: MachineRecord, now: float) -> RuleContext | None:
        """The context in which to ask the rules about ``record`` at ``now``; None while
        no rule can delete it (this very record was judged, its quiet time not come)."""
        # Taken out: what is left at the next start is of machines no longer there, and
        # an older record is not kept alive by the memo once its successor was judged.
        judged = self._last.pop(record.name, None)
        if judged is not None and judged[0] is record and now < judged[1]:
            self.quiet[record.name] = judged
            return None
        space = self.space
        assert space is not None, "start() first"
        return RuleContext(space, space.machinetypes.get(record.machinetype), record, now,
                           self.drains, self.removed)

    def note(self, ctx: RuleContext) -> None:
        """No rule deletes ``ctx.record`` now: remember until when none can."""
        self.quiet[ctx.record.name] = (ctx.record, quiet_until(ctx) - QUIET_MARGIN)
