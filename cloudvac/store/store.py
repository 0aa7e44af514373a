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

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    Engine,
    Update,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

import cloudvac.store.hatables  # noqa: F401  (its tables belong to the metadata migrations match)
import cloudvac.store.operator as operator
import cloudvac.store.uploads as uploads
from cloudvac.model.records import Drain, Event, MachineRecord, ProjectRoom, Recorded, SpaceHistory
from cloudvac.model.redact import redact
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store.accounting import AccountingStore
from cloudvac.store.engine import (
    IMMEDIATE,
    DatabaseFile,
    Gate,
    StoreMoved,
    follow,
    open_migrated,
    open_read_only,
    sqlite_path,
)
from cloudvac.store.facts import FactStore
from cloudvac.store.history import FULL_READ_SECONDS, HistoryCache, bump_revisions
from cloudvac.store.joboutputs import JoboutputStore
from cloudvac.store.leases import Fence, LeaseStore, check_fence
from cloudvac.store.removals import RemovalStore
from cloudvac.store.tables import (
    MACHINES,
    RECORD_COLUMNS,
    BackoffRow,
    Base,
    CredentialRow,
    DrainRow,
    EventRow,
    engine_values,
    record_from_values,
    storable,
)
from cloudvac.store.transaction import (
    ABORT_UPSERT,
    MACHINE_UPSERT,
    core_transaction,
    orm_transaction,
)
from cloudvac.store.uploads import (
    HEARTBEAT,
    HEARTBEATING,
    HEARTBEATING_LIMIT,
    Beating,
)
from cloudvac.store.wakes import WakeStore

_GONE = MachineState.GONE.value
_RUNNING = MachineState.RUNNING.value
_MACHINES = MACHINES
_RECORD = select(_MACHINES.c.space, *(_MACHINES.c[name] for name in RECORD_COLUMNS))
T = TypeVar("T")
def _record(row: Sequence[Any]) -> MachineRecord:
    """A record from a row of ``_RECORD`` (space, then RECORD_COLUMNS)."""
    return record_from_values(row[0], row[1:])


class Store(AccountingStore, RemovalStore, JoboutputStore, FactStore, LeaseStore,
            WakeStore):
    """Persistent memory of cloudvac.  All methods are synchronous and thread-safe; each
    commits before returning, so a returned call is durable."""

    def __init__(self, url: str, history_full_seconds: float = FULL_READ_SECONDS,
                 writable: bool = False, read_only: bool = False) -> None:
        """Open (creating if needed) the database at ``url`` and migrate it to head; with
        ``read_only`` (``run --dry-run``) open an existing store at head as it is, on
        connections that refuse every write (``store/engine.py:open_read_only``).

        SQLite: the parent directory is created, and connections use WAL and a busy
        timeout.  Raises StoreUnavailable (naming the database and the system's reason)
        when it cannot be opened, or with ``writable`` when it refuses a write (the
        daemon's and the web side's start-up; ``status`` can read a read-only store);
        ValueError for in-memory SQLite or backends other than SQLite and PostgreSQL.
        ``history_full_seconds``: see ``store/history.py``.

        A SQLite file removed or replaced while the Store is open is noticed before the
        next session (one ``os.stat``): one ERROR, the file at the path opened (created and
        migrated if missing), the history cache dropped, ``reopened`` counted.  See
        ``_session``.
        """
        self.histories = HistoryCache(history_full_seconds)
        self.reopened = 0
        """How many times the database file was found removed or replaced and reopened."""
        path = sqlite_path(url)
        self._file = DatabaseFile(path) if path is not None and not read_only else None
        self._gate = Gate()
        self._engine = open_read_only(url) if read_only else open_migrated(
            url, writable, self._file.check if self._file is not None else None)
        self._dialect = self._engine.dialect.name
        self._writer = self._engine.execution_options(**{IMMEDIATE: True})
        # history() must see one consistent snapshot; SQLite's BEGIN already gives one.
        self._reader = (
            self._engine.execution_options(isolation_level="REPEATABLE READ")
            if self._dialect == "postgresql"
            else self._engine
        )

    def close(self) -> None:
        """Release every pooled connection.  The Store must not be used afterwards."""
        self._engine.dispose()

    @contextmanager
    def _session(self, bind: Engine) -> Iterator[Session]:
        """A session on ``bind`` in a transaction, on the SQLite file now at the path.

        Before it: ``engine.follow`` (one ``os.stat``; a removed or replaced file is
        reopened, the history cache cleared, ``reopened`` counted).  Its connection is
        checked out before the caller gets it: a new connection that finds the file
        changed since (``DatabaseFile.check``) is refused, and the session starts again
        once the file is reopened.
        """
        with self._on_file(partial(orm_transaction, bind)) as session:
            yield session

    @contextmanager
    def _on_file(self, opened: Callable[[], AbstractContextManager[T]]) -> Iterator[T]:
        for attempt in (1, 2):
            if self._file is not None and follow(self._engine, self._file, self._gate,
                                                 self.histories.clear):
                self.reopened += 1
            entered = False
            try:
                with self._gate.shared(), opened() as handle:
                    entered = True
                    yield handle
                return
            except StoreMoved:
                if entered or attempt == 2:
                    raise

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._session(self._writer) as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._session(self._reader) as session:
            yield session

    def _insert(self, entity: type[Base] | Any) -> sqlite.Insert | postgresql.Insert:
        if self._dialect == "postgresql":
            return postgresql.insert(entity)
        return sqlite.insert(entity)

    def history(self, space: str) -> SpaceHistory:
        """Everything the planner needs about ``space``, read in one snapshot: its
        non-GONE machines and its intents keyed by name, last abort time per machinetype,
        and the drained machinetypes (``"*"`` for the whole space).  Only the machines
        written since this Store's previous read of ``space`` are fetched
        (``store/history.py``); the returned mappings are never mutated afterwards."""
        with self._on_file(partial(core_transaction, self._reader)) as connection:
            return self.histories.read(connection, space)

    def apply(self, space: str, records: Sequence[MachineRecord],
              aborts: Mapping[str, float], now: float, fence: Fence | None = None) -> None:
        """Store engine decisions for ``space`` in a single transaction, stamped ``now``.

        Each record upserts its machine's engine-owned fields (``ENGINE_FIELDS``; a name
        given twice: the last wins): a new create is a record in state ``intent``, written
        before the cloud is asked.  ``heartbeat_at`` and the shutdown fields of an
        existing row are left alone, except that the record's shutdown message (cloudvac's
        reason for ending it) is stored, stamped ``now``, when the row has none yet.
        ``aborts`` maps machinetype to an abort time; the stored time per machinetype
        becomes the later of old and new.  With neither records nor aborts it returns at
        once, without opening a transaction.  Records of another space: ValueError, and
        nothing is written.
        """
        if not records and not aborts:
            return  # the usual steady cycle: no session, no write lock, no fsync
        latest = {record.name: record for record in records}
        strays = {r.space for r in latest.values()} - {space}
        if strays:
            raise ValueError(f"records of space {', '.join(sorted(strays))} given for {space}")
        with self._write() as session:
            if fence is not None:  # first statement: a stale owner writes nothing (LeaseLost)
                check_fence(session.connection(), fence)
            if latest:
                rev = bump_revisions(session.connection(), [space])[space]
                session.execute(MACHINE_UPSERT[self._dialect],
                                [engine_values(r, now, rev) for r in latest.values()])
            if aborts:
                session.execute(
                    ABORT_UPSERT[self._dialect],
                    [{"space": space, "machinetype": mt, "last_abort_at": at}
                     for mt, at in aborts.items()],
                )  # fmt: skip

    def record_heartbeat(self, space: str, name: str, at: float) -> bool:
        """Note a heartbeat at ``at``.  The stored time only moves forward (an older
        heartbeat is accepted and ignored).  False if no non-GONE machine has this name."""
        return self._update_one(space, HEARTBEAT, {"b_name": name, "b_at": at})

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
            result = session.connection().execute(HEARTBEAT, rows)
            dialect = session.get_bind().dialect
            return int(result.rowcount) if dialect.supports_sane_multi_rowcount else -1

    def machine(self, space: str, name: str) -> MachineRecord | None:
        """One machine (GONE included), or None."""
        query = _RECORD.where(_MACHINES.c.space == space, _MACHINES.c.name == name)
        with self._read() as session:
            row = session.execute(query).first()
            return None if row is None else _record(row)

    def heartbeating(self, space: str, machinetype: str, since: float,
                     limit: int = HEARTBEATING_LIMIT) -> list[Beating]:
        """The running machines of ``machinetype`` in ``space`` whose last heartbeat is at
        or after ``since``, newest heartbeat first, at most ``limit`` (heartbeat lists,
        squid discovery): three columns from one index range."""
        params = {"b_space": space, "b_mt": machinetype, "b_since": since, "b_limit": limit}
        with self._read() as session:
            return [Beating(*row) for row in session.execute(HEARTBEATING, params)]

    def drained(self, space: str) -> frozenset[str]:
        """The drained machinetypes of ``space`` (``"*"``: the whole space)."""
        query = select(DrainRow.machinetype).where(DrainRow.space == space)
        with self._read() as session:
            return frozenset(session.scalars(query))

    def record_shutdown(self, space: str, name: str, message: ShutdownMessage, at: float,
                        before_commit: Callable[[], None] | None = None) -> Recorded:
        """Store the VM's own shutdown message, received at ``at``, unless the VM sent one
        before (that one is kept: see ``store/uploads.py``).  It replaces cloudvac's own
        reason, if any; a GONE machine still known to the store accepts it, for
        accounting.  ``before_commit``: runs inside the transaction once the row is
        written; if it raises, nothing is recorded."""
        with self._write() as session:
            key = {"b_space": space, "b_name": name,
                   "b_rev": bump_revisions(session.connection(), [space])[space]}
            return uploads.record_shutdown(session.connection(), key, message, at,
                                           before_commit)

    def claim_user_data(self, space: str, name: str, at: float) -> bool:
        """Note that the machine's user_data is served at ``at``: True the first time."""
        with self._write() as session:
            key = {"b_space": space, "b_name": name,
                   "b_rev": bump_revisions(session.connection(), [space])[space]}
            return uploads.claim_user_data(session.connection(), key, at)

    def _update_one(self, space: str, stmt: Update, values: dict[str, Any]) -> bool:
        """Run ``stmt``, an UPDATE of one of ``space``'s machines with ``b_space`` and
        ``b_rev`` (the space's new revision) added to ``values``; whether a row matched."""
        with self._write() as session:
            rev = bump_revisions(session.connection(), [space])[space]
            result = session.connection().execute(stmt, {**values, "b_space": space,
                                                         "b_rev": rev})
            return result.rowcount > 0

    def set_drain(self, space: str, machinetype: str, drained: bool, at: float = 0.0,
                  grace_seconds: float = 0.0) -> bool:
        """Drain ``machinetype`` in ``space`` (``"*"``: the whole space) from ``at`` with
        ``grace_seconds`` (a drain already there is replaced), or undrain it.  Whether a
        drain was there before."""
        with self._write() as session:
            connection = session.connection()
            was = operator.undrain(connection, space, machinetype)
            if drained:
                operator.set_drain(connection, space, machinetype, at, grace_seconds)
            return was

    def drains(self, space: str | None = None) -> dict[str, dict[str, Drain]]:
        """space -> machinetype (``"*"``: the whole space) -> drain."""
        with self._read() as session:
            return operator.drains(session.connection(), space)

    def drain_deadline(self, space: str, machinetype: str) -> float | None:
        """When machines of ``machinetype`` in ``space`` must be gone (the MJF
        ``shutdowntime`` they are told), or None when it is not drained: one indexed read
        (the drains table's key), as the web side asks it per MJF request."""
        with self._read() as session:
            return operator.deadline(session.connection(), space, machinetype)

    def request_kill(self, space: str, name: str, reason: str, at: float) -> bool:
        """Ask the engine to delete machine ``name`` at its next cycle, for ``reason``
        (recorded in the machine's events); False if the store has no live machine so
        named."""
        with self._write() as session:
            key = {"b_space": space, "b_name": name,
                   "b_rev": bump_revisions(session.connection(), [space])[space]}
            return operator.request_kill(session.connection(), key, reason, at)

    def set_room(self, space: str, room: ProjectRoom) -> None:
        """Record what the quota leaves ``space`` beside foreign usage (for status)."""
        with self._write() as session:
            operator.set_room(session.connection(), space, room)

    def rooms(self) -> dict[str, ProjectRoom]:
        with self._read() as session:
            return operator.rooms(session.connection())

    def add_events(self, events: Sequence[Event]) -> None:
        """Append events to the log, in one transaction.  Messages are stored redacted and
        bounded (``model.redact``): whatever a cloud or identity provider put into an
        error's text, the event log (which status and the CLI show) holds no
        secret-shaped value."""
        if not events:
            return
        rows = [
            {"at": e.at, "space": e.space, "machinetype": e.machinetype, "machine": e.machine,
             "kind": e.kind, "message": storable(redact(e.message))}
            for e in events
        ]  # fmt: skip
        with self._write() as session:
            session.execute(insert(EventRow), rows)

    def events(self, space: str | None = None, limit: int = 100, *,
               machinetype: str | None = None, machine: str | None = None) -> list[Event]:
        """At most ``limit`` events (of ``space``, or of all spaces; of one machinetype or
        machine if given), newest first; events with equal times come in reverse order of
        insertion."""
        if limit <= 0:
            return []
        query = select(EventRow).order_by(EventRow.at.desc(), EventRow.id.desc()).limit(limit)
        for column, value in ((EventRow.space, space), (EventRow.machinetype, machinetype),
                              (EventRow.machine, machine)):
            if value is not None:
                query = query.where(column == value)
        with self._read() as session:
            return [row.to_event() for row in session.scalars(query)]

    def named(self, name: str) -> list[MachineRecord]:
        """Every machine called ``name`` (GONE included), in any space."""
        with self._read() as session:
            return [_record(row) for row in session.execute(
                _RECORD.where(_MACHINES.c.name == name).order_by(_MACHINES.c.space))]

    def machines(self, space: str | None = None, include_gone: bool = False) -> list[MachineRecord]:
        """Machines (of ``space``, or of all spaces) ordered by space then name; GONE ones
        only if ``include_gone``."""
        query = _RECORD.order_by(_MACHINES.c.space, _MACHINES.c.name)
        if space is not None:
            query = query.where(_MACHINES.c.space == space)
        if not include_gone:
            query = query.where(_MACHINES.c.state != _GONE)
        with self._read() as session:
            return [_record(row) for row in session.execute(query)]

    def set_credentials(self, space: str, expiries: Mapping[str, float], now: float) -> None:
        """Record when ``space``'s credentials expire (kind -> unix time), as of ``now``."""
        if not expiries:
            return
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
        stopped = func.coalesce(_MACHINES.c.stopped_at, _MACHINES.c.updated_at)
        with self._write() as session:
            removed = 0
            for stmt in (
                delete(_MACHINES).where(_MACHINES.c.state == _GONE, stopped < before),
                delete(EventRow).where(EventRow.at < before),
            ):
                result = session.execute(stmt, execution_options={"synchronize_session": False})
                removed += cast(CursorResult[Any], result).rowcount
            return removed
