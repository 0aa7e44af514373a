"""What the operator's commands write and what status reads about them: drains (with their
grace), kill requests (two fields of the machine's row) and the project's room.

Functions here run inside a transaction the ``Store`` opened; they never commit.  A kill
request writes a machine row, so the ``Store`` bumps the space's revision first (``b_rev``)
and the engine's next history read sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Float, Integer, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cloudvac.model.records import Drain, ProjectRoom, drain_deadline
from cloudvac.model.states import MachineState
from cloudvac.store.tables import MACHINES, DrainRow, RoomRow

_KILL = (
    update(MACHINES)
    .where(MACHINES.c.space == bindparam("b_space"), MACHINES.c.name == bindparam("b_name"),
           MACHINES.c.state != MachineState.GONE.value)
    .values(kill_requested_at=bindparam("b_at", type_=Float()),
            kill_reason=bindparam("b_reason"), rev=bindparam("b_rev", type_=Integer()))
)
"""Ask for a live machine's deletion; a gone one refuses."""
_DRAINS = select(DrainRow)


def _insert(dialect: str, entity: Any) -> sqlite.Insert | postgresql.Insert:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(entity)


def set_drain(connection: Connection, space: str, machinetype: str, at: float,
              grace_seconds: float) -> None:
    """Drain ``machinetype`` (``"*"``: the space) from ``at`` with ``grace_seconds``; a drain
    already there is replaced (the latest command wins)."""
    stmt = _insert(connection.dialect.name, DrainRow).values(
        space=space, machinetype=machinetype, drained_at=at, grace_seconds=grace_seconds)
    connection.execute(stmt.on_conflict_do_update(
        index_elements=["space", "machinetype"],
        set_={"drained_at": stmt.excluded.drained_at,
              "grace_seconds": stmt.excluded.grace_seconds}))


def undrain(connection: Connection, space: str, machinetype: str) -> bool:
    """Cancel a drain; whether there was one."""
    result = connection.execute(delete(DrainRow).where(
        DrainRow.space == space, DrainRow.machinetype == machinetype))
    return result.rowcount > 0


def drains(connection: Connection, space: str | None) -> dict[str, dict[str, Drain]]:
    """space -> machinetype -> drain, of ``space`` or of every space."""
    query = _DRAINS if space is None else _DRAINS.where(DrainRow.space == space)
    found: dict[str, dict[str, Drain]] = {}
    for row in connection.execute(query).all():
        found.setdefault(row.space, {})[row.machinetype] = Drain(
            row.machinetype, row.drained_at, row.grace_seconds)
    return found


def deadline(connection: Connection, space: str, machinetype: str) -> float | None:
    """When ``machinetype``'s machines in ``space`` must be gone, or None if not drained."""
    return drain_deadline(drains(connection, space).get(space, {}), machinetype)


def request_kill(connection: Connection, key: Mapping[str, Any], reason: str,
                 at: float) -> bool:
    """Record the kill request of the machine ``key`` names (``b_space``, ``b_name``,
    ``b_rev``); False if it has no live row."""
    return connection.execute(_KILL, {**key, "b_at": at, "b_reason": reason}).rowcount > 0


def set_room(connection: Connection, space: str, room: ProjectRoom) -> None:
    values = {"space": space, "at": room.at, "foreign_processors": room.foreign_processors,
              "room_processors": room.room_processors, "room_instances": room.room_instances,
              "smallest_processors": room.smallest_processors}
    stmt = _insert(connection.dialect.name, RoomRow).values(values)
    connection.execute(stmt.on_conflict_do_update(
        index_elements=["space"],
        set_={name: stmt.excluded[name] for name in values if name != "space"}))


def rooms(connection: Connection) -> dict[str, ProjectRoom]:
    return {row.space: ProjectRoom(row.at, row.foreign_processors, row.room_processors,
                                   row.room_instances, row.smallest_processors)
            for row in connection.execute(select(RoomRow)).all()}
