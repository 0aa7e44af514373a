"""The store: what the cloud cannot tell us, kept in SQLite (default) or PostgreSQL.

Threading contract: one ``Store`` is shared by every space's worker thread and the web
side.  It holds one Engine and the history cache (``store/history.py``, locked per
space); each call opens its own session and transaction, so calls are independent and
safe to make concurrently.

Portability: upserts use the ``INSERT ... ON CONFLICT`` construct that SQLAlchemy offers
with the same API for SQLite and PostgreSQL, and conditional updates use plain ``CASE``;
no dialect-only SQL is written by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from alembic import command
from sqlalchemy import (
    CursorResult,
    Float,
    Integer,
    Table,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloudvac.engine.records import Event, Intent, MachineRecord, MachineUpdate, SpaceHistory
from cloudvac.engine.states import MachineState, ShutdownMessage
from cloudvac.store.engine import IMMEDIATE, alembic_config, open_engine
from cloudvac.store.history import FULL_READ_SECONDS, HistoryCache, bump_revisions
from cloudvac.store.tables import (
    BackoffRow,
    Base,
    CredentialRow,
    DrainRow,
    EventRow,
    IntentRow,
    MachineRow,
)

_GONE = MachineState.GONE.value


def _machine_values(space: str, update: MachineUpdate, now: float, rev: int) -> dict[str, Any]:
    default = update.default_shutdown
    return {
        "space": space,
        "name": update.name,
        "machinetype": update.machinetype,
        "state": update.state.value,
        "cloud_id": update.cloud_id,
        "processors": update.processors,
        "hs06": update.hs06,
        "created_at": update.created_at,
        "started_at": update.started_at,
        "stopped_at": update.stopped_at,
        "delete_requested_at": update.delete_requested_at,
        "delete_reason": update.delete_reason,
        "fault": update.fault,
        "address": update.address,
        "updated_at": now,
        "rev": rev,
        "shutdown_code": None if default is None else default.code,
        "shutdown_text": None if default is None else default.text,
        "shutdown_at": None if default is None else now,
    }


# Columns ``apply`` overwrites on an existing row; heartbeat_at and shutdown_* are absent
# on purpose (the VM-facing side owns them).
_ENGINE_COLUMNS = (
    "machinetype", "state", "cloud_id", "processors", "hs06", "created_at", "started_at",
    "stopped_at", "delete_requested_at", "delete_reason", "fault", "address", "updated_at",
    "rev",
)  # fmt: skip


_MACHINES = cast(Table, MachineRow.__table__)
_BEAT_AT = bindparam("b_at", type_=Float())
# Built once: SQLAlchemy caches their compiled form (the web side and the simulator's pilots
# write one of these per heartbeat).
_HEARTBEAT = (
    update(_MACHINES)
    .where(_MACHINES.c.space == bindparam("b_space"), _MACHINES.c.name == bindparam("b_name"),
           _MACHINES.c.state != _GONE)
    .values(heartbeat_at=case((or_(_MACHINES.c.heartbeat_at.is_(None),
                                   _MACHINES.c.heartbeat_at < _BEAT_AT), _BEAT_AT),
                              else_=_MACHINES.c.heartbeat_at),
            rev=bindparam("b_rev", type_=Integer()))
)
_SHUTDOWN = (
    update(_MACHINES)
    .where(_MACHINES.c.space == bindparam("b_space"), _MACHINES.c.name == bindparam("b_name"))
    .values(shutdown_code=bindparam("b_code"), shutdown_text=bindparam("b_text"),
            shutdown_at=bindparam("b_at"), rev=bindparam("b_rev"))
)


class Store:
    """Persistent memory of cloudvac.  All methods are synchronous and thread-safe; each
    commits before returning, so a returned call is durable."""

    def __init__(self, url: str, history_full_seconds: float = FULL_READ_SECONDS) -> None:
        """Open (creating if needed) the database at ``url`` and migrate it to head.

        SQLite: the parent directory is created, and connections use WAL and a busy
        timeout.  Raises ValueError for in-memory SQLite or backends other than SQLite
        and PostgreSQL.  ``history_full_seconds``: see ``store/history.py``.
        """
        self.histories = HistoryCache(history_full_seconds)
        self._engine = open_engine(url)
        self._dialect = self._engine.dialect.name
        self._writer = self._engine.execution_options(**{IMMEDIATE: True})
        # history() must see one consistent snapshot; SQLite's BEGIN already gives one.
        self._reader = (
            self._engine.execution_options(isolation_level="REPEATABLE READ")
            if self._dialect == "postgresql"
            else self._engine
        )
        try:
            # One transaction around the whole upgrade; on SQLite BEGIN IMMEDIATE also
            # serialises two processes that open the same fresh file at once.
            with self._writer.begin() as connection:
                command.upgrade(alembic_config(connection), "head")
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        """Release every pooled connection.  The Store must not be used afterwards."""
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._reader) as session, session.begin():
            yield session

    def _insert(self, entity: type[Base]) -> sqlite.Insert | postgresql.Insert:
        if self._dialect == "postgresql":
            return postgresql.insert(entity)
        return sqlite.insert(entity)

    def history(self, space: str) -> SpaceHistory:
        """Everything the planner needs about ``space``, read in one snapshot: its
        non-GONE machines and its intents keyed by name, last abort time per machinetype,
        and the drained machinetypes (``"*"`` for the whole space).  Only the machines
        written since this Store's previous read of ``space`` are fetched
        (``store/history.py``); the returned mappings are never mutated afterwards."""
        with self._read() as session:
            return self.histories.read(session.connection(), space)

    def add_intent(self, intent: Intent) -> None:
        """Record a create before the cloud is asked; committed when this returns.
        Re-adding an existing (space, name) replaces it."""
        stmt = self._insert(IntentRow)
        values = {
            "space": intent.space,
            "name": intent.name,
            "machinetype": intent.machinetype,
            "processors": intent.processors,
            "hs06": intent.hs06,
            "created_at": intent.created_at,
        }
        upsert = stmt.on_conflict_do_update(
            index_elements=["space", "name"],
            set_={key: stmt.excluded[key] for key in values if key not in ("space", "name")},
        )
        with self._write() as session:
            session.execute(upsert, [values])

    def drop_intents(self, space: str, names: Iterable[str]) -> None:
        """Forget the intents of ``space`` with these names; unknown names are ignored."""
        wanted = list(names)
        if not wanted:
            return
        with self._write() as session:
            session.execute(
                delete(IntentRow).where(IntentRow.space == space, IntentRow.name.in_(wanted))
            )

    def apply(
        self, space: str, updates: Sequence[MachineUpdate], aborts: Mapping[str, float]
    ) -> None:
        """Store one cycle's outcome for ``space`` in a single transaction.

        Each update upserts its machine's engine-owned fields (a name given twice: the
        last wins).  ``heartbeat_at`` and the shutdown fields of an existing row are left
        alone, except that ``default_shutdown`` is stored (stamped with the current time)
        when the row has no shutdown code yet.  ``aborts`` maps machinetype to an abort
        time; the stored time per machinetype becomes the later of old and new.  With
        neither updates nor aborts it returns at once, without opening a transaction.
        """
        if not updates and not aborts:
            return  # the usual steady cycle: no session, no write lock, no fsync
        now = time.time()
        latest = {update.name: update for update in updates}
        with self._write() as session:
            if latest:
                rev = bump_revisions(session.connection(), [space])[space]
                session.execute(
                    self._machine_upsert(),
                    [_machine_values(space, u, now, rev) for u in latest.values()],
                )
            if aborts:
                session.execute(
                    self._abort_upsert(),
                    [{"space": space, "machinetype": mt, "last_abort_at": at}
                     for mt, at in aborts.items()],
                )  # fmt: skip

    def _machine_upsert(self) -> sqlite.Insert | postgresql.Insert:
        stmt = self._insert(MachineRow)
        new = stmt.excluded
        # SET expressions read the row as it was before the update, so testing
        # shutdown_code in all three keeps code, text and time together.
        unset = MachineRow.shutdown_code.is_(None)
        keep_vm_message = {
            col: case((unset, new[col]), else_=getattr(MachineRow, col))
            for col in ("shutdown_code", "shutdown_text", "shutdown_at")
        }
        return stmt.on_conflict_do_update(
            index_elements=["space", "name"],
            set_={**{col: new[col] for col in _ENGINE_COLUMNS}, **keep_vm_message},
        )

    def _abort_upsert(self) -> sqlite.Insert | postgresql.Insert:
        stmt = self._insert(BackoffRow)
        new = stmt.excluded.last_abort_at
        return stmt.on_conflict_do_update(
            index_elements=["space", "machinetype"],
            set_={
                "last_abort_at": case(
                    (new > BackoffRow.last_abort_at, new), else_=BackoffRow.last_abort_at
                )
            },
        )

    def record_heartbeat(self, space: str, name: str, at: float) -> bool:
        """Note a heartbeat at ``at``.  The stored time only moves forward (an older
        heartbeat is accepted and ignored).  False if no non-GONE machine has this name."""
        return self._update_one(space, _HEARTBEAT, {"b_name": name, "b_at": at})

    def record_heartbeats(self, beats: Mapping[tuple[str, str], float]) -> int:
        """Many heartbeats in one transaction and one prepared statement (the web side
        batches a second's worth).  Same rules as ``record_heartbeat``.  Returns how many
        rows matched where the driver can count an executemany, else -1."""
        if not beats:
            return 0
        with self._write() as session:
            revs = bump_revisions(session.connection(), (space for space, _ in beats))
            rows = [{"b_space": space, "b_name": name, "b_at": when, "b_rev": revs[space]}
                    for (space, name), when in beats.items()]
            result = session.connection().execute(_HEARTBEAT, rows)
            dialect = session.get_bind().dialect
            return int(result.rowcount) if dialect.supports_sane_multi_rowcount else -1

    def machine(self, space: str, name: str) -> MachineRecord | None:
        """One machine (GONE included), or None."""
        with self._read() as session:
            row = session.get(MachineRow, (space, name))
            return None if row is None else row.to_record()

    def record_shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> bool:
        """Store the VM's own shutdown message, received at ``at``.  It replaces any
        earlier message (the VM's or a default).  A GONE machine still known to the store
        accepts it, for accounting.  False if the store has no such machine."""
        return self._update_one(space, _SHUTDOWN, {
            "b_name": name, "b_code": message.code, "b_text": message.text, "b_at": at})

    def _update_one(self, space: str, stmt: Update, values: dict[str, Any]) -> bool:
        """Run ``stmt``, an UPDATE of one of ``space``'s machines with ``b_space`` and
        ``b_rev`` (the space's new revision) added to ``values``; whether a row matched."""
        with self._write() as session:
            rev = bump_revisions(session.connection(), [space])[space]
            result = session.connection().execute(stmt, {**values, "b_space": space,
                                                         "b_rev": rev})
            return result.rowcount > 0

    def set_drain(self, space: str, machinetype: str, drained: bool) -> None:
        """Drain (or undrain) ``machinetype`` in ``space``; ``"*"`` means the whole space.
        Idempotent."""
        with self._write() as session:
            if drained:
                stmt = self._insert(DrainRow).on_conflict_do_nothing()
                session.execute(stmt, [{"space": space, "machinetype": machinetype}])
            else:
                session.execute(
                    delete(DrainRow).where(
                        DrainRow.space == space, DrainRow.machinetype == machinetype
                    )
                )

    def add_events(self, events: Sequence[Event]) -> None:
        """Append events to the log, in one transaction."""
        if not events:
            return
        rows = [
            {"at": e.at, "space": e.space, "machinetype": e.machinetype, "machine": e.machine,
             "kind": e.kind, "message": e.message}
            for e in events
        ]  # fmt: skip
        with self._write() as session:
            session.execute(insert(EventRow), rows)

    def events(self, space: str | None = None, limit: int = 100) -> list[Event]:
        """At most ``limit`` events (of ``space``, or of all spaces), newest first; events
        with equal times come in reverse order of insertion."""
        if limit <= 0:
            return []
        query = select(EventRow).order_by(EventRow.at.desc(), EventRow.id.desc()).limit(limit)
        if space is not None:
            query = query.where(EventRow.space == space)
        with self._read() as session:
            return [row.to_event() for row in session.scalars(query)]

    def machines(self, space: str | None = None, include_gone: bool = False) -> list[MachineRecord]:
        """Machines (of ``space``, or of all spaces) ordered by space then name; GONE ones
        only if ``include_gone``."""
        query = select(MachineRow).order_by(MachineRow.space, MachineRow.name)
        if space is not None:
            query = query.where(MachineRow.space == space)
        if not include_gone:
            query = query.where(MachineRow.state != _GONE)
        with self._read() as session:
            return [row.to_record() for row in session.scalars(query)]

    def set_credentials(self, space: str, expiries: Mapping[str, float]) -> None:
        """Record when ``space``'s credentials expire (kind -> unix time)."""
        if not expiries:
            return
        now = time.time()
        rows = [{"space": space, "kind": kind, "expires_at": at, "updated_at": now}
                for kind, at in expiries.items()]
        stmt = self._insert(CredentialRow).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["space", "kind"],
            set_={"expires_at": stmt.excluded.expires_at, "updated_at": stmt.excluded.updated_at})
        with self._write() as session:
            session.execute(stmt)

    def credentials(self) -> dict[str, dict[str, float]]:
        """space -> {kind: expires_at} for every space that reported any."""
        found: dict[str, dict[str, float]] = {}
        query = select(CredentialRow.space, CredentialRow.kind, CredentialRow.expires_at)
        with self._read() as session:
            for space, kind, at in session.execute(query):
                found.setdefault(space, {})[kind] = at
        return found

    def last_aborts(self) -> dict[tuple[str, str], float]:
        """Last abort time for every (space, machinetype) that ever had one."""
        query = select(BackoffRow.space, BackoffRow.machinetype, BackoffRow.last_abort_at)
        with self._read() as session:
            return {(space, mt): at for space, mt, at in session.execute(query)}

    def prune(self, before: float) -> int:
        """Delete GONE machines that stopped before ``before`` (those without a stop time
        by their last update instead, so none lingers forever) and events older than
        ``before``.  Returns the number of rows removed."""
        stopped = func.coalesce(MachineRow.stopped_at, MachineRow.updated_at)
        with self._write() as session:
            removed = 0
            for stmt in (
                delete(MachineRow).where(MachineRow.state == _GONE, stopped < before),
                delete(EventRow).where(EventRow.at < before),
            ):
                result = session.execute(stmt, execution_options={"synchronize_session": False})
                removed += cast(CursorResult[Any], result).rowcount
            return removed
