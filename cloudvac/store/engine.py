"""The store's database connection: engine, SQLite pragmas, transaction start, and the
packaged alembic migrations.  Only SQLite (a file) and PostgreSQL are accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
IMMEDIATE = "cloudvac_begin_immediate"
"""Execution option: this engine's transactions take the write lock at BEGIN."""


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


def open_engine(url: str) -> Engine:
    """An Engine for ``url``; creates a SQLite file's directory.  ValueError for in-memory
    SQLite or other backends."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            # Each pooled connection would see its own private in-memory database.
            raise ValueError("the SQLite store needs a database file path")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    raise ValueError(f"unsupported store backend {backend!r}: use sqlite or postgresql")
