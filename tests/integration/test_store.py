"""The store against a real SQLite file and a real PostgreSQL database (``store_url``,
tests/postgres.py): schema, semantics, concurrency and restarts."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from cloudvac.model.records import Event, MachineRecord, Recorded
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store
from cloudvac.store.engine import alembic_config, sqlite_path
from cloudvac.store.tables import Base

TABLES = {"machines", "backoff", "drains", "events", "credentials",
          "space_revisions", "project_room", "accounting", "instances", "space_leases",
          "store_facts", "joboutputs", "removals"}
VM_MESSAGE = ShutdownMessage(300, "Nothing to do")
DEFAULT = ShutdownMessage(700, "Heartbeat file not updated")


NOW = 5000.0


sqlite_only = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
"""For tests of the SQLite file itself; every other test runs on both backends."""


@pytest.fixture
def db(store_url: str) -> Path:
    """The SQLite file of a ``sqlite_only`` test."""
    path = sqlite_path(store_url)
    assert path is not None, "a test using the file must be marked sqlite_only"
    return path


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def schema_diff(url: str, metadata: sa.MetaData = Base.metadata) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def running(name: str, space: str = "a", **changes: Any) -> MachineRecord:
    base = MachineRecord(
        space=space,
        name=name,
        machinetype="belle",
        state=MachineState.RUNNING,
        cloud_id=f"id-{name}",
        processors=4,
        hs06=10.5,
        created_at=1000.0,
        started_at=1010.0,
    )
    return replace(base, **changes)


def only(store: Store, space: str, name: str) -> MachineRecord:
    return store.history(space).machines[name]


# --- schema and migrations -------------------------------------------------------------


def test_migration_produces_exactly_the_declared_schema(store: Store, store_url: str) -> None:
    assert TABLES | {"alembic_version"} == table_names(store_url)
    assert schema_diff(store_url) == []


def test_schema_comparison_would_notice_a_difference(store: Store, store_url: str) -> None:
    # Guards the test above: an empty diff must not be the comparison's only possible answer.
    drifted = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["machines"].append_column(sa.Column("extra", sa.Integer()))
    diff = schema_diff(store_url, drifted)
    assert [entry[0] for entry in diff if isinstance(entry, tuple)] == ["add_column"]


def test_migrations_downgrade_to_nothing_and_upgrade_back(store: Store, store_url: str) -> None:
    store.close()
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as connection:
            config = alembic_config(connection)
            assert ScriptDirectory.from_config(config).get_heads() == ["0009"]
            command.downgrade(config, "base")
        assert table_names(store_url) == {"alembic_version"}
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == "0009"
    finally:
        engine.dispose()
    assert schema_diff(store_url) == []


@sqlite_only
def test_sqlite_file_uses_wal_and_parent_directory_is_created(store: Store, db: Path) -> None:
    assert db.parent.is_dir()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://h/db"])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Store(url)


# --- intents ---------------------------------------------------------------------------


def intent(name: str, space: str = "a", **changes: Any) -> MachineRecord:
    base = MachineRecord(space=space, name=name, machinetype="belle",
                         state=MachineState.INTENT, processors=4, hs06=10.0, created_at=100.0)
    return replace(base, **changes)


def test_intents_are_machine_rows_until_listed_or_refused(store: Store) -> None:
    first, second, other = intent("vm-1"), intent("vm-2", machinetype="t2k"), intent("vm-1", "b")
    for record in (first, second, other):
        store.apply(record.space, [record], {}, 100.0)
    assert dict(store.history("a").machines) == {"vm-1": first, "vm-2": second}
    assert dict(store.history("b").machines) == {"vm-1": other}
    # A VM may report before its first listing: its row accepts it.
    assert store.record_heartbeat("a", "vm-1", 150.0)
    listed = replace(first, state=MachineState.STARTING, cloud_id="id-1", created_at=99.0)
    refused = replace(second, state=MachineState.GONE, fault="create refused: quota")
    store.apply("a", [listed, refused], {}, 200.0)
    machines = store.history("a").machines
    assert list(machines) == ["vm-1"]
    assert machines["vm-1"] == replace(listed, heartbeat_at=150.0)


def test_apply_refuses_records_of_another_space(store: Store) -> None:
    with pytest.raises(ValueError, match="space b"):
        store.apply("a", [intent("vm-1", "b")], {}, 100.0)
    assert store.machines() == []


# --- apply -----------------------------------------------------------------------------


def test_apply_inserts_every_engine_field(store: Store) -> None:
    update = running(
        "vm-1",
        stopped_at=2000.0,
        delete_requested_at=2001.0,
        delete_reason="finished",
        fault="none",
        address="10.0.0.1",
    )
    store.apply("a", [update], {}, NOW)
    assert only(store, "a", "vm-1") == MachineRecord(
        space="a",
        name="vm-1",
        machinetype="belle",
        state=MachineState.RUNNING,
        cloud_id="id-vm-1",
        processors=4,
        hs06=10.5,
        created_at=1000.0,
        started_at=1010.0,
        stopped_at=2000.0,
        delete_requested_at=2001.0,
        delete_reason="finished",
        fault="none",
        address="10.0.0.1",
    )


def test_apply_updates_engine_fields_but_never_the_heartbeat(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    assert store.record_heartbeat("a", "vm-1", 1500.0)
    store.apply("a", [running("vm-1", state=MachineState.STOPPED, stopped_at=1600.0)], {}, NOW)
    record = only(store, "a", "vm-1")
    assert (record.state, record.stopped_at) == (MachineState.STOPPED, 1600.0)
    assert record.heartbeat_at == 1500.0
    assert record.shutdown is None and record.shutdown_at is None


def test_default_shutdown_is_stored_when_the_vm_sent_none(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    store.apply("a", [running("vm-1", shutdown=DEFAULT)], {}, NOW)
    record = only(store, "a", "vm-1")
    assert record.shutdown == DEFAULT
    assert record.shutdown_at is not None
    # A later update without a default keeps the stored message.
    store.apply("a", [running("vm-1")], {}, NOW)
    assert only(store, "a", "vm-1").shutdown == DEFAULT


def test_default_shutdown_never_overwrites_the_vm_message(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    assert store.record_shutdown("a", "vm-1", VM_MESSAGE, 1700.0) is Recorded.RECORDED
    store.apply("a", [running("vm-1", state=MachineState.STOPPED, shutdown=DEFAULT)], {}, NOW)
    record = only(store, "a", "vm-1")
    assert (record.shutdown, record.shutdown_at) == (VM_MESSAGE, 1700.0)
    assert record.state is MachineState.STOPPED


def test_vm_message_overwrites_default_but_never_an_earlier_vm_message(store: Store) -> None:
    store.apply("a", [running("vm-1", shutdown=DEFAULT)], {}, NOW)
    done = ShutdownMessage(200, "done")
    assert store.record_shutdown("a", "vm-1", done, 1800.0) is Recorded.RECORDED
    assert only(store, "a", "vm-1").shutdown == done
    assert store.record_shutdown("a", "vm-1", VM_MESSAGE, 1900.0) is Recorded.CONFLICT
    assert store.record_shutdown("a", "vm-1", done, 1950.0) is Recorded.SAME
    record = only(store, "a", "vm-1")
    assert (record.shutdown, record.shutdown_at, record.reported_at) == (done, 1800.0, 1800.0)


def test_a_failing_before_commit_records_nothing(store: Store) -> None:
    store.apply("a", [running("vm-1", shutdown=DEFAULT)], {}, NOW)

    def file_refused() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.record_shutdown("a", "vm-1", VM_MESSAGE, 1800.0, before_commit=file_refused)
    record = only(store, "a", "vm-1")
    assert (record.shutdown, record.reported_at) == (DEFAULT, None)
    ran: list[bool] = []
    assert store.record_shutdown("a", "vm-1", VM_MESSAGE, 1900.0,
                                 before_commit=lambda: ran.append(True)) is Recorded.RECORDED
    assert ran == [True] and only(store, "a", "vm-1").shutdown == VM_MESSAGE


def test_user_data_is_claimed_once(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    assert store.claim_user_data("a", "vm-1", 10.0)
    assert not store.claim_user_data("a", "vm-1", 20.0)
    assert not store.claim_user_data("a", "vm-2", 20.0)
    assert only(store, "a", "vm-1").user_data_at == 10.0


def test_shutdown_for_unknown_machine_is_refused(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    assert store.record_shutdown("a", "vm-2", VM_MESSAGE, 1.0) is Recorded.UNKNOWN
    assert store.record_shutdown("b", "vm-1", VM_MESSAGE, 1.0) is Recorded.UNKNOWN
    assert store.machines() == [only(store, "a", "vm-1")]
    assert only(store, "a", "vm-1").shutdown is None


def test_apply_with_a_name_twice_keeps_the_last(store: Store) -> None:
    store.apply("a", [running("vm-1", fault="first"), running("vm-1", fault="second")], {}, NOW)
    assert only(store, "a", "vm-1").fault == "second"


def test_last_abort_only_increases(store: Store) -> None:
    store.apply("a", [], {"belle": 100.0, "t2k": 50.0}, NOW)
    store.apply("a", [], {"belle": 80.0}, NOW)
    store.apply("b", [], {"belle": 10.0}, NOW)
    assert store.history("a").last_abort == {"belle": 100.0, "t2k": 50.0}
    store.apply("a", [], {"belle": 150.0, "t2k": 20.0}, NOW)
    assert store.history("a").last_abort == {"belle": 150.0, "t2k": 50.0}
    assert store.last_aborts() == {("a", "belle"): 150.0, ("a", "t2k"): 50.0, ("b", "belle"): 10.0}


# --- heartbeats, drains, events --------------------------------------------------------


def test_heartbeat_only_moves_forward(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    assert store.record_heartbeat("a", "vm-1", 100.0)
    assert store.record_heartbeat("a", "vm-1", 50.0)
    assert only(store, "a", "vm-1").heartbeat_at == 100.0
    assert store.record_heartbeat("a", "vm-1", 200.0)
    assert only(store, "a", "vm-1").heartbeat_at == 200.0


def test_heartbeat_for_unknown_or_gone_machine_is_refused(store: Store) -> None:
    store.apply("a", [running("vm-1"), running("vm-2", state=MachineState.GONE)], {}, NOW)
    assert not store.record_heartbeat("a", "vm-3", 1.0)
    assert not store.record_heartbeat("b", "vm-1", 1.0)
    assert not store.record_heartbeat("a", "vm-2", 1.0)
    gone = store.machines("a", include_gone=True)[1]
    assert (gone.name, gone.heartbeat_at) == ("vm-2", None)


def test_drains_per_machinetype_and_whole_space(store: Store) -> None:
    store.set_drain("a", "*", True)
    store.set_drain("a", "belle", True)
    store.set_drain("a", "belle", True)
    store.set_drain("b", "t2k", True)
    assert store.history("a").drained == frozenset({"*", "belle"})
    store.set_drain("a", "*", False)
    store.set_drain("a", "never-drained", False)
    assert store.history("a").drained == frozenset({"belle"})
    assert store.history("b").drained == frozenset({"t2k"})
    assert store.history("c").drained == frozenset()


def test_events_newest_first_with_limit(store: Store) -> None:
    def ev(at: float, space: str, message: str) -> Event:
        return Event(at, space, "belle", "vm-1", "created", message)

    store.add_events([ev(10.0, "a", "old"), ev(30.0, "a", "new"), ev(20.0, "b", "other")])
    store.add_events([ev(30.0, "a", "same time, later")])
    store.add_events([])
    assert [e.message for e in store.events("a")] == ["same time, later", "new", "old"]
    assert [e.message for e in store.events("a", limit=2)] == ["same time, later", "new"]
    assert [e.at for e in store.events()] == [30.0, 30.0, 20.0, 10.0]
    assert store.events(limit=0) == []
    assert store.events("b") == [ev(20.0, "b", "other")]


# --- machines, history, prune ----------------------------------------------------------


def test_history_and_machines_exclude_gone_unless_asked(store: Store) -> None:
    store.apply("a", [running("vm-1"), running("vm-2", state=MachineState.GONE)], {}, NOW)
    store.apply("b", [running("vm-3", "b")], {}, NOW)
    assert set(store.history("a").machines) == {"vm-1"}
    assert [m.name for m in store.machines("a")] == ["vm-1"]
    assert [m.name for m in store.machines("a", include_gone=True)] == ["vm-1", "vm-2"]
    assert [(m.space, m.name) for m in store.machines()] == [("a", "vm-1"), ("b", "vm-3")]


def test_prune_removes_old_gone_machines_and_old_events(store: Store) -> None:
    gone = MachineState.GONE
    store.apply(
        "a",
        [
            running("old-gone", state=gone, stopped_at=100.0),
            running("new-gone", state=gone, stopped_at=300.0),
            running("old-stopped", state=MachineState.STOPPED, stopped_at=100.0),
            running("gone-no-stop-time", state=gone),
        ],
        {},
        NOW,
    )
    store.add_events([Event(100.0, "a", "belle", "x", "k", "old")])
    store.add_events([Event(300.0, "a", "belle", "x", "k", "new")])

    assert store.prune(200.0) == 2
    names = {m.name for m in store.machines("a", include_gone=True)}
    assert names == {"new-gone", "old-stopped", "gone-no-stop-time"}
    assert [e.message for e in store.events("a")] == ["new"]
    # Without a stop time the last update decides (NOW, the time the engine gave).
    assert store.prune(1e12) == 3
    assert [m.name for m in store.machines("a", include_gone=True)] == ["old-stopped"]


# --- concurrency and restarts ----------------------------------------------------------


def test_concurrent_apply_on_four_spaces_loses_nothing(store: Store) -> None:
    cycles, per_cycle = 40, 5
    start = threading.Barrier(4)

    def worker(space: str) -> None:
        start.wait()
        for cycle in range(cycles):
            updates = [running(f"{space}-{cycle}-{i}", space) for i in range(per_cycle)]
            store.apply(space, updates, {"belle": float(cycle)}, NOW)
            store.add_events([Event(float(cycle), space, "belle", "", "cycle", str(cycle))])
            assert store.record_heartbeat(space, updates[0].name, float(cycle))
            history = store.history(space)
            assert len(history.machines) == (cycle + 1) * per_cycle

    spaces = [f"space-{n}" for n in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(worker, space) for space in spaces]:
            future.result()

    assert len(store.machines()) == 4 * cycles * per_cycle
    assert store.last_aborts() == {(space, "belle"): float(cycles - 1) for space in spaces}
    for space in spaces:
        assert len(store.events(space, limit=1000)) == cycles
        beats = [m for m in store.machines(space) if m.heartbeat_at is not None]
        assert len(beats) == cycles


def test_reopening_the_same_database_keeps_everything(store_url: str) -> None:
    first = Store(store_url)
    first.apply("a", [intent("vm-9")], {}, NOW)
    first.apply("a", [running("vm-1")], {"belle": 42.0}, NOW)
    first.record_heartbeat("a", "vm-1", 123.0)
    first.record_shutdown("a", "vm-1", VM_MESSAGE, 124.0)
    first.set_drain("a", "*", True)
    first.add_events([Event(1.0, "a", "belle", "vm-1", "created", "hello")])
    before = (first.history("a"), first.events(), first.last_aborts())
    first.close()

    second = Store(store_url)
    try:
        after = (second.history("a"), second.events(), second.last_aborts())
        assert after == before
        assert after[0].machines["vm-1"].heartbeat_at == 123.0
        assert after[0].machines["vm-9"].state is MachineState.INTENT
    finally:
        second.close()
    assert schema_diff(store_url) == []


def test_credentials_upsert(store_url: str) -> None:
    store = Store(store_url)
    store.set_credentials("a.example", {"keystone": 100.0, "checkin_access": 50.0}, NOW)
    store.set_credentials("a.example", {"keystone": 200.0}, NOW)
    store.set_credentials("b.example", {}, NOW)
    assert store.credentials() == {"a.example": {"keystone": 200.0, "checkin_access": 50.0}}
    store.close()
