"""What the VM-facing side writes and reads: heartbeats, the VM's own shutdown message
(kept once, never overwritten), the first serving of a machine's user_data, and the
heartbeat lists.

Functions here run inside a write transaction the ``Store`` opened, after it bumped the
space's revision (``b_rev``); they never commit.  Statements are built once: SQLAlchemy
caches their compiled form (the web side writes a batch of heartbeats every second).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Float, Integer, bindparam, case, or_, select, update

from cloudvac.model.records import Recorded
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store.tables import MACHINES

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
