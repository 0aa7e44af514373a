"""What the VM-facing side writes and reads: heartbeats, the VM's own shutdown message
(kept once, never overwritten), the first serving of a machine's user_data, the
heartbeat lists, and the machines requests name, looked up many at a time.

Functions here run inside a write transaction the ``Store`` opened, after it bumped the
space's revision (``b_rev``); they never commit.  Statements are built once: SQLAlchemy
caches their compiled form (the web side writes a batch of heartbeats every second).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Float, Integer, Table, bindparam, case, or_, select, update

from cloudvac.model.records import MachineRecord, Recorded
from cloudvac.model.states import FINISHED, MachineState, ShutdownMessage
from cloudvac.store.tables import MACHINES, RECORD_COLUMNS, SpaceRevisionRow, record_from_values

_ROW = (MACHINES.c.space == bindparam("b_space"), MACHINES.c.name == bindparam("b_name"))
_AT = bindparam("b_at", type_=Float())
_REV = bindparam("b_rev", type_=Integer())
_SHUTDOWN = (
    update(MACHINES)
    .where(*_ROW, MACHINES.c.reported_at.is_(None))
    .values(shutdown_code=bindparam("b_code"), shutdown_text=bindparam("b_text"),
            shutdown_at=_AT, reported_at=_AT, rev=_REV)
)
_REPORTED = select(MACHINES.c.shutdown_code, MACHINES.c.shutdown_text,
                   MACHINES.c.reported_at).where(*_ROW)
HEARTBEAT = (
    update(MACHINES)
    .where(*_ROW, MACHINES.c.state != MachineState.GONE.value)
    .values(heartbeat_at=case((or_(MACHINES.c.heartbeat_at.is_(None),
                                   MACHINES.c.heartbeat_at < _AT), _AT),
                              else_=MACHINES.c.heartbeat_at),
            rev=_REV)
)
"""A heartbeat at ``b_at``: the stored time only moves forward; GONE machines refuse."""

#: Heartbeat lists are bounded: a machinetype of more machines lists its newest ones.
HEARTBEATING_LIMIT = 10_000
# One range of ix_machines_space_machinetype_heartbeat_at, three narrow columns.
HEARTBEATING = (
    select(MACHINES.c.name, MACHINES.c.heartbeat_at, MACHINES.c.address)
    .where(MACHINES.c.space == bindparam("b_space"),
           MACHINES.c.machinetype == bindparam("b_mt"),
           MACHINES.c.heartbeat_at >= bindparam("b_since", type_=Float()),
           MACHINES.c.state == MachineState.RUNNING.value)
    .order_by(MACHINES.c.heartbeat_at.desc(), MACHINES.c.name.desc())
    .limit(bindparam("b_limit", type_=Integer()))
)


@dataclass(frozen=True, slots=True)
class Beating:
    """A machine in a heartbeat list."""

    name: str
    heartbeat_at: float
    address: str


_USER_DATA = update(MACHINES).where(*_ROW, MACHINES.c.user_data_at.is_(None)).values(
    user_data_at=_AT, rev=_REV)


def record_shutdown(connection: Connection, key: dict[str, object], message: ShutdownMessage,
                    at: float, before_commit: Callable[[], None] | None) -> Recorded:
    """Record the VM's first shutdown message; ``key`` holds ``b_space``, ``b_name`` and
    ``b_rev``.  ``before_commit`` runs once the row is written and before the commit: if
    it raises, the transaction rolls back and the error propagates (the caller's file and
    the row change together or not at all)."""
    params = {**key, "b_code": message.code, "b_text": message.text, "b_at": at}
    if connection.execute(_SHUTDOWN, params).rowcount > 0:
        if before_commit is not None:
            before_commit()
        return Recorded.RECORDED
    row = connection.execute(_REPORTED, key).first()
    if row is None:
        return Recorded.UNKNOWN
    same = (row.shutdown_code, row.shutdown_text or "") == (message.code, message.text)
    return Recorded.SAME if same else Recorded.CONFLICT


def claim_user_data(connection: Connection, key: dict[str, object], at: float) -> bool:
    """Mark the machine's user_data served at ``at``: True the first time only."""
    return bool(connection.execute(_USER_DATA, {**key, "b_at": at}).rowcount > 0)


#: Names per statement of a lookup of many machines (bounded IN lists).
NAMED_CHUNK = 500
_NAMED = select(*(MACHINES.c[name] for name in RECORD_COLUMNS)).where(
    MACHINES.c.space == bindparam("b_space"),
    MACHINES.c.name.in_(bindparam("b_names", expanding=True)))
_REVISIONS = cast(Table, SpaceRevisionRow.__table__)
_REVISION = select(_REVISIONS.c.rev).where(_REVISIONS.c.space == bindparam("b_space"))
#: A machine that has ended (``MachineRecord.ended_at`` is not None), in SQL.
_ENDED = or_(MACHINES.c.stopped_at.is_not(None), MACHINES.c.delete_requested_at.is_not(None),
             MACHINES.c.state.in_(sorted(state.value for state in FINISHED)))
# One range of ix_machines_space_rev: the rows written since, of which only ended ones.
_ENDED_SINCE = select(MACHINES.c.name).where(
    MACHINES.c.space == bindparam("b_space"), MACHINES.c.rev > _REV, _ENDED)


@dataclass(frozen=True, slots=True)
class Named:
    """Machines looked up by name, and each space's revision in the same snapshot."""

    records: dict[tuple[str, str], MachineRecord]
    revisions: dict[str, int]


def machines_named(connection: Connection, keys: Iterable[tuple[str, str]]) -> Named:
    """The machines of ``keys`` (space, name) the store has (GONE included), by key: one
    primary-key range per space and chunk of names; and each space's revision (0: none
    yet), read first (``ended_since`` carries on from it)."""
    names: dict[str, list[str]] = {}
    for space, name in keys:
        names.setdefault(space, []).append(name)
    found: dict[tuple[str, str], MachineRecord] = {}
    revisions: dict[str, int] = {}
    for space, wanted in names.items():
        revisions[space] = connection.execute(_REVISION, {"b_space": space}).scalar() or 0
        for start in range(0, len(wanted), NAMED_CHUNK):
            chunk = wanted[start:start + NAMED_CHUNK]
            for row in connection.execute(_NAMED, {"b_space": space, "b_names": chunk}):
                record = record_from_values(space, row)
                found[(space, record.name)] = record
    return Named(found, revisions)


def ended_since(connection: Connection, revs: Mapping[str, int]
                ) -> dict[str, tuple[int, list[str]]]:
    """For each space of ``revs``: its revision now, and its machines written after the
    revision given that have ended: every machine that ended since a read at that
    revision (the revision is read first; a write committed after it is in the next
    call's range)."""
    found: dict[str, tuple[int, list[str]]] = {}
    for space, rev in revs.items():
        now = connection.execute(_REVISION, {"b_space": space}).scalar() or 0
        params = {"b_space": space, "b_rev": rev}
        found[space] = (now, list(connection.execute(_ENDED_SINCE, params).scalars()))
    return found
