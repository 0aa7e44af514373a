"""The cycle's pure step: from what the cloud and the store say to what to do and record.

``decide`` = ``reconcile`` (what the listing means) -> ``plan`` (what to delete and
create) -> the changes to record before acting: every changed machine row (seen changes,
ends, delete requests), the aborts per machinetype, and the events in the order they
happened.  No I/O; the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudvac.config.models import Space
from cloudvac.engine.lifecycle import aborts_of
from cloudvac.engine.planner import Observation, Plan, plan
from cloudvac.engine.reconcile import Reconciled, reconcile
from cloudvac.model.records import Event, MachineRecord, Removal, SpaceHistory


@dataclass(frozen=True, slots=True)
class Changes:
    """What the store must record before the plan is acted on, in one transaction."""

    records: tuple[MachineRecord, ...] = ()
    """Machine rows whose engine-owned fields changed, one per name."""
    aborts: Mapping[str, float] = field(default_factory=dict)
    """Latest abort time per machinetype."""
    events: tuple[Event, ...] = ()
    removals: tuple[Removal, ...] = ()
    """Removal rows to write (``removal.py``): noticed, or going ahead now."""
    cancelled_removals: tuple[str, ...] = ()
    """Machinetypes whose removal row is dropped."""


@dataclass(frozen=True, slots=True)
class Starts:
    """How this cycle's starts went: for the circuit breaker and the per-flavor backoff."""

    ok: int = 0
    failed: int = 0
    no_host: frozenset[str] = frozenset()
    """Machinetypes whose machine failed for want of a host (a capacity refusal)."""


#: Deletion rules that mean a start failed.
FAILED_START_RULES = frozenset({"starting_too_long"})
NO_HOST = "no valid host"


@dataclass(frozen=True, slots=True)
class Decision:
    plan: Plan
    changes: Changes
    starts: Starts = field(default_factory=Starts)


def decide(space: Space, observation: Observation, history: SpaceHistory,
           now: float, seen: Reconciled | None = None) -> Decision:
    """``seen``: the reconciliation of these inputs when the caller made it (timed apart)."""
    if seen is None:
        seen = reconcile(space, observation.machines, history, now, observation.absent)
    chosen = plan(space, observation, seen, history, now)
    records = dict(seen.changed)
    events = [*seen.events, *chosen.removal.events]
    for deletion in chosen.deletes:
        records[deletion.name] = deletion.record
        if deletion.abort is not None:
            events.append(deletion.abort)
        events.append(deletion.event)
    aborts = aborts_of([*seen.aborts, *(d.abort for d in chosen.deletes)])
    starts = Starts(seen.started, len(seen.failed_starts) + sum(
        d.reason in FAILED_START_RULES for d in chosen.deletes), frozenset(
        r.machinetype for r in seen.failed_starts if NO_HOST in r.fault.lower()))
    changes = Changes(tuple(records.values()), aborts, tuple(events), chosen.removal.rows,
                      chosen.removal.cancelled)
    return Decision(chosen, changes, starts)
