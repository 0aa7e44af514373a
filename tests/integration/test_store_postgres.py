"""The store on a real PostgreSQL server (tests/postgres.py), and what both backends must do
alike when a database is opened: migrations from nothing to head, several processes
opening one fresh database at once, URLs, open errors that never show a password, and text
PostgreSQL refuses."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from cloudvac.model.records import Event, MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.store.engine import StoreUnavailable, alembic_config, open_engine, sqlite_path
from cloudvac.store.tables import Base
from tests.postgres import SUPERUSER, PostgresServer, free_port

OPEN_BOUND_S = 90.0
"""Four opens of a fresh database, one after the other: about a second on a quiet machine."""


def raw_engine(url: str) -> sa.Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


# --- migrations ------------------------------------------------------------------------


def test_migrations_run_from_an_empty_database_to_head(store_url: str) -> None:
    """Every packaged migration, one after the other, on an empty database; the result is
    exactly the schema the models declare."""
    engine = raw_engine(store_url)
    try:
        with engine.begin() as connection:
            config = alembic_config(connection)
            assert MigrationContext.configure(connection).get_current_revision() is None
            command.upgrade(config, "head")
            heads = ScriptDirectory.from_config(config).get_heads()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert [context.get_current_revision()] == heads
            assert list(compare_metadata(context, Base.metadata)) == []
    finally:
        engine.dispose()


CHILD = """
import sys
from cloudvac.store import Store
print("ready", flush=True)
sys.stdin.readline()
try:
    Store(sys.argv[1], writable=True).close()
except Exception as exc:
    print(f"failed: {type(exc).__name__}: {exc}", flush=True)
else:
    print("opened", flush=True)
"""


def test_processes_opening_a_fresh_database_at_once_all_open_it(store_url: str) -> None:
    """The engine and the web side start together on a new database: each migrates it,
    one after the other (on PostgreSQL the second used to find no alembic_version, create
    it too, and fail)."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, store_url], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(3)]
    try:
        for proc in procs:  # all imported and waiting: then all go at once
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [proc.communicate()[0].strip() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert outcomes == ["opened"] * 3


def test_threads_opening_a_fresh_database_at_once_all_open_it(store_url: str) -> None:
    """alembic's context is process-wide: migrations in one process take turns (two at once
    on PostgreSQL ran each other's steps and hung)."""
    start, opened = threading.Barrier(4), []

    def open_close() -> None:
        start.wait()
        Store(store_url).close()
        opened.append(True)

    # daemon threads, joined with a bound: a hang fails the test instead of the run
    threads = [threading.Thread(target=open_close, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + OPEN_BOUND_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert len(opened) == 4


# --- URLs and open errors --------------------------------------------------------------


def test_a_plain_postgresql_url_uses_psycopg_3(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    engine = open_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
    store = Store(plain, writable=True)
    store.close()


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+asyncpg",
                                    "postgresql+pg8000"])
def test_other_postgresql_drivers_are_refused(driver: str) -> None:
    with pytest.raises(ValueError, match="psycopg 3"):
        Store(f"{driver}://user:pw@127.0.0.1:1/db")


@pytest.mark.parametrize("fault", ["wrong password", "password in the query",
                                   "no such database", "server down"])
def test_open_errors_name_the_database_but_never_its_password(
        fault: str, pg_server: PostgresServer, pg_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    database = str(sa.make_url(pg_url).database)
    wrong, right, port = "Sup3r-secret-pw", pg_server.password, pg_server.port
    where = f"{SUPERUSER}:***@127.0.0.1:{port}"
    url, password, shown, reason = {
        "wrong password": (pg_server.url(database, password=wrong), wrong,
                           f"{where}/{database}", "password authentication failed"),
        "password in the query": (
            pg_server.url(database, password=None, query={"password": wrong}), wrong,
            f"{SUPERUSER}@127.0.0.1:{port}/{database}?password=",
            "password authentication failed"),
        "no such database": (pg_server.url("nowhere"), right, f"{where}/nowhere",
                             'database "nowhere" does not exist'),
        "server down": (pg_server.url(database, port=(down := free_port())), right,
                        f"{SUPERUSER}:***@127.0.0.1:{down}/{database}", "refused"),
    }[fault]
    with pytest.raises(StoreUnavailable) as raised:
        Store(url, writable=True)
    message = str(raised.value)
    assert message.startswith(f"cannot open the store postgresql+psycopg://{shown}")
    assert reason in message
    assert password not in message and password not in caplog.text


# --- text --------------------------------------------------------------------------------


def test_text_with_a_nul_character_is_stored_on_both_backends(store_url: str) -> None:
    """PostgreSQL refuses NUL in text (and with it the whole cycle's write); a cloud's fault
    or address may hold one.  Stored as U+FFFD on both backends."""
    store = Store(store_url)
    try:
        record = MachineRecord(space="a", name="vm-1", machinetype="belle",
                               state=MachineState.RUNNING, cloud_id="id-1", processors=1,
                               fault="bad\x00fault", address="10.0.0.1\x00")
        store.apply("a", [record], {}, 1.0)
        store.add_events([Event(1.0, "a", "belle", "vm-1", "created", "nul\x00here")])
        stored = store.history("a").machines["vm-1"]
        assert (stored.fault, stored.address) == ("bad\ufffdfault", "10.0.0.1\ufffd")
        assert [e.message for e in store.events("a")] == ["nul\ufffdhere"]
    finally:
        store.close()


# --- the test server itself ----------------------------------------------------------------


def test_the_server_listens_only_on_loopback_and_its_socket(pg_server: PostgresServer) -> None:
    with pg_server.connect() as admin:
        settings = dict(admin.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('listen_addresses', 'unix_socket_directories', 'port')").fetchall())
        pid = admin.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        uid = os.stat(Path("/proc") / str(pid[0])).st_uid  # while its backend runs
    assert settings == {"listen_addresses": "127.0.0.1", "port": str(pg_server.port),
                        "unix_socket_directories": str(pg_server.base)}
    assert uid != 0 and uid == os.stat(pg_server.data).st_uid
