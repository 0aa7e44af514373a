"""The store's tables and how a machine row becomes a record and back.

This metadata is the schema's single source of truth: migrations under ``migrations/``
must reproduce exactly this metadata (a test compares them).  The ``machines`` table is
derived from the fields of ``model.records.MachineRecord`` (one column per field, two for
the shutdown message), so the row is defined once; a test fails when they drift.
Everything here stays portable between SQLite and PostgreSQL: no dialect-specific types or
defaults.

Times are float unix seconds, stored as double precision: a 4-byte float (what a bare
``FLOAT`` can mean on some databases) cannot even hold today's date to the second.
Defaults live in the store's code, not in the schema, because every write goes through it.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Double, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from cloudvac.model.records import (
    ENGINE_FIELDS,
    KEY_FIELDS,
    MACHINE_FIELDS,
    Event,
    MachineRecord,
)
from cloudvac.model.redact import redact
from cloudvac.model.states import MachineState, ShutdownMessage

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


# -- machines: derived from model.records.MachineRecord -------------------------------------

#: String fields of the record that hold free text rather than a bounded identifier.
TEXT_FIELDS = frozenset({"delete_reason", "fault", "address"})
_SHUTDOWN_COLUMNS = ("shutdown_code", "shutdown_text")


def _columns_of(name: str, hint: object) -> list[Column[Any]]:
    """The column(s) that store record field ``name`` of type ``hint``."""
    if hint == ShutdownMessage | None:  # the VM's message: code and text
        return [Column("shutdown_code", Integer(), nullable=True),
                Column("shutdown_text", Text(), nullable=True)]
    types: dict[object, tuple[TypeEngine[Any], bool]] = {
        str: (Text() if name in TEXT_FIELDS else String(255), False),
        int: (Integer(), False),
        float | None: (Double(), True),
        str | None: (Text(), True),  # free text an operator gives
        MachineState: (String(16), False),
    }
    if hint not in types:
        raise TypeError(f"MachineRecord.{name}: no column type for {hint!r}")
    sql, nullable = types[hint]
    return [Column(name, sql, nullable=nullable, primary_key=name in KEY_FIELDS)]


def _machines_table() -> Table:
    hints = typing.get_type_hints(MachineRecord)
    columns = [c for name in MACHINE_FIELDS for c in _columns_of(name, hints[name])]
    return Table(
        "machines", Base.metadata, *columns,
        # When an engine write last changed the row (the engine's clock); heartbeats
        # do not touch it.
        Column("updated_at", Double(), nullable=False),
        # The space's revision (``space_revisions``) of the last transaction that wrote
        # this row, by any writer: ``history`` reads only the rows stamped after its
        # last read.
        Column("rev", Integer(), nullable=False, server_default="0"),
        Index("ix_machines_space_rev", "space", "rev"),
        Index("ix_machines_space_machinetype_heartbeat_at", "space", "machinetype",
              "heartbeat_at"),
    )


#: One machine per row.  The engine writes ``ENGINE_COLUMNS`` (``Store.apply``); the
#: VM-facing side writes ``heartbeat_at`` and the shutdown columns, which ``apply`` never
#: overwrites (except with cloudvac's own reason when the VM sent none).
MACHINES = _machines_table()
#: Every column of a record except ``space`` (the reader knows it), in field order.
RECORD_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in MACHINES.columns if c.name not in ("space", "updated_at", "rev"))
#: What an engine write sets on an existing row.
ENGINE_COLUMNS: tuple[str, ...] = (*ENGINE_FIELDS, "updated_at", "rev")

_STATES = {state.value: state for state in MachineState}
_STATE = RECORD_COLUMNS.index("state")
_CODE = RECORD_COLUMNS.index("shutdown_code")


def record_from_values(space: str, values: Sequence[Any]) -> MachineRecord:
    """A MachineRecord from one row of ``RECORD_COLUMNS`` values, by position.

    The per-cycle read builds one record per changed machine of a space: by position and
    with a dict for the state this costs a fraction of attribute access on Core rows
    (benchmarks/scale.py).  An unknown state string raises ValueError, as
    ``MachineState(value)`` would.
    """
    v = tuple(values)
    state = _STATES.get(v[_STATE]) or MachineState(v[_STATE])
    code = v[_CODE]
    shutdown = None if code is None else ShutdownMessage(code, v[_CODE + 1] or "")
    args: tuple[Any, ...] = (space, *v[:_STATE], state, *v[_STATE + 1:_CODE], shutdown,
                             *v[_CODE + 2:])
    return MachineRecord(*args)


def storable(text: str) -> str:
    """``text`` as both backends store it: PostgreSQL refuses a NUL character in text (the
    whole write would fail), so NUL becomes U+FFFD, on SQLite too."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def engine_values(record: MachineRecord, now: float, rev: int) -> dict[str, Any]:
    """The row an engine write upserts: key and engine fields, ``updated_at``, ``rev``,
    and the record's shutdown message stamped ``now`` (kept only where the row has none:
    see ``Store.apply``)."""
    values: dict[str, Any] = {name: getattr(record, name) for name in (*KEY_FIELDS,
                                                                       *ENGINE_FIELDS)}
    values["state"] = record.state.value
    # The one text the engine copies from the cloud (a server's fault, a refusal): the
    # adapters redact it; redacted again here, where every machine row is written.
    values["fault"] = redact(record.fault)
    for name in TEXT_FIELDS:
        values[name] = storable(values[name])
    message = record.shutdown
    values.update(shutdown_code=None if message is None else message.code,
                  shutdown_text=None if message is None else storable(message.text),
                  shutdown_at=None if message is None else now, updated_at=now, rev=rev)
    return values


def column_fields() -> Mapping[str, str]:
    """Which record field each machines column stores (for the drift test)."""
    found = {c: c for c in (*KEY_FIELDS, *RECORD_COLUMNS) if c not in _SHUTDOWN_COLUMNS}
    found.update({c: "shutdown" for c in _SHUTDOWN_COLUMNS})
    return found


# -- the other tables ------------------------------------------------------------------------

class BackoffRow(Base):
    """Latest abort (shutdown code 300-699) seen per machinetype; only ever increases."""

    __tablename__ = "backoff"

    space: Mapped[str] = mapped_column(primary_key=True)
    machinetype: Mapped[str] = mapped_column(primary_key=True)
    last_abort_at: Mapped[float]


class DrainRow(Base):
    """Presence of a row means drained; machinetype ``"*"`` drains the whole space
    (``model.records.Drain``).  Rows older than revision 0007 have neither time nor
    grace: drained since 0, deleted at once, as they were."""

    __tablename__ = "drains"

    space: Mapped[str] = mapped_column(primary_key=True)
    machinetype: Mapped[str] = mapped_column(primary_key=True)
    drained_at: Mapped[float] = mapped_column(server_default="0")
    grace_seconds: Mapped[float] = mapped_column(server_default="0")


class RoomRow(Base):
    """What the quota leaves a space once foreign usage is counted, as of the engine's
    last read of the cloud's limits (``model.records.ProjectRoom``), for status."""

    __tablename__ = "project_room"

    space: Mapped[str] = mapped_column(primary_key=True)
    at: Mapped[float]
    foreign_processors: Mapped[int] = mapped_column(Integer)
    room_processors: Mapped[int | None] = mapped_column(Integer)
    room_instances: Mapped[int | None] = mapped_column(Integer)
    smallest_processors: Mapped[int] = mapped_column(Integer)


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
