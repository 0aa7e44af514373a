"""Space leases, fencing and instance presence: several managers on one store.

Tables (``store/hatables.py``, migration 0009): ``instances`` (one row per running
manager) and ``space_leases`` (who owns a space, at which generation, until when).

Contract:

* Every time here is on the DATABASE's clock (``db_now``: PostgreSQL
  ``clock_timestamp()``, SQLite ``julianday('now')``), never an instance's: instances
  whose clocks disagree still agree on who owns what and when a lease expires.
* ``acquire`` is one UPDATE that takes a space whose lease is free, expired, or held by an
  owner that is not *present*; it bumps ``generation``.  Present: on PostgreSQL the owner
  holds its presence lock (``Presence``: a session advisory lock on a connection of its
  own, which the server drops the moment the process or its connection dies); on SQLite
  only the caller (the store's flock, ``store/lock.py``, proves every other manager dead).
* Expiry only makes a lease *takeable*: until another instance takes it, an expired lease
  is still its owner's, and the owner's renewal or fenced write revives it at the same
  generation.  So an owner whose rounds ran late (a loaded host) keeps its space and its
  cycle's memory, and the generation changes exactly when the owner does.
* Fencing: an engine write for a space carries a ``Fence``; ``check_fence`` is the first
  statement of its transaction, an UPDATE of the lease row that renews it only if the
  owner and generation still match.  It matches nothing after a
  takeover (the taker's UPDATE bumped the generation, and the row lock orders the two):
  ``LeaseLost``, and the transaction rolls back, so a stale owner writes nothing.  A lock
  alone could not do this: a partitioned owner does not know its lock is gone, and only a
  check inside its own write transaction refuses what it writes afterwards.
* Lease rows of spaces no configuration names are left alone (another instance may run a
  newer configuration).

``LeaseStore`` is a base of ``Store``: its methods use the Store's sessions.
"""

from __future__ import annotations

import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from cloudvac.model.accounting import AccountingRecord
from cloudvac.store.accounting import insert_once

log = logging.getLogger("cloudvac.store.leases")
PRESENCE_CLASS = 0x6376  # "cv": the first key of every presence advisory lock
"""Presence locks are ``pg_advisory_lock(PRESENCE_CLASS, presence_key)``."""
KEY_ATTEMPTS = 16
"""How many random presence keys ``Presence`` tries before it gives up (a key another
instance holds is skipped)."""
_NOW = {
    "postgresql": "CAST(extract(epoch FROM clock_timestamp()) AS double precision)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_PRESENT = {
    # instances whose presence lock is held now, in this database
    "postgresql": (
        "SELECT i.instance FROM instances i WHERE EXISTS (SELECT 1 FROM pg_locks l "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = CAST(:cls AS oid) "
        "AND l.objid = CAST(i.presence_key AS oid) AND l.objsubid = 2 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()))"),
    # the flock: every other manager of a SQLite store is dead
    "sqlite": "SELECT :me",
}


@dataclass(frozen=True, slots=True)
class Fence:
    """What an engine write for ``space`` must still hold: ``owner``'s lease at
    ``generation``.  A write that passes renews the lease for ``ttl`` seconds."""

    space: str
    owner: str
    generation: int
    ttl: float


class LeaseLost(Exception):
    """The fence no longer matches the lease row: another instance owns the space (or the
    lease expired).  Nothing of the write was stored."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"lease of space {fence.space} lost (generation {fence.generation} "
                         "is no longer this instance's): nothing written")
        self.fence = fence


@dataclass(frozen=True, slots=True)
class Lease:
    space: str
    owner: str | None
    generation: int
    expires_at: float
    renewed_at: float


@dataclass(frozen=True, slots=True)
class Instance:
    instance: str
    hostname: str
    pid: int
    started_at: float
    seen_at: float
    cycle_seconds: float
    present: bool
    """PostgreSQL: it holds its presence lock now.  SQLite: it is the asker."""


@dataclass(frozen=True, slots=True)
class LeaseView:
    """Leases and instances read in one transaction, with the database's time then."""

    now: float
    leases: tuple[Lease, ...]
    instances: tuple[Instance, ...]

    def present(self) -> frozenset[str]:
        return frozenset(i.instance for i in self.instances if i.present)


def now_sql(connection: Connection) -> str:
    return _NOW[connection.dialect.name]


def db_now(connection: Connection) -> float:
    """The database's clock, in unix seconds."""
    return float(connection.execute(text(f"SELECT {now_sql(connection)}")).scalar_one())


def _present(connection: Connection) -> str:
    return _PRESENT[connection.dialect.name]


def check_fence(connection: Connection, fence: Fence) -> None:
    """The first statement of a fenced write: renew the lease if ``fence`` still holds it,
    else LeaseLost (the caller's transaction must roll back)."""
    now = now_sql(connection)
    result = connection.execute(text(
        f"UPDATE space_leases SET renewed_at = {now}, expires_at = {now} + :ttl "
        f"WHERE space = :space AND owner = :owner AND generation = :generation"),
        {"ttl": fence.ttl, "space": fence.space, "owner": fence.owner,
         "generation": fence.generation})
    if result.rowcount != 1:
        raise LeaseLost(fence)


def _upsert_instance(connection: Connection) -> TextClause:
    now = now_sql(connection)
    return text(
        "INSERT INTO instances (instance, hostname, pid, presence_key, started_at, seen_at, "
        f"cycle_seconds) VALUES (:instance, :hostname, :pid, :key, {now}, {now}, :cycle) "
        "ON CONFLICT (instance) DO UPDATE SET hostname = excluded.hostname, pid = "
        "excluded.pid, presence_key = excluded.presence_key, seen_at = excluded.seen_at, "
        "cycle_seconds = excluded.cycle_seconds")


class LeaseStore(ABC):
    """The Store's lease methods (``Store`` supplies the sessions).  Each commits before
    it returns."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """A session that commits on success (``Store._write``)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A read-only session (``Store._read``)."""

    def db_time(self) -> float:
        """The database's clock now (``store/clock.py``)."""
        with self._read() as session:
            return db_now(session.connection())

    def announce(self, instance: str, hostname: str, pid: int, presence_key: int,
                 cycle_seconds: float) -> float:
        """Create or refresh ``instance``'s row (``seen_at`` = the database's now, which
        is returned)."""
        with self._write() as session:
            connection = session.connection()
            connection.execute(_upsert_instance(connection), {
                "instance": instance, "hostname": hostname, "pid": pid, "key": presence_key,
                "cycle": cycle_seconds})
            return db_now(connection)

    def leave(self, instance: str) -> int:
        """Release every lease of ``instance`` and delete its row; how many leases."""
        with self._write() as session:
            connection = session.connection()
            now = now_sql(connection)
            released = connection.execute(text(
                f"UPDATE space_leases SET owner = NULL, expires_at = {now}, renewed_at = {now} "
                "WHERE owner = :me"), {"me": instance}).rowcount
            connection.execute(text("DELETE FROM instances WHERE instance = :me"),
                               {"me": instance})
            return int(released)

    def lease_view(self, me: str = "") -> LeaseView:
        """Every lease and instance, with who is present (``me``: the asker, present by
        definition on SQLite)."""
        with self._read() as session:
            connection = session.connection()
            now = db_now(connection)
            present = set(connection.execute(
                text(_present(connection)), {"cls": PRESENCE_CLASS, "me": me}).scalars())
            leases = tuple(Lease(*row) for row in connection.execute(text(
                "SELECT space, owner, generation, expires_at, renewed_at FROM space_leases "
                "ORDER BY space")))
            instances = tuple(
                Instance(str(i), str(host), int(pid), float(started), float(seen),
                         float(cycle), present=i in present)
                for i, host, pid, started, seen, cycle in connection.execute(text(
                    "SELECT instance, hostname, pid, started_at, seen_at, cycle_seconds "
                    "FROM instances ORDER BY instance")))
            return LeaseView(now, leases, instances)

    def acquire(self, space: str, owner: str, ttl: float,
                seen: int | None = None) -> Fence | None:
        """Take ``space`` for ``owner`` if its lease is free, expired, or held by another
        instance not present (see the module doc); the new fence, else None.

        ``seen``: the generation the caller's view showed (0: no row yet).  The take then
        only succeeds if nobody changed the lease since: under READ COMMITTED the row is
        re-checked after a concurrent take commits, but the "present" subquery still sees
        the statement's snapshot, in which an instance that started a moment ago (and
        just took the space) is not present yet."""
        with self._write() as session:
            connection = session.connection()
            now = now_sql(connection)
            connection.execute(text(
                "INSERT INTO space_leases (space, owner, generation, expires_at, renewed_at) "
                "VALUES (:space, NULL, 0, 0, 0) ON CONFLICT (space) DO NOTHING"),
                {"space": space})
            row = connection.execute(text(
                f"UPDATE space_leases SET owner = :me, generation = generation + 1, "
                f"expires_at = {now} + :ttl, renewed_at = {now} WHERE space = :space AND "
                f"(owner IS NULL OR expires_at <= {now} OR (owner <> :me AND owner NOT IN "
                f"({_present(connection)}))) AND "
                "(CAST(:seen AS INTEGER) IS NULL OR generation = :seen) RETURNING generation"),
                {"me": owner, "ttl": ttl, "space": space, "cls": PRESENCE_CLASS,
                 "seen": seen}).first()
            return None if row is None else Fence(space, owner, int(row[0]), ttl)

    def renew(self, owner: str, ttl: float) -> dict[str, int]:
        """Renew every lease ``owner`` still holds (expired ones nobody took included) for
        ``ttl``: space -> generation."""
        with self._write() as session:
            connection = session.connection()
            now = now_sql(connection)
            rows = connection.execute(text(
                f"UPDATE space_leases SET renewed_at = {now}, expires_at = {now} + :ttl "
                f"WHERE owner = :me RETURNING space, generation"),
                {"ttl": ttl, "me": owner})
            return {str(space): int(generation) for space, generation in rows}

    def release(self, fence: Fence) -> bool:
        """Give the space up (it stays at its generation until someone takes it);
        whether ``fence`` still held it."""
        with self._write() as session:
            connection = session.connection()
            now = now_sql(connection)
            return bool(connection.execute(text(
                f"UPDATE space_leases SET owner = NULL, expires_at = {now}, renewed_at = {now} "
                "WHERE space = :space AND owner = :owner AND generation = :generation"),
                {"space": fence.space, "owner": fence.owner,
                 "generation": fence.generation}).rowcount)

    def forget_instances(self, me: str, older_than: float) -> int:
        """Delete the rows of instances not present and not seen for ``older_than``
        seconds (status stops listing them; their leases are free already)."""
        with self._write() as session:
            connection = session.connection()
            return int(connection.execute(text(
                f"DELETE FROM instances WHERE instance <> :me AND seen_at < "
                f"{now_sql(connection)} - :age AND instance NOT IN ({_present(connection)})"),
                {"me": me, "age": older_than, "cls": PRESENCE_CLASS}).rowcount)

    def record_accounting_fenced(self, fence: Fence, records: Sequence[AccountingRecord],
                                 at: float) -> int:
        """``record_accounting`` under ``fence``: LeaseLost and nothing written when the
        lease is no longer the fence's."""
        if not records:
            return 0
        with self._write() as session:
            check_fence(session.connection(), fence)
            return insert_once(session.connection(), records, at)


class Presence:
    """PostgreSQL: this process's presence lock, held on a connection of its own
    (autocommit) for the whole life of the process; the server releases it the moment
    the process dies or the connection breaks, which frees the instance's leases at once.

    ``ensure`` (the keeper calls it every round, from one thread) checks the connection
    and, if it broke, reconnects and takes a lock again (perhaps under a new key: the row
    in ``instances`` is updated with it by the next ``announce``).  The URL, which may hold
    a password, is never logged."""

    def __init__(self, url: str, connect_timeout: float = 30.0) -> None:
        parsed = make_url(url)
        self._conninfo = parsed.set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._timeout = connect_timeout
        self._connection: Any = None
        self.key = 0

    def ensure(self) -> int:
        """The presence key held now, after (re)connecting if needed; raises
        psycopg.Error when the server cannot be reached (the caller retries next round)."""
        import psycopg

        if self._connection is not None:
            try:
                self._connection.execute("SELECT 1")
                return self.key
            except psycopg.Error:
                log.warning("space=- machinetype=- machine=- presence connection lost; "
                            "reconnecting (until then other instances may take this one's "
                            "spaces)")
                self.close()
        connection = psycopg.connect(self._conninfo, autocommit=True,
                                     connect_timeout=int(self._timeout))
        try:
            for _ in range(KEY_ATTEMPTS):
                key = secrets.randbelow(2**31 - 2) + 1
                row = connection.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                         (PRESENCE_CLASS, key)).fetchone()
                if row is not None and row[0]:
                    self._connection, self.key = connection, key
                    return key
        except BaseException:
            connection.close()
            raise
        connection.close()
        raise RuntimeError(f"no free presence key after {KEY_ATTEMPTS} attempts")

    def close(self) -> None:
        """Drop the lock (and the connection).  Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken: the server has dropped the lock
                log.debug("space=- machinetype=- machine=- presence connection close failed")


def quota(rank: int, instances: int, spaces: int) -> int:
    """How many of ``spaces`` the instance at ``rank`` (0-based, in the sorted live ids)
    of ``instances`` live ones should own: within one of every other's."""
    if instances <= 0:
        return spaces
    return spaces // instances + (1 if rank < spaces % instances else 0)


def ordered(instance: str, spaces: Collection[str]) -> list[str]:
    """``spaces`` in an order that is fixed for one instance and differs between
    instances, so free spaces are not all tried by everyone in the same order."""
    import hashlib

    return sorted(spaces, key=lambda s: hashlib.sha256(f"{instance}/{s}".encode()).digest())
