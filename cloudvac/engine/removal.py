"""Machinetypes and spaces removed from the configuration: drained, never mass-deleted.

Pure (no I/O, the clock is an argument), like the planner that calls it.

* A machinetype is *removed* when the space's configuration no longer has it while machines
  of it that this store created (not adopted: ``adopted_at`` unset) still hold capacity, or
  when the store has a removal row for it.  A machine of an unknown machinetype that was
  only ever adopted is an *orphan* instead (``rules.py``: deleted once ``orphan_seconds``
  old).  A space the daemon drains after it left the configuration has a ``"*"`` row: every
  machinetype of it is removed.
* A new removal is recorded (a row: when it was noticed, how many machines).  It goes
  ahead at once when every removal still waiting in the space, summed, holds at most
  ``removal_confirm_fraction`` of the space's machines (or the space has
  ``confirm_removals``, or the fraction is 1): the row is then marked confirmed, so the
  drain never flips back to waiting.  Otherwise it waits for ``cloudvac confirm-removal``:
  its machines keep running, nothing of it is deleted, and the cycle warns every cycle.
* A confirmed removal's machines are deleted ``removal_grace_seconds`` after the
  confirmation, by the ``removed`` rule, within the drain rate (``planner.DRAIN_SHARE``).
* A machinetype back in the configuration cancels its row; a row whose machines are all
  gone is dropped.  The ``"*"`` row is the daemon's to write and drop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from cloudvac.config.models import Space
from cloudvac.model.records import WHOLE_SPACE, Event, MachineRecord, Removal, SpaceHistory


@dataclass(frozen=True, slots=True)
class RemovalWait:
    """A removal waiting for confirmation this cycle."""

    machinetype: str
    """``"*"``: the whole space."""
    machines: int
    total: int
    """The space's machines."""


@dataclass(frozen=True, slots=True)
class RemovalPlan:
    deadlines: Mapping[str, float | None] = field(default_factory=dict)
    """Removed machinetype (``"*"``: the space) -> when its machines may be deleted, or
    None while the removal waits for confirmation."""
    rows: tuple[Removal, ...] = ()
    """Removal rows to write: new ones, and those that go ahead now."""
    cancelled: tuple[str, ...] = ()
    """Machinetypes whose removal row is dropped (back in the configuration, or done)."""
    waiting: tuple[RemovalWait, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def space_removed(self) -> bool:
        return WHOLE_SPACE in self.deadlines


def _confirm_page(space: Space, machinetype: str) -> str:
    what = space.name if machinetype == WHOLE_SPACE else f"{space.name} {machinetype}"
    return f"`cloudvac confirm-removal {what}` or confirm_removals = true"


def removals(space: Space, records: Sequence[MachineRecord], history: SpaceHistory,
             now: float) -> RemovalPlan:
    """What removals mean for ``space`` this cycle, given the ``records`` of the machines
    that hold capacity (the planner's views)."""
    counts = Counter(r.machinetype for r in records)
    created = {r.machinetype for r in records if r.adopted_at is None}
    stored, total = history.removals, len(records)
    if WHOLE_SPACE in stored:
        keys = [WHOLE_SPACE]
    else:
        keys = sorted(mt for mt in counts if mt not in space.machinetypes
                      and (mt in stored or mt in created))
    events: list[Event] = []
    cancelled = _cancelled(space, stored, counts, now, events)
    current: dict[str, Removal] = {}
    rows: list[Removal] = []
    for key in keys:
        machines = total if key == WHOLE_SPACE else counts[key]
        row = stored.get(key)
        if row is None:
            row = Removal(key, now, machines)
            rows.append(row)
            events.append(_event(space, key, now, f"removed from the configuration with "
                                 f"{machines} of the space's {total} machine(s): drained"))
        current[key] = row
    pending = [k for k, row in current.items() if row.confirmed_at is None]
    held = sum(total if k == WHOLE_SPACE else counts[k] for k in pending)
    fraction = space.removal_confirm_fraction
    waits: list[RemovalWait] = []
    if pending and (space.confirm_removals or fraction >= 1 or held <= fraction * total):
        why = "confirm_removals" if space.confirm_removals else \
            f"within removal_confirm_fraction {fraction:g}"
        for key in pending:
            current[key] = replace(current[key], confirmed_at=now)
            rows = [r for r in rows if r.machinetype != key] + [current[key]]
            events.append(_event(space, key, now, f"removal goes ahead ({why}): its machines "
                                 f"are deleted from {space.removal_grace_seconds}s on"))
    elif pending:
        waits = [RemovalWait(k, total if k == WHOLE_SPACE else counts[k], total)
                 for k in pending]
    grace = space.removal_grace_seconds
    deadlines = {k: None if row.confirmed_at is None else row.confirmed_at + grace
                 for k, row in current.items()}
    return RemovalPlan(deadlines, tuple(rows), tuple(cancelled), tuple(waits), tuple(events))


def _cancelled(space: Space, stored: Mapping[str, Removal], counts: Mapping[str, int],
               now: float, events: list[Event]) -> list[str]:
    """Rows to drop: machinetypes back in the configuration, and removals done."""
    dropped: list[str] = []
    for key in sorted(stored):
        if key == WHOLE_SPACE:
            continue
        if key in space.machinetypes:
            events.append(_event(space, key, now, "back in the configuration: its removal "
                                 "is cancelled"))
        elif counts.get(key, 0) == 0:
            events.append(_event(space, key, now, "removal done: no machine of it is left"))
        else:
            continue
        dropped.append(key)
    return dropped


def wait_message(space: Space, wait: RemovalWait) -> str:
    """The cycle's warning for a removal that waits for confirmation."""
    what = "the space" if wait.machinetype == WHOLE_SPACE else "the machinetype"
    return (f"{what} left the configuration: draining it would delete {wait.machines} of "
            f"the space's {wait.total} machine(s), more than removal_confirm_fraction "
            f"{space.removal_confirm_fraction:g}; its machines keep running until "
            f"{_confirm_page(space, wait.machinetype)}")


def _event(space: Space, key: str, now: float, message: str) -> Event:
    machinetype = "" if key == WHOLE_SPACE else key
    return Event(now, space.name, machinetype, "", "removal", message)
