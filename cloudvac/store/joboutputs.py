"""The files VMs upload, in the store's ``joboutputs`` table (migration 0009).

One row per (space, machine, file): its body, size and when it was written.  Any instance
behind a load balancer takes a VM's upload, and any instance reads it (the engine's
accounting, ``cloudvac logs``): HA hangs on no shared file system, only on the database
it needs anyway.  Rows are bounded by the caller's per-file and per-machine limits and
deleted with their machine (``prune_joboutputs``).

The per-machine quota is exact across instances: a write locks its machine's row in
``machines`` (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's writer holds the database
lock from BEGIN), sums the machine's sizes, and upserts the file, all in one transaction.
A refused write changes nothing, so the previous version stays.  Lock order is machine row,
then upload rows, as in the heartbeat batch (space revision, machine rows, upload rows):
no two writers wait for each other in a cycle.

``JoboutputStore`` is a base of ``Store``: its methods use the Store's sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import (
    ClauseElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.compiler import SQLCompiler

import cloudvac.store.uploads as uploads
from cloudvac.model.records import Recorded
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store.hatables import JoboutputRow
from cloudvac.store.history import bump_revisions
from cloudvac.store.tables import MACHINES

_J = cast(Table, JoboutputRow.__table__)
_MACHINE_LOCK = select(MACHINES.c.name).where(
    MACHINES.c.space == bindparam("b_space"), MACHINES.c.name == bindparam("b_name")
).with_for_update()
_SIZES = select(_J.c.file, _J.c.size).where(_J.c.space == bindparam("b_space"),
                                          _J.c.machine == bindparam("b_name"))
IMPORT_BATCH_ROWS = 200
"""Rows per transaction when importing a directory of files from before the table."""


class MachineFull(Exception):
    """The write would take the machine's uploads over ``max_machine_bytes``: nothing
    was written."""


class NoSuchMachine(Exception):
    """The store has no row for the machine (unknown, or pruned): nothing was written."""


@dataclass(frozen=True, slots=True)
class Upload:
    """One file to write: the body and the machine's limit it must fit."""

    file: str
    body: bytes
    max_machine_bytes: int


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An uploaded file as listed (without its body)."""

    file: str
    size: int
    written_at: float


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat to record: its time, and the body of its file."""

    at: float
    file: str
    body: bytes


def _upsert(connection: Connection, newer: bool = False) -> sqlite.Insert | postgresql.Insert:
    """Insert or replace a file; with ``newer``, a row written later stays (a heartbeat
    batch of one instance must not overwrite a newer body another instance stored)."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_J)
    return stmt.on_conflict_do_update(
        index_elements=["space", "machine", "file"],
        set_={"body": stmt.excluded.body, "size": stmt.excluded.size,
              "written_at": stmt.excluded.written_at},
        where=(_J.c.written_at <= stmt.excluded.written_at) if newer else None)


@dataclass(frozen=True, slots=True)
class _DriverSql:
    """A statement compiled once for a dialect and one order of row values: its text,
    and how to turn a row into the driver's parameters.  Positional: ``pick`` takes each
    parameter from the row followed by ``extra`` (the statement's own literal values);
    None when the row is that already.  Named (``positional`` false): a dict per row."""

    sql: str
    keys: tuple[str, ...]
    positional: bool
    literals: dict[str, Any]
    extra: tuple[Any, ...] = ()
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None

    def params(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        if not self.positional:
            keys, literals = self.keys, self.literals
            return [{**literals, **dict(zip(keys, row, strict=True))} for row in rows]
        if self.pick is None:
            return rows
        pick, extra = self.pick, self.extra
        return [pick(row + extra) for row in rows]

    @classmethod
    def compile(cls, statement: ClauseElement, connection: Connection,
                keys: tuple[str, ...]) -> _DriverSql:
        done = cast(SQLCompiler, statement.compile(dialect=connection.dialect,
                                                   column_keys=list(keys)))
        literals = {k: v for k, v in done.params.items() if k not in keys}
        if not done.positional:
            return cls(str(done), keys, False, literals)
        names = (*keys, *literals)
        order = tuple(names.index(bind) for bind in done.positiontup or ())
        if order == tuple(range(len(keys))):
            return cls(str(done), keys, True, literals)
        return cls(str(done), keys, True, literals, tuple(literals.values()),
                   itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],))


_DRIVER_SQL: dict[tuple[str, str], _DriverSql] = {}


def _execute_many(connection: Connection, name: str, statement: ClauseElement,
                  keys: tuple[str, ...], rows: list[tuple[Any, ...]]) -> int:
    """``statement`` (called ``name``) once per row, as one executemany of the driver, on
    SQL compiled once per dialect: for a second's heartbeats SQLAlchemy's processing of
    each row's parameters cost more than the database's work.  Each row holds the values
    of ``keys`` (parameter names), in that order, always the same for one ``name``; the
    values must be what the driver takes as they are (str, int, float, bytes: no type
    conversion is applied).  Returns the rows matched (-1 where the driver cannot count
    an executemany)."""
    key = (connection.dialect.name, name)
    compiled = _DRIVER_SQL.get(key)
    if compiled is None or compiled.keys != keys:
        compiled = _DRIVER_SQL[key] = _DriverSql.compile(statement, connection, keys)
    result = connection.exec_driver_sql(compiled.sql, compiled.params(rows))
    return int(result.rowcount) if connection.dialect.supports_sane_multi_rowcount else -1


def put(connection: Connection, space: str, name: str, upload: Upload,
        at: float) -> dict[str, int]:
    """Write ``upload`` as the machine's file in ``connection``'s transaction, its quota
    checked under the machine's row lock; the machine's bytes per file afterwards.
    NoSuchMachine, MachineFull: nothing written."""
    key = {"b_space": space, "b_name": name}
    if connection.execute(_MACHINE_LOCK, key).first() is None:
        raise NoSuchMachine(f"{space}/{name}")
    sizes: dict[str, int] = {file: size for file, size in connection.execute(_SIZES, key)}
    sizes[upload.file] = len(upload.body)
    if sum(sizes.values()) > upload.max_machine_bytes:
        raise MachineFull(f"machine's uploads would exceed {upload.max_machine_bytes} bytes")
    connection.execute(_upsert(connection), {
        "space": space, "machine": name, "file": upload.file, "body": upload.body,
        "size": len(upload.body), "written_at": at})
    return sizes


def _usages(connection: Connection, keys: Sequence[tuple[str, str]]
            ) -> dict[tuple[str, str, str], int]:
    """(space, machine, file) -> size, for every file of the given machines."""
    found: dict[tuple[str, str, str], int] = {}
    for start in range(0, len(keys), 500):  # bounded IN lists
        chunk = keys[start:start + 500]
        query = select(_J.c.space, _J.c.machine, _J.c.file, _J.c.size).where(
            tuple_(_J.c.space, _J.c.machine).in_(chunk))
        for space, machine, file, size in connection.execute(query):
            found[(space, machine, file)] = size
    return found


@dataclass(frozen=True, slots=True)
class BeatsWritten:
    """What a heartbeat batch did."""

    matched: int
    """Machine rows whose time was noted; -1 where the driver cannot count an executemany."""
    refused: list[tuple[str, str]]
    """The machines whose body did not fit their quota (their time is noted all the same)."""
    sizes: dict[tuple[str, str], dict[str, int]]
    """Bytes per file of each machine of the batch, afterwards."""


# The files of the machines one transaction stamped with its revision: one range of
# ix_machines_space_rev, each machine with its files (or one row of NULLs without any).
_STAMPED_FILES = select(MACHINES.c.name, _J.c.file, _J.c.size).select_from(
    MACHINES.outerjoin(_J, and_(_J.c.space == MACHINES.c.space,
                                _J.c.machine == MACHINES.c.name))
).where(MACHINES.c.space == bindparam("b_space"), MACHINES.c.rev == bindparam("b_rev"))


def _stamped_usages(connection: Connection, revs: Mapping[str, int],
                    keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, int]]:
    """Bytes per file of each machine of ``keys``: those the transaction stamped with
    ``revs`` (its heartbeat update) read by revision, the others (not updated: GONE, or
    no row) by name."""
    sizes: dict[tuple[str, str], dict[str, int]] = {key: {} for key in keys}
    seen: set[tuple[str, str]] = set()
    for space, rev in revs.items():
        for name, file, size in connection.execute(
                _STAMPED_FILES, {"b_space": space, "b_rev": rev}).tuples().all():
            key = (space, name)
            seen.add(key)
            if file is not None and key in sizes:
                sizes[key][file] = size
    if others := [key for key in keys if key not in seen]:
        for (space, machine, file), size in _usages(connection, others).items():
            sizes[(space, machine)][file] = size
    return sizes


_BODY_KEYS = ("space", "machine", "file", "body", "size", "written_at")
_TIME_KEYS = ("b_space", "b_name", "b_at", "b_rev")


def _fitting(connection: Connection, beats: Mapping[tuple[str, str], Beat],
             max_machine_bytes: int, revs: Mapping[str, int]
             ) -> tuple[list[tuple[Any, ...]], BeatsWritten]:
    """The upsert rows (``_BODY_KEYS``) of the bodies that fit their machine's quota, and
    the outcome (``revs``: the revisions the transaction stamped the beats' machines
    with)."""
    keys = sorted(beats)
    sizes = _stamped_usages(connection, revs, keys)
    rows, refused = [], []
    for key in keys:
        beat, files = beats[key], sizes[key]
        if sum(files.values()) - files.get(beat.file, 0) + len(beat.body) > max_machine_bytes:
            refused.append(key)
            continue
        files[beat.file] = len(beat.body)
        rows.append((key[0], key[1], beat.file, beat.body, len(beat.body), float(beat.at)))
    return rows, BeatsWritten(0, refused, sizes)


class JoboutputStore(ABC):
    """The Store's methods for uploaded files (``Store`` supplies the sessions)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """A session that commits on success (``Store._write``)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A read-only session (``Store._read``)."""

    def put_joboutput(self, space: str, name: str, upload: Upload,
                      at: float) -> dict[str, int]:
        """Write one uploaded file, replacing its previous version, in one transaction; the
        machine's bytes per file afterwards.  NoSuchMachine, MachineFull: nothing was
        written (the previous version stays)."""
        with self._write() as session:
            return put(session.connection(), space, name, upload, at)

    def record_shutdown_upload(self, space: str, name: str, message: ShutdownMessage,
                               upload: Upload, at: float) -> Recorded:
        """The VM's shutdown message recorded (as ``Store.record_shutdown``) and its file
        written, in one transaction: both or neither.  The file is written only when the
        message is recorded now.  MachineFull: nothing recorded."""
        with self._write() as session:
            connection = session.connection()
            key = {"b_space": space, "b_name": name,
                   "b_rev": bump_revisions(connection, [space])[space]}

            def write() -> None:
                put(connection, space, name, upload, at)

            return uploads.record_shutdown(connection, key, message, at, write)

    def record_heartbeat_bodies(self, beats: Mapping[tuple[str, str], Beat],
                                max_machine_bytes: int) -> BeatsWritten:
        """A batch of heartbeats: the machines' times (as ``Store.record_heartbeats``) and
        their files' bodies (one executemany upsert, each within its machine's quota) in
        one transaction."""
        if not beats:
            return BeatsWritten(0, [], {})
        with self._write() as session:
            connection = session.connection()
            revs = bump_revisions(connection, (space for space, _ in beats))
            times = [(space, name, float(beat.at), revs[space])
                     for (space, name), beat in sorted(beats.items())]
            # locks the machine rows
            matched = _execute_many(connection, "heartbeat", uploads.HEARTBEAT, _TIME_KEYS,
                                    times)
            rows, written = _fitting(connection, beats, max_machine_bytes, revs)
            if rows:
                _execute_many(connection, "heartbeat body", _upsert(connection, newer=True),
                              _BODY_KEYS, rows)
            return BeatsWritten(matched, written.refused, written.sizes)

    def machines_named(self, keys: Iterable[tuple[str, str]]) -> uploads.Named:
        """The machines of ``keys`` (space, name) the store has, GONE included, and their
        spaces' revisions, read in one snapshot: the VM door looks up the machines of many
        requests at once (``web/context.py:MachineCache``)."""
        with self._read() as session:
            return uploads.machines_named(session.connection(), keys)

    def ended_since(self, revs: Mapping[str, int]) -> dict[str, tuple[int, list[str]]]:
        """Per space of ``revs``: its revision now and its machines that ended after the
        revision given (``store/uploads.py:ended_since``), in one read."""
        with self._read() as session:
            return uploads.ended_since(session.connection(), revs)

    def joboutput(self, space: str, name: str, file: str) -> bytes | None:
        """The body of one uploaded file, or None."""
        query = select(_J.c.body).where(_J.c.space == space, _J.c.machine == name,
                                        _J.c.file == file)
        with self._read() as session:
            body = session.execute(query).scalar()
            return None if body is None else bytes(body)

    def joboutputs(self, space: str, name: str, files: Iterable[str]) -> dict[str, bytes]:
        """The bodies of those of ``files`` the machine uploaded."""
        query = select(_J.c.file, _J.c.body).where(
            _J.c.space == space, _J.c.machine == name, _J.c.file.in_(list(files)))
        with self._read() as session:
            return {file: bytes(body) for file, body in session.execute(query)}

    def joboutput_files(self, space: str, name: str) -> list[StoredFile]:
        """The machine's uploaded files by name, without their bodies."""
        query = select(_J.c.file, _J.c.size, _J.c.written_at).where(
            _J.c.space == space, _J.c.machine == name).order_by(_J.c.file)
        with self._read() as session:
            return [StoredFile(*row) for row in session.execute(query)]

    def prune_joboutputs(self, older_than: float) -> int:
        """Delete the uploads of machines that are gone (or no longer in the store) and
        wrote nothing since ``older_than``; a machine still alive keeps its files however
        old.  Returns how many files were removed."""
        newer = aliased(_J)
        alive = exists().where(MACHINES.c.space == _J.c.space, MACHINES.c.name == _J.c.machine,
                               MACHINES.c.state != MachineState.GONE.value)
        recent = exists().where(newer.c.space == _J.c.space, newer.c.machine == _J.c.machine,
                                newer.c.written_at >= older_than)
        stmt = delete(_J).where(_J.c.written_at < older_than, ~alive, ~recent)
        with self._write() as session:
            return int(session.connection().execute(stmt).rowcount)

    def import_joboutputs(self, rows: Sequence[tuple[str, str, str, bytes, float]]) -> int:
        """Add files found on disk from before this table, (space, machine, file, body,
        written_at) each, keeping any row the table has already (it is newer); one
        transaction.  How many were added."""
        if not rows:
            return 0
        with self._write() as session:
            connection = session.connection()
            insert = postgresql.insert if connection.dialect.name == "postgresql" \
                else sqlite.insert
            stmt = insert(_J).on_conflict_do_nothing(
                index_elements=["space", "machine", "file"]).returning(_J.c.file)
            return sum(connection.execute(stmt, {
                "space": s, "machine": m, "file": f, "body": b, "size": len(b),
                "written_at": at}).first() is not None for s, m, f, b, at in rows)
