"""The store's database connection: engine, SQLite pragmas, transaction start, the
packaged alembic migrations, and what keeps a SQLite store honest while it runs: the
identity of its file (``DatabaseFile``) and the gate that lets the Store reopen it with no
session in flight (``Gate``).  Only SQLite (a file) and PostgreSQL are accepted."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("cloudvac.store")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 30
"""PostgreSQL: how long a connection attempt may take (libpq waits forever by default, so
an unreachable server would hang the open and every later session); the URL's own
``connect_timeout`` wins."""
POSTGRESQL_DRIVERS = {"postgresql": "postgresql+psycopg", "postgresql+psycopg": None}
"""The PostgreSQL URLs accepted, and the driver a plain ``postgresql://`` gets: psycopg 3
(a dependency of cloudvac), not SQLAlchemy 2.0's default psycopg2."""
MIGRATION_LOCK_KEY = 0x636C6F7564766163  # "cloudvac"
"""PostgreSQL advisory lock that serialises migrations of one database."""
_MIGRATING = threading.Lock()
"""alembic's ``context`` and ``op`` are process-wide: one migration at a time per process."""
IMMEDIATE = "cloudvac_begin_immediate"
"""Execution option: this engine's transactions take the write lock at BEGIN."""


class StoreUnavailable(Exception):
    """The store cannot be opened; ``str()`` names the database (a path, or the URL without
    its password) and the reason the system gave."""


class StoreMoved(StoreUnavailable):
    """A new connection found another file (or none) at the SQLite store's path: refused
    before it touched anything; the Store reopens the file and tries again."""


def describe(url: str) -> str:
    """The database of ``url`` as an operator knows it: the SQLite file's path, else the
    URL with its password hidden (also one given as a ``password`` query parameter)."""
    path = sqlite_path(url)
    if path is not None:
        return str(path)
    parsed = make_url(url)
    hidden = [key for key in parsed.query if key.lower() in ("password", "sslpassword")]
    if hidden:
        parsed = parsed.update_query_dict(dict.fromkeys(hidden, "***"))
    return parsed.render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite ``url``; None for other backends (and for in-memory
    SQLite, which ``open_engine`` refuses anyway)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") \
            or database.startswith("file:"):
        return None
    return Path(database)


def alembic_config(connection: Connection) -> Config:
    """An alembic Config for the packaged migrations that runs on ``connection``."""
    config = Config()
    # Config values go through configparser interpolation: a '%' in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so ``_sqlite_begin`` decides
    # how each transaction starts (its implicit BEGIN comes too late for a snapshot).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL: readers (status command, web side) never block the engine's writers.
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL, not WAL's usual NORMAL: an intent must survive a power cut once committed.
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that reads and then
    # writes can fail with SQLITE_BUSY immediately, without honouring busy_timeout.
    immediate = connection.get_execution_options().get(IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def open_engine(url: str, guard: Callable[[], None] | None = None) -> Engine:
    """An Engine for ``url``; creates a SQLite file's directory.  PostgreSQL through
    psycopg 3 (``postgresql://`` or ``postgresql+psycopg://``).  ValueError for in-memory
    SQLite, other PostgreSQL drivers or other backends.  ``guard`` (SQLite): called on
    every new connection once it has opened the file and before any statement, and again
    if its set-up fails; what it raises refuses the connection."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            # Each pooled connection would see its own private in-memory database.
            raise ValueError("the SQLite store needs a database file path")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})

        def connect(dbapi_connection: Any, record: Any) -> None:
            try:
                if guard is not None:
                    guard()
                _sqlite_connect(dbapi_connection, record)
            except BaseException:
                dbapi_connection.close()
                if guard is not None:
                    # SQLite refuses a file unlinked between the open and the first statement
                    # (disk I/O error): that is a moved store too, which the Store retries
                    guard()
                raise

        event.listen(engine, "connect", connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        return _postgresql_engine(parsed)
    raise ValueError(f"unsupported store backend {backend!r}: use sqlite or postgresql")


def _postgresql_engine(parsed: URL, read_only: bool = False) -> Engine:
    if parsed.drivername not in POSTGRESQL_DRIVERS:
        raise ValueError(f"unsupported PostgreSQL driver {parsed.drivername!r}: use "
                         "postgresql:// or postgresql+psycopg:// (psycopg 3)")
    parsed = parsed.set(drivername=POSTGRESQL_DRIVERS[parsed.drivername] or parsed.drivername)
    connect_args: dict[str, Any] = {} if "connect_timeout" in parsed.query else {
        "connect_timeout": CONNECT_TIMEOUT_S}
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def open_migrated(url: str, writable: bool = False,
                  guard: Callable[[], None] | None = None) -> Engine:
    """``open_engine(url, guard)`` with the database created if needed and migrated to
    head; ``writable``: also make sure it accepts writes now (a read-only file in a
    writable directory opens, and reads, without complaint).

    StoreUnavailable (naming the database and the system's reason) when the file, its
    directory or the server cannot be used; ValueError for URLs ``open_engine`` refuses.
    """
    try:
        engine = open_engine(url, guard)
    except OSError as exc:  # the SQLite file's directory cannot be created
        raise StoreUnavailable(f"cannot open the store {describe(url)}: "
                               f"{exc.strerror or exc}") from None
    try:
        migrate(engine)
        if writable:
            _probe_write(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _unavailable(url, exc) from None
    except BaseException:
        engine.dispose()
        raise
    return engine


def open_read_only(url: str) -> Engine:
    """An Engine on the existing store at ``url`` whose connections refuse every write
    (SQLite ``PRAGMA query_only``, PostgreSQL ``default_transaction_read_only``): nothing
    is created, migrated or converted (no WAL switch).  StoreUnavailable when there is no
    store there or it is not at the packaged head revision (the daemon migrates it)."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreUnavailable(f"no store at {path}")
    parsed = make_url(url)
    if path is not None:
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_read_only)
        event.listen(engine, "begin", _sqlite_begin)
    elif parsed.get_backend_name() == "postgresql":
        engine = _postgresql_engine(parsed, read_only=True)
    else:
        return open_engine(url)  # raises the ValueError every other backend gets
    try:
        with engine.connect() as connection:
            config = alembic_config(connection)
            head = ScriptDirectory.from_config(config).get_current_head()
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _unavailable(url, exc) from None
    if current != head:
        engine.dispose()
        raise StoreUnavailable(f"the store {describe(url)} is at revision {current}, this "
                               f"cloudvac reads {head}: `cloudvac run` upgrades it")
    return engine


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # see _sqlite_connect
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA query_only = 1")
    finally:
        cursor.close()


def _probe_write(engine: Engine) -> None:
    """Write a row (to itself) and roll back: SQLAlchemyError if the database refuses."""
    with engine.execution_options(**{IMMEDIATE: True}).connect() as connection:
        transaction = connection.begin()
        try:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
        finally:
            transaction.rollback()


def _unavailable(url: str, exc: SQLAlchemyError) -> StoreUnavailable:
    reason = str(getattr(exc, "orig", None) or exc)
    path = sqlite_path(url)
    why = _file_problem(path) if path is not None else None
    return StoreUnavailable(f"cannot open the store {describe(url)}: {reason}"
                            + (f" ({why})" if why else ""))


def _file_problem(path: Path) -> str | None:
    """What the system says about a SQLite file SQLite could not use (SQLite's own messages,
    "unable to open database file" or "attempt to write a readonly database", omit it)."""
    target = path if path.exists() else path.parent
    try:
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return f"{target}: read-only file system"
        if path.is_dir():
            return f"{path} is a directory"
        if not os.access(target, os.R_OK | os.W_OK):
            return f"{target}: permission denied"
    except OSError as exc:
        return f"{target}: {exc.strerror}"
    return None


def migrate(engine: Engine) -> None:
    """Create or upgrade the database of ``engine`` to the packaged head revision."""
    # One transaction around the whole upgrade, which also serialises two processes that
    # open the same fresh database at once (or upgrade it): on SQLite BEGIN IMMEDIATE, on
    # PostgreSQL an advisory lock (the second would find no alembic_version, create it
    # too, and fail).
    with _MIGRATING, engine.execution_options(**{IMMEDIATE: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
        command.upgrade(alembic_config(connection), "head")


LOST = (-1, -1)
"""A ``DatabaseFile.identity`` no file has: the last reopen failed."""


class DatabaseFile:
    """The identity (device, inode) of the SQLite database file a Store uses.

    Why: deleting or replacing the file under a running process is silent in SQLite; its
    connections go on writing to the unlinked inode and everything is lost.  ``changed``
    costs one ``os.stat`` (about 2 us here, against the milliseconds of a synchronous
    SQLite commit).  ``identity`` None: not known yet, the next connection decides.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def observe(self) -> tuple[int, int] | None:
        """The file's identity now; None if there is no file at the path."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def changed(self) -> str | None:
        """Why the file at the path is not the Store's any more ("removed", "replaced by
        another file"), or None if it is."""
        now = self.observe()
        if now == self.identity:
            return None
        return "removed" if now is None else "replaced by another file"

    def check(self) -> None:
        """The connection guard (``open_engine``): StoreMoved if a new connection, which
        has just opened (or created) the file at the path, did not open the Store's file.

        Its first statement would open the lost database's ``-shm`` index by name and
        share it with the connections still open on the lost file: I/O errors, or a
        corrupted new file.  Checked after the open, so a file removed just after it was
        opened is still the Store's file for this connection.
        """
        if self.identity is None:
            self.identity = self.observe()
            return
        why = self.changed()
        if why is not None:
            raise StoreMoved(f"store {self.path} was {why}: not connecting to the file now "
                             "there before the Store has reopened it")

    def set_aside_journals(self) -> list[Path]:
        """Move the write-ahead log left by the lost database out of the path's way and
        drop its index; return where the log went.

        Call it with every connection of this process closed.  The log belongs to the
        database that was removed or replaced: SQLite would replay it into the new file at
        the path (corrupting a replacement), or delete it (losing a moved database's last
        transactions).  Renamed, it stays for the operator; the ``-shm`` index is rebuilt
        from a log and is simply removed.
        """
        moved: list[Path] = []
        for suffix in ("-wal", "-journal"):
            journal = self.path.with_name(self.path.name + suffix)
            if journal.exists():
                # nanoseconds: two losses within a second must not overwrite each other
                aside = journal.with_name(f"{journal.name}.lost-{time.time_ns()}")
                os.rename(journal, aside)
                moved.append(aside)
        self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        return moved


def follow(engine: Engine, watch: DatabaseFile, gate: Gate,
           forget: Callable[[], None]) -> bool:
    """Reopen ``engine``'s database if its file was removed or replaced; whether it did.

    Cheap when nothing happened: one ``os.stat``.  Otherwise, once every session in flight
    has ended (``gate``): one ERROR naming the path, every pooled connection closed, the
    lost database's write-ahead log set aside, the file now at the path opened (created
    and migrated if missing), and ``forget`` called (what was read from the lost file
    must be read again).
    """
    if watch.changed() is None:
        return False
    with gate.exclusive():
        why = watch.changed()
        if why is None:
            return False  # another thread reopened it while this one waited
        log.error("space=- machinetype=- machine=- store %s was removed or replaced under a "
                  "running cloudvac: it was %s; reopening the file at that path (a new, empty "
                  "store if none is there); nothing written to the lost file is in it",
                  watch.path, why)
        engine.dispose()
        aside = watch.set_aside_journals()
        if aside:
            log.warning("space=- machinetype=- machine=- store %s: the lost database's "
                        "write-ahead log was moved to %s", watch.path,
                        ", ".join(map(str, aside)))
        forget()
        watch.identity = None  # the migration's connection takes the file now there
        try:
            watch.path.parent.mkdir(parents=True, exist_ok=True)
            migrate(engine)
        except BaseException:
            watch.identity = LOST  # no file is the Store's: the next session tries again
            raise
        return True


class Gate:
    """Sessions pass in parallel through ``shared``; ``exclusive`` waits until none is in
    flight and holds new ones back until it ends.  Not reentrant: a thread inside a
    shared section must not ask for the exclusive one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._closed = True
            self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()
