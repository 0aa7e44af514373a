"""The lifecycle of one machine: the one place that ends a machine and judges its end.

A machine has one row in the store from the moment a create is decided until it is pruned
long after it is gone.  Who moves it between states (``model/states.py``):

==========  ===========  ===================================================  ==============
from        to           when                                                 where
==========  ===========  ===================================================  ==============
(none)      intent       the planner chose a create; written before the call  ``act.Actor``
intent      gone         the cloud refused the create definitely              ``act.Actor``
intent      (as listed)  first listed by the cloud                            ``reconcile``
intent      gone         never listed within ``intent_seconds``: forgotten    ``reconcile``
(none)      (as listed)  listed with our tags but unknown: adopted            ``reconcile``
listed      (as listed)  the cloud's listing says so                          ``reconcile``
listed      gone         no longer listed                                     ``reconcile``
not ended   ended        first seen finished or gone, or deleted by cloudvac  ``end`` (here)
==========  ===========  ===================================================  ==============

Ending a machine (``end``) sets ``stopped_at`` and keeps the VM's own shutdown message, or
else records cloudvac's reason; it is judged once, and the judgement is an *abort* (which
sets the machinetype's backoff) when the shutdown code is 300-699, or when the machine ran
shorter than ``fizzle_seconds`` without reporting success (100/200).  A machine that never
ran and reported nothing is not an abort: the cloud failed to start it (``pressure.py``).
A deletion requested by the planner ends the machine at that moment (VCycle lost those).

Pure: no I/O, the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from cloudvac.config.models import Space
from cloudvac.model.records import Event, MachineRecord
from cloudvac.model.states import ShutdownMessage


@dataclass(frozen=True, slots=True)
class Ending:
    """A machine ended this cycle, and whether that end was an abort."""

    record: MachineRecord
    """The record with ``stopped_at`` and the effective shutdown message set."""
    abort: Event | None = None
    """The abort event when the end sets the machinetype's backoff, else None."""


def end(space: Space, record: MachineRecord, now: float,
        reason: ShutdownMessage | None) -> Ending:
    """End ``record`` at ``now``.  ``reason`` is cloudvac's own account, stored only when
    the VM reported none.  Machines of a machinetype no longer configured never abort, nor
    do adopted machines that said nothing."""
    effective = record.shutdown or reason
    ended = replace(record, stopped_at=now, shutdown=effective)
    mt = space.machinetypes.get(record.machinetype)
    if mt is None or (record.started_at is None and record.shutdown is None):
        # Never ran and the VM said nothing: the cloud failed to start it (ERROR, BUILD),
        # which is the circuit breaker's and the flavor backoff's business, not the VO's.
        return Ending(ended)
    if record.adopted_at is not None and record.shutdown is None:
        # Adopted and silent: whatever it said went with the store it said it to, so its
        # short life is no evidence against the VO.
        return Ending(ended)
    ran = (now - record.started_at) if record.started_at is not None else 0.0
    why = ""
    if effective is not None and effective.is_abort:
        why = f"shutdown code {effective}"
    elif (effective is None or not effective.is_success) and ran < mt.fizzle_seconds:
        why = f"fizzled after {ran:.0f}s (< fizzle_seconds {mt.fizzle_seconds})"
    if not why:
        return Ending(ended)
    return Ending(ended, event(now, ended, "abort", f"{why}: backoff {mt.backoff_seconds}s"))


def aborts_of(events: Iterable[Event | None]) -> dict[str, float]:
    """Latest abort time per machinetype among abort ``events`` (None entries skipped)."""
    found: dict[str, float] = {}
    for abort in events:
        if abort is not None:
            found[abort.machinetype] = max(found.get(abort.machinetype, abort.at), abort.at)
    return found


def event(now: float, record: MachineRecord, kind: str, message: str) -> Event:
    return Event(now, record.space, record.machinetype, record.name, kind, message)


@dataclass(frozen=True, slots=True)
class Deletion:
    """cloudvac's decision to delete a machine, and what it makes of its record."""

    record: MachineRecord
    """The record as stored from now on: delete requested, and ended if it had not."""
    reason: str
    """The deletion rule's name (``rules.py``)."""
    message: ShutdownMessage | None
    """cloudvac's reason for the end, used when the VM reported none."""
    abort: Event | None
    """The abort event when this deletion ended the machine and that end was an abort."""
    event: Event

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def cloud_id(self) -> str:
        return self.record.cloud_id

    @property
    def machinetype(self) -> str:
        return self.record.machinetype


def delete(space: Space, record: MachineRecord, reason: str,
           message: ShutdownMessage | None, now: float) -> Deletion:
    """Request deletion of ``record`` at ``now`` by rule ``reason``; a machine not yet
    ended is ended now, with ``message`` as cloudvac's account."""
    state = record.state
    record = replace(record, delete_requested_at=now, delete_reason=reason)
    abort = None
    if record.stopped_at is None:
        ending = end(space, record, now, message)
        record, abort = ending.record, ending.abort
    text = f"deleting ({reason}) in state {state}" + (f": {message}" if message else "")
    return Deletion(record, reason, message, abort, event(now, record, "delete", text))
