"""What the store remembers about a space, as plain frozen records.

``MachineRecord`` is *the* machine row: the store's ``machines`` columns are derived from
its fields (``store/tables.py``), and a test fails when the two drift.  Its fields have
two owners: the VM-facing side writes ``VM_FIELDS`` (what a VM uploads), the engine
writes ``ENGINE_FIELDS``; a write by one never overwrites the other's.  The store turns
rows into a ``SpaceHistory``; the planner never sees a database.

A machine has a row from the moment a create is decided (state ``intent``, written before
the cloud is asked) until it is pruned long after it is gone: "created, not yet listed" is
that row in state ``intent``, and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from cloudvac.model.states import FINISHED, MachineState, ShutdownMessage


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """One machine as the store knows it (see ``VM_FIELDS`` for who writes what)."""

    space: str
    name: str
    machinetype: str
    state: MachineState
    cloud_id: str = ""
    processors: int = 1
    hs06: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    heartbeat_at: float | None = None
    shutdown: ShutdownMessage | None = None
    """The VM's own shutdown message, else the reason cloudvac recorded when it ended it."""
    shutdown_at: float | None = None
    delete_requested_at: float | None = None
    delete_reason: str = ""
    fault: str = ""
    address: str = ""
    adopted_at: float | None = None
    """When cloudvac found the machine listed with its tags but had no record of it (a lost
    or restored store, another manager's crash): its heartbeat and starting clocks run
    from then, since nothing older was observed."""
    missing_since: float | None = None
    """When a listing first failed to show the machine; a second listing without it (or
    our own delete) makes it gone."""
    reported_at: float | None = None
    """When the VM's own shutdown_message was recorded: the first one is kept, never
    overwritten (``shutdown_at`` also dates cloudvac's own reasons)."""
    user_data_at: float | None = None
    """When the web side first served the machine's user_data."""
    kill_requested_at: float | None = None
    """When an operator asked for this machine's deletion (``cloudvac kill``): the engine
    deletes it at its next cycle."""
    kill_reason: str | None = None
    """The operator's reason for the kill, recorded in the machine's events."""

    @property
    def ended_at(self) -> float | None:
        """When cloudvac saw the machine end (stopped, failed or gone) or asked for its
        deletion, whichever came first; None while it is alive.  A machine in a finished
        state with no such time (an old row) ended at 0."""
        stopped, deleting = self.stopped_at, self.delete_requested_at
        if stopped is None:  # (asked at every heartbeat: no list built)
            if deleting is None:
                return 0.0 if self.state in FINISHED else None
            return deleting
        return stopped if deleting is None else min(stopped, deleting)

    @property
    def holds_share(self) -> bool:
        """Whether the machine counts towards its machinetype's share: alive and not
        being deleted (a machine being deleted still holds quota, not share)."""
        return self.state not in FINISHED and self.delete_requested_at is None


#: Every field of the machine row, in order.
MACHINE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(MachineRecord))
#: The row's key.
KEY_FIELDS: tuple[str, ...] = ("space", "name")
#: Written by the VM-facing side only.  The engine's writes leave them alone, except that
#: cloudvac's own reason for ending a machine is stored when the VM has sent none.
VM_FIELDS: frozenset[str] = frozenset({"heartbeat_at", "shutdown", "shutdown_at",
                                        "reported_at", "user_data_at"})
#: Written by an operator's command only (``cloudvac kill``); the engine reads them.
OPERATOR_FIELDS: frozenset[str] = frozenset({"kill_requested_at", "kill_reason"})
#: Written by the engine: every field that is neither key nor the VM's nor the operator's.
ENGINE_FIELDS: tuple[str, ...] = tuple(
    name for name in MACHINE_FIELDS
    if name not in VM_FIELDS and name not in KEY_FIELDS and name not in OPERATOR_FIELDS
)


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator's drain of a machinetype (``"*"``: the whole space).

    From ``at`` nothing of it is created, and its machines are told (MJF
    ``shutdowntime``) to take no job that cannot end by ``deadline``; machines still
    there at the deadline are deleted."""

    machinetype: str
    at: float
    grace_seconds: float = 0.0

    @property
    def deadline(self) -> float:
        return self.at + self.grace_seconds


def drain_deadline(drains: Mapping[str, Drain], machinetype: str) -> float | None:
    """When machines of ``machinetype`` must be gone under ``drains`` (the earlier of the
    space's and the machinetype's drain), or None when neither is drained."""
    found = [d.deadline for key in ("*", machinetype) if (d := drains.get(key)) is not None]
    return min(found) if found else None


#: The machinetype key of a removal (and of a drain) that covers the whole space.
WHOLE_SPACE = "*"


@dataclass(frozen=True, slots=True)
class Removal:
    """A machinetype (``"*"``: the whole space) that left the configuration while machines
    of it still ran: its machines are drained, once confirmed (``engine/removal.py``)."""

    machinetype: str
    noticed_at: float
    machines: int
    """Its machines when the removal was noticed."""
    confirmed_at: float | None = None
    """When an operator (``cloudvac confirm-removal``), the ``confirm_removals`` flag or a
    removal within ``removal_confirm_fraction`` let the drain go ahead; None: waiting."""


@dataclass(frozen=True, slots=True)
class ProjectRoom:
    """What the cloud's quota leaves this space once usage cloudvac does not own (foreign
    servers of the project) is counted, as of the cycle's last read of the limits."""

    at: float
    foreign_processors: int
    room_processors: int | None
    """Quota minus foreign usage, in processors (None: no quota)."""
    room_instances: int | None
    """Quota minus foreign servers, in servers (None: no quota)."""
    smallest_processors: int
    """Processors of the smallest flavor the space's machinetypes create (0: none)."""

    @property
    def blocked(self) -> bool:
        """Foreign usage alone leaves no room for one machine of the smallest flavor."""
        return self.smallest_processors > 0 and (
            (self.room_processors is not None and self.room_processors
             < self.smallest_processors)
            or (self.room_instances is not None and self.room_instances < 1))

    def note(self) -> str:
        """The operator's sentence for a blocked space ("" if not blocked)."""
        if not self.blocked:
            return ""
        if self.room_instances is not None and self.room_instances < 1:
            return "usage by servers cloudvac does not own fills the instance quota: " \
                   "no room for a new machine"
        return (f"usage by servers cloudvac does not own ({self.foreign_processors} "
                f"processors) leaves {max(self.room_processors or 0, 0)} of the quota, less "
                f"than the smallest flavor ({self.smallest_processors}): no room for a new "
                "machine")


@dataclass(frozen=True, slots=True)
class SpaceHistory:
    """Everything the store holds for one space, read once per cycle."""

    machines: Mapping[str, MachineRecord] = field(default_factory=dict)
    """Every machine not gone, intents included, by name."""
    last_abort: Mapping[str, float] = field(default_factory=dict)
    drains: Mapping[str, Drain] = field(default_factory=dict)
    """Drains by machinetype name; ``"*"`` drains the whole space."""
    removals: Mapping[str, Removal] = field(default_factory=dict)
    """Removals by machinetype name; ``"*"``: the space left the configuration."""
    restored: bool = False
    """The store went backwards since the last read (restored, replaced or lost): what it
    says about heartbeats and starts is older than what the machines did."""

    @property
    def drained(self) -> frozenset[str]:
        """The drained machinetype names (``"*"``: the whole space)."""
        return frozenset(self.drains)


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the space's event log (what happened and why), kept in the store."""

    at: float
    space: str
    machinetype: str
    machine: str
    kind: str
    message: str


class Recorded(enum.Enum):
    """What recording a VM's shutdown message did (``Store.record_shutdown``)."""

    RECORDED = "recorded"
    """The message is now the machine's (and ``before_commit`` ran)."""
    SAME = "same"
    """The VM had sent this very message before (a retry): nothing changed."""
    CONFLICT = "conflict"
    """The VM had sent another message: it stays, nothing changed."""
    UNKNOWN = "unknown"
    """No such machine."""
