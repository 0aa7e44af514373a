"""Merge the cloud's listing with the store's history into one frozen view per machine.

Pure: no I/O, the clock is an argument.  The cloud decides which machines exist; the store
adds what only cloudvac knows.  Rules:

* a listed machine with no record is adopted from its tags (the store was lost, or a
  previous incarnation crashed after its create call): ``adopted_at`` is set, so the
  rules give it a fresh grace (``rules.py``); when the store says it was restored, every
  listed machine is treated so;
* a listed machine whose record is an ``intent`` was created by us: it takes the state the
  cloud lists;
* an ``intent`` not listed still counts as a starting machine until ``intent_seconds``
  pass (the cloud may not list a new server at once, and stale listings must not make the
  planner exceed limits); then it is forgotten (gone, without an end);
* any other recorded machine that a listing misses is marked ``missing_since``, still counts
  as holding capacity, and is gone when the next listing misses it too (one listing can
  miss a server that moves from its build request into its cell between two pages), or at
  once when cloudvac had asked for its deletion;
* a machine first seen finished or gone is ended (``lifecycle.end``), once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from cloudvac.config.models import Space
from cloudvac.engine.lifecycle import end, event
from cloudvac.model.cloud import RECLAIMED, ObservedMachine
from cloudvac.model.records import Event, MachineRecord, SpaceHistory
from cloudvac.model.states import FINISHED as _FINISHED
from cloudvac.model.states import MAX_MESSAGE_TEXT, STARTING, MachineState, ShutdownMessage

_INTENT, _GONE = MachineState.INTENT, MachineState.GONE


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What the listing taught about the space's machines."""

    records: tuple[MachineRecord, ...] = ()
    """Every machine that holds capacity or may, as it will be stored: the listed ones in
    listing order, then those the listing missed (pending intents, missing machines)."""
    unlisted: frozenset[str] = frozenset()
    """The names among ``records`` that this listing did not show."""
    changed: Mapping[str, MachineRecord] = field(default_factory=dict)
    """Records whose stored form changes, by name (machines gone included)."""
    aborts: tuple[Event, ...] = ()
    """Abort events of the machines this listing showed ended."""
    events: tuple[Event, ...] = ()
    """What was seen, in order (listed, state changes, gone, forgotten, aborts)."""
    started: int = 0
    """Machines this listing showed running for the first time (starts that worked)."""
    failed_starts: tuple[MachineRecord, ...] = ()
    """Machines this listing showed in ERROR before they ever ran (starts that failed)."""


@dataclass(slots=True)
class _Found:
    """What one reconciliation gathers, in order."""

    records: list[MachineRecord] = field(default_factory=list)
    unlisted: set[str] = field(default_factory=set)
    changed: dict[str, MachineRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    aborts: list[Event] = field(default_factory=list)
    started: int = 0
    failed: list[MachineRecord] = field(default_factory=list)

    def result(self) -> Reconciled:
        return Reconciled(tuple(self.records), frozenset(self.unlisted), self.changed,
                          tuple(self.aborts), tuple(self.events), self.started,
                          tuple(self.failed))


def reconcile(space: Space, observed: Sequence[ObservedMachine], history: SpaceHistory,
              now: float, absent: frozenset[str] = frozenset()) -> Reconciled:
    """``absent``: names the cloud said, when asked directly, it has no server for."""
    found = _Found()
    if history.restored:
        found.events.append(Event(now, space.name, "", "", "error", "the store went "
                                  "backwards (restored, replaced or lost): every listed "
                                  "machine is treated as adopted, with a fresh grace"))
    listed: set[str] = set()
    machines, records = history.machines, found.records
    for seen in observed:
        name = seen.name
        listed.add(name)
        old = machines.get(name)
        if seen.state is _GONE:  # shown ended (model/cloud.py): holds no capacity
            if old is not None:
                _shown_gone(space, seen, old, now, found)
            continue
        # The common case, cycle after cycle: nothing changed, no event, no write, no copy
        # (_merge returns ``old`` itself; benchmarks/scale.py).
        if old is None or history.restored or _merge(space.name, seen, old, now) is not old \
                or (old.stopped_at is None and old.state in _FINISHED):
            _listed(space, seen, history, now, found)
        else:
            records.append(old)
    for name, old in machines.items():
        if name not in listed:
            _missed(space, old, now, name in absent, found)
    return found.result()


def _missed(space: Space, old: MachineRecord, now: float, absent: bool, found: _Found) -> None:
    """A recorded machine this listing did not show (``absent``: the cloud said it has no
    server of this name)."""
    record = _unlisted(space, old, now, found.events, found.aborts) if not absent \
        else _never_created(old, now, found.events)
    if record is not old:
        found.changed[old.name] = record
    if record.state is not _GONE:
        found.records.append(record)
        found.unlisted.add(old.name)


def _listed(space: Space, seen: ObservedMachine, history: SpaceHistory, now: float,
            found: _Found) -> None:
    old = history.machines.get(seen.name)
    record = _merge(space.name, seen, old, now)
    if history.restored and old is not None:
        record = replace(record, adopted_at=now)
    # ``record is old``, the common case cycle after cycle, means nothing changed: no
    # event, no write, and no field-by-field comparison (benchmarks/scale.py).
    if record is not old:
        note = _listing_event(old, record, now)
        if note is not None:
            found.events.append(note)
        if old is not None and old.state in STARTING and record.state is not old.state:
            found.started += record.state is MachineState.RUNNING
            if record.state is MachineState.FAILED:
                found.failed.append(record)
    if record.stopped_at is None and record.state in _FINISHED:
        record = _ended(space, record, now, found.events, found.aborts)
    if record is not old and record != old:
        found.changed[record.name] = record
    found.records.append(record)


def _shown_gone(space: Space, seen: ObservedMachine, old: MachineRecord, now: float,
                found: _Found) -> None:
    """A live machine the cloud lists as ended: ended (with the listed fault) and gone."""
    record = _merge(space.name, seen, old, now)
    if record.stopped_at is None:
        record = _ended(space, record, now, found.events, found.aborts)
    fault = f": {record.fault}" if record.fault else ""
    found.events.append(event(now, record, "gone", f"ended in the cloud{fault}"))
    found.changed[record.name] = record


def _listing_event(old: MachineRecord | None, record: MachineRecord, now: float) -> Event | None:
    if old is None or old.state is _INTENT:
        how = "adopted from its tags" if old is None else "created"
        return event(now, record, "listed", f"first listed ({how}), state {record.state}")
    if old.state != record.state:
        fault = f": {record.fault}" if record.fault else ""
        return event(now, record, "state", f"{old.state} -> {record.state}{fault}")
    return None


def _ended(space: Space, record: MachineRecord, now: float, events: list[Event],
           aborts: list[Event]) -> MachineRecord:
    reclaimed = record.fault.startswith(RECLAIMED)
    # "reclaimed by the cloud (spot interruption ...)" -> "100 Reclaimed by the cloud (...)"
    ending = end(space, record, now, ShutdownMessage(
        100, record.fault[:1].upper() + record.fault[1:MAX_MESSAGE_TEXT]) if reclaimed else None)
    if ending.abort is not None:
        events.append(ending.abort)
        aborts.append(ending.abort)
    return ending.record


def _unlisted(space: Space, old: MachineRecord, now: float, events: list[Event],
              aborts: list[Event]) -> MachineRecord:
    """``old`` as it is when the cloud no longer (or not yet) lists it: itself while a
    young intent, missing after one listing without it, else gone."""
    if old.state is _INTENT:
        if now - (old.created_at or now) < space.intent_seconds:
            return old
        events.append(event(now, old, "intent-expired", f"create never listed within "
                            f"{space.intent_seconds}s; forgotten"))
        return replace(old, state=_GONE)
    if old.missing_since is None and old.delete_requested_at is None:
        events.append(event(now, old, "missing", "not in this listing; gone if the next "
                            "one does not show it either"))
        return replace(old, missing_since=now)
    record = replace(old, state=_GONE)
    if record.stopped_at is None:
        record = _ended(space, record, now, events, aborts)
    events.append(event(now, record, "gone", "no longer listed by the cloud"))
    return record


def _never_created(old: MachineRecord, now: float, events: list[Event]) -> MachineRecord:
    """An intent the cloud has no server for: forgotten now, not after intent_seconds."""
    events.append(event(now, old, "intent-expired", "the cloud has no server of this name: "
                        "the create never reached it; forgotten"))
    return replace(old, state=_GONE)


def _merge(space: str, seen: ObservedMachine, old: MachineRecord | None,
           now: float) -> MachineRecord:
    created = seen.created_at or (old.created_at if old else None) or now
    started = seen.started_at or (old.started_at if old else None)
    if started is None and seen.state is MachineState.RUNNING:
        # Seen running now; an adopted machine ran at least since the cloud created it.
        started = now if old is not None else created
    if old is None:
        return MachineRecord(space=space, name=seen.name, machinetype=seen.machinetype,
                             state=seen.state, cloud_id=seen.cloud_id,
                             processors=seen.processors, created_at=created,
                             started_at=started, fault=seen.fault, address=seen.address,
                             adopted_at=now)
    fault, address = seen.fault or old.fault, seen.address or old.address
    if (old.state, old.cloud_id, old.processors, old.created_at, old.started_at, old.fault,
            old.address, old.missing_since) == (seen.state, seen.cloud_id, seen.processors,
                                                created, started, fault, address, None):
        return old  # the common case, cycle after cycle: no copy (benchmarks/scale.py)
    return replace(old, state=seen.state, cloud_id=seen.cloud_id, processors=seen.processors,
                   created_at=created, started_at=started, fault=fault, address=address,
                   missing_since=None)
