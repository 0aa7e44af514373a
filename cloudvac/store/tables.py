"""The store's tables, as SQLAlchemy 2 typed declarative classes, and their records.

These classes are the schema's single source of truth: migrations under ``migrations/``
must reproduce exactly this metadata (a test compares them).  Everything here stays
portable between SQLite and PostgreSQL: no dialect-specific types or defaults.

Times are float unix seconds, stored as double precision: a 4-byte float (what a bare
``FLOAT`` can mean on some databases) cannot even hold today's date to the second.
Defaults live in the store's code, not in the schema, because every write goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Double, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloudvac.engine.records import Event, Intent, MachineRecord
from cloudvac.engine.states import MachineState, ShutdownMessage

# Named constraints keep future migrations deterministic: PostgreSQL otherwise invents
# names that a later ALTER would have to guess.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Identifiers (space, machine and machinetype names, cloud ids) are bounded strings;
    # free text uses ``Text`` explicitly.
    type_annotation_map = {float: Double, str: String(255)}


class MachineRow(Base):
    """One machine.  Engine-owned fields are written by ``Store.apply``; ``heartbeat_at``
    and ``shutdown_*`` belong to the VM-facing side and ``apply`` never overwrites them
    (except a default shutdown message when the VM sent none)."""

    __tablename__ = "machines"

    space: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(primary_key=True)
    machinetype: Mapped[str]
    state: Mapped[str] = mapped_column(String(16))
    cloud_id: Mapped[str]
    processors: Mapped[int] = mapped_column(Integer)
    hs06: Mapped[float | None]
    created_at: Mapped[float | None]
    started_at: Mapped[float | None]
    stopped_at: Mapped[float | None]
    heartbeat_at: Mapped[float | None]
    shutdown_code: Mapped[int | None] = mapped_column(Integer)
    shutdown_text: Mapped[str | None] = mapped_column(Text)
    shutdown_at: Mapped[float | None]
    delete_requested_at: Mapped[float | None]
    delete_reason: Mapped[str] = mapped_column(Text)
    fault: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)
    # When ``apply`` last changed this row (wall clock); heartbeats do not touch it.
    updated_at: Mapped[float]
    # The space's revision (``space_revisions``) of the last transaction that wrote this
    # row, by any writer: ``history`` reads only the rows stamped after its last read.
    rev: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (Index("ix_machines_space_rev", "space", "rev"),)

    def to_record(self) -> MachineRecord:
        return machine_record(self)


def machine_record(row: Any) -> MachineRecord:
    """A MachineRecord from anything with the machines columns as attributes: an ORM
    object or a Core row (single reads; the per-cycle read uses ``record_from_values``)."""
    shutdown = None
    if row.shutdown_code is not None:
        shutdown = ShutdownMessage(row.shutdown_code, row.shutdown_text or "")
    return MachineRecord(
        space=row.space, name=row.name, machinetype=row.machinetype,
        state=MachineState(row.state), cloud_id=row.cloud_id, processors=row.processors,
        hs06=row.hs06, created_at=row.created_at, started_at=row.started_at,
        stopped_at=row.stopped_at, heartbeat_at=row.heartbeat_at, shutdown=shutdown,
        shutdown_at=row.shutdown_at, delete_requested_at=row.delete_requested_at,
        delete_reason=row.delete_reason, fault=row.fault, address=row.address)


#: The machines columns ``record_from_values`` expects, in its order (no space, no
#: updated_at: the caller knows the space, and the record has no updated_at).
RECORD_COLUMNS = (
    "name", "machinetype", "state", "cloud_id", "processors", "hs06", "created_at",
    "started_at", "stopped_at", "heartbeat_at", "shutdown_code", "shutdown_text",
    "shutdown_at", "delete_requested_at", "delete_reason", "fault", "address",
)  # fmt: skip

_STATES = {state.value: state for state in MachineState}


def record_from_values(space: str, values: Sequence[Any]) -> MachineRecord:
    """A MachineRecord from one row of ``RECORD_COLUMNS`` values, by position.

    The per-cycle read builds one record per machine of a space, every cycle: by position
    and with a dict for the state this costs a fraction of attribute access on Core rows
    (about 1.4 against 9 microseconds per machine, benchmarks/scale.py).  An unknown
    state string raises ValueError, as ``MachineState(value)`` would.
    """
    (name, machinetype, state, cloud_id, processors, hs06, created_at, started_at,
     stopped_at, heartbeat_at, code, text, shutdown_at, delete_requested_at, delete_reason,
     fault, address) = values
    try:
        state_ = _STATES[state]
    except KeyError:
        state_ = MachineState(state)  # raises the usual ValueError
    return MachineRecord(
        space, name, machinetype, state_, cloud_id, processors, hs06, created_at, started_at,
        stopped_at, heartbeat_at, None if code is None else ShutdownMessage(code, text or ""),
        shutdown_at, delete_requested_at, delete_reason, fault, address)


class IntentRow(Base):
    """A create recorded before the cloud was asked; dropped once the listing shows it."""

    __tablename__ = "intents"

    space: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(primary_key=True)
    machinetype: Mapped[str]
    processors: Mapped[int] = mapped_column(Integer)
    hs06: Mapped[float | None]
    created_at: Mapped[float]

    def to_intent(self) -> Intent:
        return Intent(
            self.space, self.name, self.machinetype, self.processors, self.hs06, self.created_at
        )


class BackoffRow(Base):
    """Latest abort (shutdown code 300-699) seen per machinetype; only ever increases."""

    __tablename__ = "backoff"

    space: Mapped[str] = mapped_column(primary_key=True)
    machinetype: Mapped[str] = mapped_column(primary_key=True)
    last_abort_at: Mapped[float]


class DrainRow(Base):
    """Presence of a row means drained; machinetype ``"*"`` drains the whole space."""

    __tablename__ = "drains"

    space: Mapped[str] = mapped_column(primary_key=True)
    machinetype: Mapped[str] = mapped_column(primary_key=True)


class CredentialRow(Base):
    """When a space's credentials expire (Keystone token, Check-in tokens), for status."""

    __tablename__ = "credentials"

    space: Mapped[str] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(primary_key=True)
    expires_at: Mapped[float]
    updated_at: Mapped[float]


class SpaceRevisionRow(Base):
    """A counter per space, bumped once by every transaction that writes its machines.

    The bump locks the row until commit, so one space's revisions commit in order and a
    snapshot always sees a prefix of them (``store/history.py``)."""

    __tablename__ = "space_revisions"

    space: Mapped[str] = mapped_column(primary_key=True)
    rev: Mapped[int] = mapped_column(Integer)


class EventRow(Base):
    """One line of a space's event log.  Read newest first per space, hence the index."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_space_at", "space", "at"),)

    # Plain Integer: on SQLite only ``INTEGER PRIMARY KEY`` is an autoincrementing rowid.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float]
    space: Mapped[str]
    machinetype: Mapped[str]
    machine: Mapped[str]
    kind: Mapped[str]
    message: Mapped[str] = mapped_column(Text)

    def to_event(self) -> Event:
        return Event(self.at, self.space, self.machinetype, self.machine, self.kind, self.message)
