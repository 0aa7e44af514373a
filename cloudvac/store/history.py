"""The per-cycle read of a space's history, fetching only the machines written since the
previous read.

Why: every space reads its history every cycle.  At 100 spaces x 1,000 machines a full
read decodes 100,000 rows a cycle (about 4-6 ms of CPU per 1,000-machine space), while a
steady space changes a handful of rows between two cycles (benchmarks/scale.py).

Contract (shared with the writers in ``store.py``):

* Every transaction that writes rows of ``machines`` first bumps its space's counter in
  ``space_revisions`` once (``bump_revisions``) and stamps every row it writes with the new
  value.  The bump holds the counter row's lock until commit, so one space's revisions
  commit in order and any snapshot sees a prefix of them: the rows stamped above the
  revision a reader last saw are exactly the rows written since.  Writers bump before they
  touch any machine row, and several spaces in name order, so two writers never wait for
  each other crosswise.
* ``HistoryCache.read`` reads, in one snapshot, the counter and the rows stamped after the
  revision it last saw (GONE rows leave the cache).  It reads everything instead when it
  holds nothing for the space, when the counter went backwards (the database was restored
  or replaced under a running manager), and at least every ``full_every`` seconds, so a
  row changed outside cloudvac (an operator's hand edit, a restore whose counter has since
  caught up) is seen within that time.  A read that finds the counter below the highest
  revision this process saw (even across ``forget``) says so (``SpaceHistory.restored``):
  the engine then treats every machine as adopted, never as evidence for a deletion.
* The ``machines`` mapping of a returned ``SpaceHistory`` is never mutated afterwards
  (each change builds a new mapping), so a caller may keep it as long as it likes.
* Intents are machine rows (state ``intent``) like any other; aborts, drains and removals
  are few and read whole every time.

The statements are SQLAlchemy Core, rendered once per dialect and run on the driver's own
cursor (``_Driver``), in a transaction opened without the ORM (``Store.history``): for
the read of an unchanged space (four one-row queries) SQLAlchemy's execution and an ORM
session's begin and commit cost several times the database's work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from sqlalchemy import BindParameter, Connection, Integer, String, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.expression import Executable

from cloudvac.model.records import Drain, MachineRecord, Removal, SpaceHistory
from cloudvac.model.states import MachineState
from cloudvac.store.hatables import RemovalRow
from cloudvac.store.tables import (
    MACHINES,
    RECORD_COLUMNS,
    BackoffRow,
    DrainRow,
    SpaceRevisionRow,
    record_from_values,
)

FULL_READ_SECONDS = 600.0

_GONE = MachineState.GONE.value
_STATE = RECORD_COLUMNS.index("state")
_MACHINES = MACHINES
_REVISIONS = cast(Table, SpaceRevisionRow.__table__)
_SPACE: BindParameter[str] = bindparam("space", type_=String())
_SINCE: BindParameter[int] = bindparam("since", type_=Integer())
# Built once: SQLAlchemy caches their compiled form.
_REVISION = select(_REVISIONS.c.rev).where(_REVISIONS.c.space == _SPACE)
_RECORD = select(*(_MACHINES.c[name] for name in RECORD_COLUMNS))
_ALL_LIVE = _RECORD.where(_MACHINES.c.space == _SPACE, _MACHINES.c.state != _GONE)
_CHANGED = _RECORD.where(_MACHINES.c.space == _SPACE, _MACHINES.c.rev > _SINCE)
_ABORTS = select(BackoffRow.machinetype, BackoffRow.last_abort_at).where(
    BackoffRow.space == _SPACE)
_DRAINED = select(DrainRow.machinetype, DrainRow.drained_at, DrainRow.grace_seconds).where(
    DrainRow.space == _SPACE)
_REMOVALS = select(RemovalRow.machinetype, RemovalRow.noticed_at, RemovalRow.machines,
                   RemovalRow.confirmed_at).where(RemovalRow.space == _SPACE)


_NEW_REVISIONS = select(_REVISIONS.c.space, _REVISIONS.c.rev).where(
    _REVISIONS.c.space.in_(bindparam("spaces", expanding=True)))


def _bump_statement(dialect: str) -> Executable:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(_REVISIONS)
    return stmt.on_conflict_do_update(index_elements=["space"],
                                      set_={"rev": _REVISIONS.c.rev + 1}).values(rev=1)


_BUMPS = {dialect: _bump_statement(dialect) for dialect in ("sqlite", "postgresql")}


def bump_revisions(connection: Connection, spaces: Iterable[str]) -> dict[str, int]:
    """Bump the counter of each of ``spaces`` once in ``connection``'s write transaction
    (in name order, see the contract above) and return the revisions to stamp its rows
    with.  Call it before writing any machine row."""
    wanted = sorted(set(spaces))
    if not wanted:
        return {}
    connection.execute(_BUMPS[connection.dialect.name], [{"space": s} for s in wanted])
    return {space: rev for space, rev in connection.execute(_NEW_REVISIONS, {"spaces": wanted})}


@dataclass(frozen=True, slots=True)
class _Snapshot:
    rev: int
    machines: dict[str, MachineRecord]
    full_at: float


@dataclass(slots=True)
class ReadStats:
    """What the last reads cost: for tests and benchmarks, never for decisions."""

    full_reads: int = 0
    incremental_reads: int = 0
    unchanged_reads: int = 0
    rows_decoded: int = 0


class _Driver:
    """Runs the read's statements on the database driver's own cursor, each rendered once
    per dialect by SQLAlchemy.  An unchanged space's read is four one-row queries, for
    which SQLAlchemy's execution costs several times the database's own work
    (benchmarks/scale.py).  The statements bind plain strings and integers and read
    plain columns, so the driver's values are what SQLAlchemy would return."""

    def __init__(self) -> None:
        # (dialect, id of a module-level statement) -> its rendering.  Reads of different
        # spaces run in parallel: two may render the same statement once each, harmlessly.
        self._rendered: dict[tuple[str, int], _Rendered] = {}

    def rows(self, connection: Connection, statement: ClauseElement,
             params: dict[str, Any]) -> list[Any]:
        """The rows of ``statement`` with ``params`` in ``connection``'s transaction."""
        key = (connection.dialect.name, id(statement))
        rendered = self._rendered.get(key)
        if rendered is None:
            compiled = cast(SQLCompiler, statement.compile(dialect=connection.dialect))
            names = tuple(compiled.positiontup or ()) if compiled.positional else None
            rendered = self._rendered[key] = _Rendered(compiled.string, names,
                                                       dict(compiled.params))
        values = {**rendered.defaults, **params}
        cursor = connection.connection.cursor()
        try:
            cursor.execute(rendered.sql, values if rendered.names is None
                           else tuple(values[n] for n in rendered.names))
            return list(cursor.fetchall())
        finally:
            cursor.close()


@dataclass(frozen=True, slots=True)
class _Rendered:
    sql: str
    names: tuple[str, ...] | None
    """The parameters in their order (positional drivers); None: by name."""
    defaults: dict[str, Any]
    """The statement's own values (its literals), which ``params`` complete."""


class HistoryCache:
    """The last snapshot of each space's machines, brought up to date by each read.
    Thread-safe: reads of one space are serialised, different spaces run in parallel."""

    def __init__(self, full_every: float = FULL_READ_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every, self.clock = full_every, clock
        self.stats = ReadStats()
        self._snapshots: dict[str, _Snapshot] = {}
        self._seen: dict[str, int] = {}  # highest revision read per space; never forgotten
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._driver = _Driver()

    def _lock(self, space: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(space, threading.Lock())

    def read(self, connection: Connection, space: str) -> SpaceHistory:
        """``space``'s history in the snapshot of ``connection``'s open transaction."""
        params, run = {"space": space}, partial(self._driver.rows, connection)
        with self._lock(space):
            rev = next(iter(run(_REVISION, params)), (0,))[0] or 0
            # Below what this process saw: the database was restored, replaced or lost.
            restored = rev < self._seen.get(space, 0)
            self._seen[space] = rev
            snap, now = self._snapshots.get(space), self.clock()
            if snap is None or rev < snap.rev or now - snap.full_at >= self.full_every:
                rows = run(_ALL_LIVE, params)
                snap = _Snapshot(rev, {values[0]: record_from_values(space, values)
                                       for values in rows}, now)
                self.stats.full_reads += 1
                self.stats.rows_decoded += len(rows)
            elif rev > snap.rev:
                rows = run(_CHANGED, {"space": space, "since": snap.rev})
                machines = dict(snap.machines)
                for values in rows:
                    if values[_STATE] == _GONE:
                        machines.pop(values[0], None)
                    else:
                        machines[values[0]] = record_from_values(space, values)
                snap = _Snapshot(rev, machines, snap.full_at)
                self.stats.incremental_reads += 1
                self.stats.rows_decoded += len(rows)
            else:
                self.stats.unchanged_reads += 1
            self._snapshots[space] = snap
        aborts, drains, removals = (run(q, params) for q in (_ABORTS, _DRAINED, _REMOVALS))
        return SpaceHistory(
            machines=snap.machines,
            last_abort={machinetype: at for machinetype, at in aborts},
            drains={mt: Drain(mt, at, grace) for mt, at, grace in drains},
            removals={mt: Removal(mt, at, n, ok) for mt, at, n, ok in removals},
            restored=restored,
        )

    def forget(self, space: str) -> None:
        """Drop what is cached for ``space`` (its next read is a full one)."""
        with self._lock(space):
            self._snapshots.pop(space, None)

    def clear(self) -> None:
        """Drop what is cached for every space (each next read is a full one): the
        database the snapshots came from is not the one being read any more."""
        with self._guard:
            spaces = list(self._locks)
        for space in spaces:
            self.forget(space)
