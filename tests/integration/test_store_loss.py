"""A SQLite store removed or replaced under a running Store (issue 13, point 1): the loss
is logged once, the file at the path is opened (created if missing), the next write lands
in it and the next history read is a full one."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store

NOW = 5000.0
LOST = "was removed or replaced under a running cloudvac"


def running(name: str, **changes: object) -> MachineRecord:
    base = MachineRecord(space="a", name=name, machinetype="belle",
                         state=MachineState.RUNNING, cloud_id=f"id-{name}", processors=1,
                         created_at=1000.0, started_at=1010.0)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "cloudvac.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{db}")
    yield opened
    opened.close()


def names_in_file(path: Path) -> set[str]:
    """The machines in the database file at ``path`` (its own connection, checked whole)."""
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {name for (name,) in connection.execute("SELECT name FROM machines")}
    finally:
        connection.close()


def losses(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if LOST in r.getMessage()]


def test_removed_file_is_recreated_and_the_next_write_lands_in_it(
        store: Store, db: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloudvac.store")
    store.apply("a", [running("vm-1"), running("vm-2")], {}, NOW)
    assert set(store.history("a").machines) == {"vm-1", "vm-2"}
    full_reads = store.histories.stats.full_reads

    db.unlink()  # what an operator's rm does: the -wal and -shm stay behind
    store.apply("a", [running("vm-3")], {}, NOW + 1)

    assert names_in_file(db) == {"vm-3"}, "written to the file at the path, not the lost one"
    (record,) = losses(caplog)
    assert record.levelno == logging.ERROR
    assert str(db) in record.getMessage() and "removed" in record.getMessage()
    assert store.reopened == 1
    history = store.history("a")
    assert set(history.machines) == {"vm-3"}
    assert store.histories.stats.full_reads == full_reads + 1, "the cache was dropped"

    assert store.record_heartbeat("a", "vm-3", NOW + 2)
    assert len(losses(caplog)) == 1 and store.reopened == 1, "logged once, reopened once"


def test_replaced_file_is_reopened_without_the_lost_write_ahead_log(
        store: Store, db: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloudvac.store")
    other = db.with_name("restored.db")
    restored = Store(f"sqlite:///{other}")
    restored.apply("a", [running("old-1")], {}, NOW)
    restored.close()
    # frames of this store's writes sit in its write-ahead log, uncheckpointed
    store.apply("a", [running(f"vm-{i}") for i in range(20)], {}, NOW)
    assert len(store.history("a").machines) == 20
    full_reads = store.histories.stats.full_reads

    os.replace(other, db)  # a restore by mv, under the running store
    store.apply("a", [running("vm-new")], {}, NOW + 1)

    # replaying the lost database's log into the restored file would corrupt it
    assert names_in_file(db) == {"old-1", "vm-new"}
    (record,) = losses(caplog)
    assert record.levelno == logging.ERROR and "replaced by another file" in record.getMessage()
    assert list(db.parent.glob("cloudvac.db-wal.lost-*")), "the lost log is kept aside"
    assert store.reopened == 1
    assert set(store.history("a").machines) == {"old-1", "vm-new"}
    assert store.histories.stats.full_reads == full_reads + 1


def test_writers_in_flight_while_the_file_is_removed(
        store: Store, db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Threads keep writing while the file goes: none fails, the loss is handled once and
    the new file is whole."""
    caplog.set_level(logging.WARNING, logger="cloudvac.store")
    store.apply("a", [running(f"vm-{i}") for i in range(4)], {}, NOW)
    stop, failures = threading.Event(), []

    def beat(name: str) -> None:
        at = NOW
        while not stop.is_set():
            at += 1
            try:
                store.record_heartbeat("a", name, at)
                store.history("a")
            except Exception as exc:  # collected: the test reports them all
                failures.append(exc)
                return

    threads = [threading.Thread(target=beat, args=(f"vm-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        db.unlink()
        store.apply("a", [running("after")], {}, NOW + 1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert names_in_file(db) == {"after"}
    assert store.reopened == 1 and len(losses(caplog)) == 1
