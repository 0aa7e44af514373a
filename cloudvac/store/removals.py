"""Removals in the store: machinetypes (``"*"``: a whole space) that left the configuration
while machines of theirs still ran (table ``removals``, migration 0009).

The engine writes what its pure planner decided (``engine/removal.py``: a removal noticed,
one let go ahead, one cancelled); the daemon writes and clears the whole-space row of a
space it drains after the space left the configuration; ``cloudvac confirm-removal`` sets
``confirmed_at``.  The history read (``store/history.py``) brings the rows to the planner.

``RemovalStore`` is a base of ``Store``: its methods use the Store's sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloudvac.model.records import WHOLE_SPACE, Removal
from cloudvac.model.states import MachineState
from cloudvac.store.hatables import RemovalRow
from cloudvac.store.tables import MACHINES


def _removal(row: RemovalRow) -> Removal:
    return Removal(row.machinetype, row.noticed_at, row.machines, row.confirmed_at)


class RemovalStore(ABC):
    """The Store's removal methods (``Store`` supplies the sessions)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """A session that commits on success (``Store._write``)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A read-only session (``Store._read``)."""

    def apply_removals(self, space: str, rows: Sequence[Removal],
                       cancelled: Sequence[str]) -> None:
        """Write the engine's removal decisions for ``space`` in one transaction: ``rows``
        replace what is stored for their machinetype, except that a confirmation already
        stored is kept; ``cancelled`` machinetypes lose their row."""
        if not rows and not cancelled:
            return
        with self._write() as session:
            connection = session.connection()
            insert = postgresql.insert if connection.dialect.name == "postgresql" \
                else sqlite.insert
            for removal in rows:
                stmt = insert(RemovalRow).values(
                    space=space, machinetype=removal.machinetype,
                    noticed_at=removal.noticed_at, machines=removal.machines,
                    confirmed_at=removal.confirmed_at)
                connection.execute(stmt.on_conflict_do_update(
                    index_elements=["space", "machinetype"],
                    set_={"confirmed_at": func.coalesce(RemovalRow.confirmed_at,
                                                        stmt.excluded.confirmed_at)}))
            if cancelled:
                connection.execute(delete(RemovalRow).where(
                    RemovalRow.space == space, RemovalRow.machinetype.in_(list(cancelled))))

    def removals(self, space: str | None = None) -> dict[str, dict[str, Removal]]:
        """space -> machinetype (``"*"``: the whole space) -> removal."""
        query = select(RemovalRow)
        if space is not None:
            query = query.where(RemovalRow.space == space)
        found: dict[str, dict[str, Removal]] = {}
        with self._read() as session:
            for row in session.scalars(query):
                found.setdefault(row.space, {})[row.machinetype] = _removal(row)
        return found

    def confirm_removal(self, space: str, machinetype: str, at: float) -> Removal | None:
        """Let the removal of ``machinetype`` (``"*"``: the whole space) go ahead from
        ``at`` (an earlier confirmation stays); the removal, or None if there is none."""
        with self._write() as session:
            session.execute(update(RemovalRow).where(
                RemovalRow.space == space, RemovalRow.machinetype == machinetype,
                RemovalRow.confirmed_at.is_(None)).values(confirmed_at=at))
            row = session.get(RemovalRow, (space, machinetype))
            return None if row is None else _removal(row)

    def notice_space_removal(self, space: str, at: float, machines: int) -> bool:
        """Record that ``space`` left the configuration (its ``"*"`` row) unless it is
        recorded already; whether it was new."""
        with self._write() as session:
            if session.get(RemovalRow, (space, WHOLE_SPACE)) is not None:
                return False
            session.add(RemovalRow(space=space, machinetype=WHOLE_SPACE, noticed_at=at,
                                   machines=machines, confirmed_at=None))
            return True

    def live_spaces(self) -> set[str]:
        """The spaces with a machine that is not gone (configured or not)."""
        query = select(MACHINES.c.space).where(
            MACHINES.c.state != MachineState.GONE.value).distinct()
        with self._read() as session:
            return set(session.scalars(query))

    def cancel_space_removals(self, spaces: Sequence[str]) -> list[str]:
        """Drop the ``"*"`` rows of ``spaces`` (back in the configuration, or emptied);
        the spaces that had one.  A read first: the common case writes nothing."""
        with self._read() as session:
            removed = set(session.scalars(select(RemovalRow.space).where(
                RemovalRow.machinetype == WHOLE_SPACE)))
        found = sorted(removed.intersection(spaces))
        if found:
            with self._write() as session:
                session.execute(delete(RemovalRow).where(
                    RemovalRow.machinetype == WHOLE_SPACE, RemovalRow.space.in_(found)))
        return found

