"""What the store remembers about a space, as plain records the pure planner reads.

The store owns persistence; the engine owns meaning.  These records are the contract
between them: the store turns rows into ``SpaceHistory`` and applies ``MachineUpdate``s,
the planner never sees a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudvac.engine.states import MachineState, ShutdownMessage


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """One machine as the store knows it.  Heartbeat and shutdown fields are written by the
    VM-facing web side; the engine only reads them."""

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
    shutdown_at: float | None = None
    delete_requested_at: float | None = None
    delete_reason: str = ""
    fault: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class Intent:
    """A create that was decided and recorded before the cloud was asked."""

    space: str
    name: str
    machinetype: str
    processors: int
    hs06: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class SpaceHistory:
    """Everything the store holds for one space, read once per cycle."""

    machines: Mapping[str, MachineRecord] = field(default_factory=dict)
    intents: Mapping[str, Intent] = field(default_factory=dict)
    last_abort: Mapping[str, float] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()
    """Machinetype names drained by an operator; ``"*"`` drains the whole space."""


@dataclass(frozen=True, slots=True)
class MachineUpdate:
    """The engine-owned fields of one machine after this cycle.

    ``default_shutdown`` is stored only when the VM has not uploaded its own message, so a
    VM's own account of why it ended is never overwritten (VCycle overwrote it).
    """

    name: str
    machinetype: str
    state: MachineState
    cloud_id: str = ""
    processors: int = 1
    hs06: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    delete_requested_at: float | None = None
    delete_reason: str = ""
    fault: str = ""
    address: str = ""
    default_shutdown: ShutdownMessage | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the space's event log (what happened and why), kept in the store."""

    at: float
    space: str
    machinetype: str
    machine: str
    kind: str
    message: str
