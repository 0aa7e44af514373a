"""Merge the cloud's listing with the store's history into one view per machine.

Pure: no I/O, the clock is an argument.  The cloud decides which machines exist; the store
adds what only cloudvac knows.  Rules:

* a listed machine with no record is adopted from its tags (the store was lost, or a
  previous incarnation crashed after its create call);
* a listed machine matching an intent resolves the intent;
* a recorded machine that is no longer listed is gone, unless its create is so recent
  that its intent is still open (the cloud may not list it yet);
* an intent neither listed nor recorded still counts as a starting machine until
  ``intent_seconds`` pass, so stale listings cannot make the planner exceed limits;
* a machine's end (first seen finished, gone, or deleted by us) is evaluated once: a
  shutdown code 300-699 is an abort, and so is a run shorter than ``fizzle_seconds``
  unless the VM reported success (100/200).  The abort feeds the machinetype's backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cloudvac.clouds.base import ObservedMachine
from cloudvac.config.models import Space
from cloudvac.engine.records import Event, Intent, MachineRecord, MachineUpdate, SpaceHistory
from cloudvac.engine.states import MachineState, ShutdownMessage


@dataclass(frozen=True, slots=True)
class MachineView:
    """One machine this cycle: the record as it will be stored, plus whether it is listed."""

    record: MachineRecord
    listed: bool
    from_intent: bool = False

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def machinetype(self) -> str:
        return self.record.machinetype

    @property
    def state(self) -> MachineState:
        return self.record.state

    @property
    def processors(self) -> int:
        return self.record.processors


@dataclass(slots=True)
class Reconciled:
    machines: list[MachineView] = field(default_factory=list)
    updates: list[MachineUpdate] = field(default_factory=list)
    aborts: dict[str, float] = field(default_factory=dict)
    resolved_intents: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def reconcile(space: Space, observed: Sequence[ObservedMachine], history: SpaceHistory,
              now: float) -> Reconciled:
    out = Reconciled()
    listed_names: set[str] = set()
    machines, intents = history.machines, history.intents
    for seen in observed:
        listed_names.add(seen.name)
        old = machines.get(seen.name)
        intent = intents.get(seen.name)
        if intent is not None:
            out.resolved_intents.append(seen.name)
        record = _merge(space.name, seen, old, intent, now)
        # ``record is old``, the common case cycle after cycle, means nothing changed: no
        # event, no update, and no field-by-field comparison (benchmarks/scale.py).
        if record is not old:
            if old is None:
                how = "created" if intent is not None else "adopted from its tags"
                out.events.append(_event(now, record, "listed", f"first listed ({how}), "
                                         f"state {record.state}"))
            elif old.state != record.state:
                out.events.append(_event(now, record, "state", f"{old.state} -> {record.state}"
                                         + (f": {record.fault}" if record.fault else "")))
        if record.stopped_at is None and record.state in _FINISHED:
            record = end_machine(space, record, now, None, out)
        out.machines.append(MachineView(record, True))
        if record is not old and record != old:  # write only changes
            out.updates.append(to_update(record))

    for name, old in history.machines.items():
        if name in listed_names:
            continue
        intent = history.intents.get(name)
        if intent is not None and now - intent.created_at < space.intent_seconds:
            # Created but not listed yet: keep counting it, decide nothing about it.
            out.machines.append(MachineView(old, listed=False, from_intent=True))
            continue
        record = replace(old, state=MachineState.GONE)
        if intent is not None:
            out.resolved_intents.append(name)
        if record.stopped_at is None:
            record = end_machine(space, record, now, None, out)
        out.events.append(_event(now, record, "gone", "no longer listed by the cloud"))
        out.updates.append(to_update(record))

    for name, intent in history.intents.items():
        if name in listed_names or name in history.machines:
            continue
        if now - intent.created_at < space.intent_seconds:
            out.machines.append(MachineView(_intent_record(intent), listed=False,
                                            from_intent=True))
        else:
            out.resolved_intents.append(name)
            out.events.append(Event(now, space.name, intent.machinetype, name, "intent-expired",
                                    f"create never listed within {space.intent_seconds}s; "
                                    "forgotten"))
    return out


_FINISHED = frozenset(state for state in MachineState if state.finished)


def end_machine(space: Space, record: MachineRecord, now: float,
                message: ShutdownMessage | None, out: Reconciled) -> MachineRecord:
    """Mark ``record`` ended at ``now`` and record an abort if the end was one.

    ``message`` is cloudvac's own reason (used only when the VM reported none).
    """
    effective = record.shutdown or message
    ended = replace(record, stopped_at=now, shutdown=effective)
    mt = space.machinetypes.get(record.machinetype)
    if mt is None:
        return ended
    ran = (now - record.started_at) if record.started_at is not None else 0.0
    reason = ""
    if effective is not None and effective.is_abort:
        reason = f"shutdown code {effective}"
    elif (effective is None or not effective.is_success) and ran < mt.fizzle_seconds:
        reason = f"fizzled after {ran:.0f}s (< fizzle_seconds {mt.fizzle_seconds})"
    if reason:
        out.aborts[mt.name] = max(out.aborts.get(mt.name, 0.0), now)
        out.events.append(_event(now, ended, "abort", f"{reason}: backoff "
                                 f"{mt.backoff_seconds}s"))
    return ended


def to_update(record: MachineRecord) -> MachineUpdate:
    return MachineUpdate(
        name=record.name, machinetype=record.machinetype, state=record.state,
        cloud_id=record.cloud_id, processors=record.processors, hs06=record.hs06,
        created_at=record.created_at, started_at=record.started_at,
        stopped_at=record.stopped_at, delete_requested_at=record.delete_requested_at,
        delete_reason=record.delete_reason, fault=record.fault, address=record.address,
        default_shutdown=record.shutdown,
    )


def _merge(space: str, seen: ObservedMachine, old: MachineRecord | None, intent: Intent | None,
           now: float) -> MachineRecord:
    created = seen.created_at or (old.created_at if old else None) or \
        (intent.created_at if intent else None) or now
    started = seen.started_at or (old.started_at if old else None)
    if started is None and seen.state is MachineState.RUNNING:
        started = now
    base = old or MachineRecord(space=space, name=seen.name, machinetype=seen.machinetype,
                                state=seen.state,
                                hs06=intent.hs06 if intent is not None else None)
    fault, address = seen.fault or base.fault, seen.address or base.address
    if old is not None and (old.state, old.cloud_id, old.processors, old.created_at,
                            old.started_at, old.fault, old.address) == (
            seen.state, seen.cloud_id, seen.processors, created, started, fault, address):
        return old  # the common case, cycle after cycle: no copy (benchmarks/scale.py)
    return replace(base, state=seen.state, cloud_id=seen.cloud_id, processors=seen.processors,
                   created_at=created, started_at=started, fault=fault, address=address)


def _intent_record(intent: Intent) -> MachineRecord:
    return MachineRecord(space=intent.space, name=intent.name, machinetype=intent.machinetype,
                         state=MachineState.INTENT, processors=intent.processors,
                         hs06=intent.hs06, created_at=intent.created_at)


def _event(now: float, record: MachineRecord, kind: str, message: str) -> Event:
    return Event(now, record.space, record.machinetype, record.name, kind, message)
