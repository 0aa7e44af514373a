"""Incremental history reads (store/history.py) against a real SQLite file and a real
PostgreSQL database (``store_url``, tests/postgres.py): every writer's change is seen,
nothing else is decoded, and the cache never drifts from a full read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import sqlalchemy as sa
from alembic import command

from cloudvac.model.records import MachineRecord, Recorded, SpaceHistory
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store
from cloudvac.store.engine import alembic_config, sqlite_path
from cloudvac.store.history import HistoryCache

NOW = 5000.0


def raw_engine(url: str) -> sa.Engine:
    """A plain engine on the store's database, as another program would open it."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in one transaction, outside cloudvac (an operator, a restore)."""
    engine = raw_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def running(name: str, space: str = "a", **changes: object) -> MachineRecord:
    base = MachineRecord(space=space, name=name, machinetype="belle",
                         state=MachineState.RUNNING, cloud_id=f"id-{name}", processors=1,
                         created_at=1000.0, started_at=1010.0)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def fresh(url: str, space: str) -> SpaceHistory:
    """What a full read gives: a new Store has nothing cached."""
    other = Store(url)
    try:
        return other.history(space)
    finally:
        other.close()


def decoded(store: Store) -> int:
    return store.histories.stats.rows_decoded


def test_steady_reads_decode_only_what_changed(store: Store, store_url: str) -> None:
    store.apply("a", [running(f"vm-{i}") for i in range(50)], {}, NOW)
    store.apply("b", [running("other", "b")], {}, NOW)
    assert len(store.history("a").machines) == 50
    stats = store.histories.stats
    assert (stats.full_reads, stats.rows_decoded) == (1, 50)

    assert len(store.history("a").machines) == 50
    assert (stats.unchanged_reads, stats.rows_decoded) == (1, 50), "nothing written"

    store.apply("b", [running("other", "b", fault="x")], {}, NOW)  # another space's write
    store.history("a")
    assert (stats.unchanged_reads, stats.rows_decoded) == (2, 50)

    assert store.record_heartbeat("a", "vm-7", 2000.0)
    after = store.history("a")
    assert after.machines["vm-7"].heartbeat_at == 2000.0
    assert (stats.incremental_reads, stats.rows_decoded) == (1, 51), "one row decoded"
    assert after == fresh(store_url, "a")


def test_every_writer_is_seen_incrementally(store: Store, store_url: str) -> None:
    store.apply("a", [running(f"vm-{i}") for i in range(5)], {}, NOW)
    store.history("a")
    store.apply("a", [running("vm-0", state=MachineState.STOPPED, stopped_at=1500.0)], {}, NOW)
    store.apply("a", [running("vm-1", state=MachineState.GONE, stopped_at=1500.0)], {}, NOW)
    store.apply("a", [running("vm-9")], {}, NOW)
    assert store.record_heartbeats({("a", "vm-2"): 1600.0, ("b", "nope"): 1.0}) >= 1
    recorded = store.record_shutdown("a", "vm-3", ShutdownMessage(300, "No more work"), 1700.0)
    assert recorded is Recorded.RECORDED
    store.set_drain("a", "belle", True)
    store.apply("a", [], {"belle": 1800.0}, NOW)
    got = store.history("a")
    assert set(got.machines) == {"vm-0", "vm-2", "vm-3", "vm-4", "vm-9"}, "GONE left"
    assert got.machines["vm-0"].state is MachineState.STOPPED
    assert got.machines["vm-2"].heartbeat_at == 1600.0
    shutdown = got.machines["vm-3"].shutdown
    assert shutdown is not None and shutdown.code == 300
    assert got.drained == frozenset({"belle"}) and got.last_abort == {"belle": 1800.0}
    assert store.histories.stats.full_reads == 1
    assert got == fresh(store_url, "a")


def test_writes_of_another_store_on_the_same_database_are_seen(store: Store,
                                                               store_url: str) -> None:
    """The web service may run as its own process (``cloudvac web``): its heartbeats and
    shutdown messages reach the engine's cached history through the revisions."""
    store.apply("a", [running("vm-1"), running("vm-2")], {}, NOW)
    store.history("a")
    web = Store(store_url)
    try:
        assert web.record_heartbeats({("a", "vm-1"): 3000.0})
        recorded = web.record_shutdown("a", "vm-2", ShutdownMessage(200, "Done"), 3001.0)
        assert recorded is Recorded.RECORDED
    finally:
        web.close()
    got = store.history("a")
    assert got.machines["vm-1"].heartbeat_at == 3000.0
    shutdown = got.machines["vm-2"].shutdown
    assert shutdown is not None and shutdown.code == 200
    assert store.histories.stats.full_reads == 1


def test_a_returned_history_is_never_changed_later(store: Store) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    before = store.history("a")
    kept = dict(before.machines)
    store.record_heartbeat("a", "vm-1", 5000.0)
    store.apply("a", [running("vm-2")], {}, NOW)
    after = store.history("a")
    assert dict(before.machines) == kept and set(before.machines) == {"vm-1"}
    assert set(after.machines) == {"vm-1", "vm-2"}


def test_a_hand_edit_is_seen_by_the_next_full_read(store: Store, store_url: str) -> None:
    """A row changed outside cloudvac carries no new revision: the periodic full read
    (``full_every``) is what corrects the cache, and nothing before it."""
    now = [0.0]
    store.histories = HistoryCache(full_every=600.0, clock=lambda: now[0])
    store.apply("a", [running("vm-1")], {}, NOW)
    store.history("a")
    execute(store_url, "UPDATE machines SET fault = 'edited by hand' WHERE name = 'vm-1'")
    now[0] = 599.0
    assert store.history("a").machines["vm-1"].fault == ""
    now[0] = 600.0
    assert store.history("a").machines["vm-1"].fault == "edited by hand"
    assert store.histories.stats.full_reads == 2


def test_counter_going_backwards_forces_a_full_read(store: Store, store_url: str) -> None:
    store.apply("a", [running("vm-1")], {}, NOW)
    store.apply("a", [running("vm-2")], {}, NOW)
    store.history("a")
    execute(store_url,  # a restored database: lower counter, other rows
            "DELETE FROM machines WHERE name = 'vm-2'",
            "UPDATE space_revisions SET rev = 1 WHERE space = 'a'")
    assert set(store.history("a").machines) == {"vm-1"}
    assert store.histories.stats.full_reads == 2


def test_concurrent_writers_and_readers_never_drift(store: Store, store_url: str) -> None:
    """Engine applies, web heartbeats and shutdowns from several threads while readers
    read: afterwards the cached history equals a full read of the database."""
    spaces, rounds = ["a", "b"], 60
    for space in spaces:
        store.apply(space, [running(f"{space}-{i}", space) for i in range(20)], {}, NOW)
    start = threading.Barrier(5)

    def engine(space: str) -> None:
        start.wait()
        for r in range(rounds):
            store.apply(space, [running(f"{space}-{r % 20}", space, fault=f"r{r}"),
                                running(f"{space}-new-{r}", space)], {}, NOW)
            if r % 7 == 0:
                store.apply(space, [running(f"{space}-new-{r}", space, state=MachineState.GONE)],
                            {}, NOW)
            store.history(space)

    def web() -> None:
        start.wait()
        for r in range(rounds):
            store.record_heartbeats({(s, f"{s}-{r % 20}"): 4000.0 + r for s in spaces})
            store.record_shutdown(spaces[r % 2], f"{spaces[r % 2]}-{r % 20}",
                                  ShutdownMessage(200, f"r{r}"), 5000.0 + r)

    def reader() -> None:
        start.wait()
        for _ in range(rounds):
            for space in spaces:
                store.history(space)

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(engine, s) for s in spaces]
        futures += [pool.submit(web), pool.submit(reader), pool.submit(reader)]
        for future in futures:
            future.result()
    for space in spaces:
        assert store.history(space) == fresh(store_url, space)
    assert store.histories.stats.incremental_reads > 0


def database_at(url: str, revision: str, *statements: str) -> str:
    """The database at ``url`` migrated only to ``revision``, holding what ``statements``
    insert."""
    engine = raw_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
    return url


def test_upgrade_from_0002_keeps_rows_readable(store_url: str) -> None:
    """A database written before revisions existed: its rows get revision 0 and are all
    read by the first (full) read; later writes are incremental."""
    url = database_at(store_url, "0002",
                      "INSERT INTO machines (space, name, machinetype, state, cloud_id,"
                      " processors, delete_reason, fault, address, updated_at) VALUES ('a',"
                      " 'vm-old', 'belle', 'running', 'id-old', 2, '', '', '', 1.0)")
    upgraded = Store(url)
    try:
        assert set(upgraded.history("a").machines) == {"vm-old"}
        assert upgraded.record_heartbeat("a", "vm-old", 99.0)
        assert upgraded.history("a").machines["vm-old"].heartbeat_at == 99.0
        assert upgraded.histories.stats.incremental_reads == 1
    finally:
        upgraded.close()


def test_upgrade_from_0003_turns_intents_into_machine_rows(store_url: str) -> None:
    """0004: an intent is a machine row in state 'intent'; an intent whose create was
    already answered (its machine has a row) is that row.  Downgrade gives them back."""
    url = database_at(store_url, "0003",
                      "INSERT INTO intents (space, name, machinetype, processors, hs06,"
                      " created_at) VALUES ('a', 'vm-new', 'belle', 4, 40.0, 10.0),"
                      " ('a', 'vm-answered', 'belle', 2, NULL, 11.0)",
                      "INSERT INTO machines (space, name, machinetype, state, cloud_id,"
                      " processors, delete_reason, fault, address, updated_at, rev) VALUES"
                      " ('a', 'vm-answered', 'belle', 'starting', 'id-1', 2, '', '', '', 12.0,"
                      " 0)")
    upgraded = Store(url)
    try:
        machines = upgraded.history("a").machines
        assert machines["vm-new"] == MachineRecord(
            space="a", name="vm-new", machinetype="belle", state=MachineState.INTENT,
            processors=4, hs06=40.0, created_at=10.0)
        assert machines["vm-answered"].state is MachineState.STARTING
        assert machines["vm-answered"].cloud_id == "id-1"
    finally:
        upgraded.close()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0003")
            intents = connection.exec_driver_sql(
                "SELECT name, processors, hs06, created_at FROM intents").all()
            states = connection.exec_driver_sql("SELECT name, state FROM machines").all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in intents] == [("vm-new", 4, 40.0, 10.0)]
    assert [tuple(row) for row in states] == [("vm-answered", "starting")]


def test_a_counter_below_what_was_seen_reads_as_restored(store_url: str) -> None:
    """The store going backwards (a restored file) is said once, even after forget()."""
    store = Store(store_url)
    try:
        store.apply("a", [running("vm-1")], {}, NOW)
        store.apply("a", [running("vm-2")], {}, NOW)
        assert not store.history("a").restored
        execute(store_url, "UPDATE space_revisions SET rev = 1 WHERE space = 'a'")
        store.histories.forget("a")
        assert store.history("a").restored
        assert not store.history("a").restored
    finally:
        store.close()
