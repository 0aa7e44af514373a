"""What the web side asks the store per request is answered by indexed queries, and its
machine cache stays bounded."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.web.context import MachineCache
from tests.integration.webserver import SPACE, web_server
from tests.integration.webserver import test_space as space_with

S = MachineState
NOW = 1_800_000_000.0
WAIT = 60.0  # upper bound of a poll on a loaded machine; polls end as soon as they can


def machine(name: str, mt: str = "squid", state: S = S.RUNNING,
            address: str = "") -> MachineRecord:
    return MachineRecord(space="a", name=name, machinetype=mt, state=state, cloud_id=name,
                         address=address or f"10.0.0.{len(name)}", created_at=NOW - 500,
                         started_at=NOW - 400)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    s.close()


def test_heartbeating_lists_running_machines_of_one_machinetype_newest_first(
        store: Store) -> None:
    rows = [machine("old"), machine("new"), machine("never"), machine("stopped", state=S.STOPPED),
            machine("other", mt="belle"), machine("silent")]
    store.apply("a", rows, {}, NOW)
    store.record_heartbeats({("a", "old"): NOW - 100, ("a", "new"): NOW - 10,
                             ("a", "stopped"): NOW - 5, ("a", "other"): NOW - 5,
                             ("a", "silent"): NOW - 1000})
    found = store.heartbeating("a", "squid", NOW - 300)
    assert [(m.name, m.heartbeat_at) for m in found] == [("new", NOW - 10), ("old", NOW - 100)]
    assert store.heartbeating("b", "squid", 0.0) == []


def plan_of(db: Path, sql: str, *args: object) -> str:
    with sqlite3.connect(db) as raw:
        return " ".join(str(row[-1]) for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_heartbeat_and_drain_queries_use_an_index(store: Store, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    beating = plan_of(db, "SELECT name FROM machines WHERE space = ? AND machinetype = ? "
                          "AND heartbeat_at >= ? AND state = 'running' "
                          "ORDER BY heartbeat_at DESC", "a", "squid", 0.0)
    assert "ix_machines_space_machinetype_heartbeat_at" in beating
    drained = plan_of(db, "SELECT machinetype FROM drains WHERE space = ?", "a")
    assert "USING" in drained and "INDEX" in drained  # the primary key's index, not a scan


def test_drained_answers_one_space(store: Store) -> None:
    store.set_drain("a", "belle", True)
    store.set_drain("a", "*", True)
    store.set_drain("b", "t2k", True)
    assert store.drained("a") == frozenset({"belle", "*"})
    store.set_drain("a", "*", False)
    assert store.drained("a") == frozenset({"belle"})
    assert store.drained("c") == frozenset()


def test_machine_cache_keeps_the_most_recently_used_and_stays_bounded(store: Store) -> None:
    store.apply("a", [machine(f"m{i}") for i in range(5)], {}, NOW)
    cache = MachineCache(store, seconds=3600, size=3)

    async def scenario() -> list[str | None]:
        seen = []
        for name in ["m0", "m1", "m2", "m0", "m3", "m4", "m0"]:
            record = await cache.get("a", name)
            seen.append(record.name if record else None)
        return seen

    assert asyncio.run(scenario()) == ["m0", "m1", "m2", "m0", "m3", "m4", "m0"]
    assert len(cache) == 3
    assert list(cache._entries) == [("a", "m3"), ("a", "m4"), ("a", "m0")]  # m0 kept: used


def test_machine_cache_entries_expire(store: Store) -> None:
    store.apply("a", [machine("m0")], {}, NOW)
    cache = MachineCache(store, seconds=0.0, size=10)
    first = asyncio.run(cache.get("a", "m0"))
    store.apply("a", [replace(machine("m0"), state=S.STOPPED)], {}, NOW)
    second = asyncio.run(cache.get("a", "m0"))
    assert first is not None and second is not None and second.state is S.STOPPED


def test_machine_cache_reads_the_misses_of_many_requests_together(store: Store) -> None:
    store.apply("a", [machine(f"m{i}") for i in range(1200)], {}, NOW)
    cache = MachineCache(store, seconds=3600)
    names = [f"m{i}" for i in range(1200)] + ["ghost"]

    async def scenario() -> list[MachineRecord | None]:
        return await asyncio.gather(*(cache.get("a", name) for name in names),
                                    cache.get("b", "m1"), cache.get("a", "m7"))

    found = asyncio.run(scenario())
    assert [r.name if r else None for r in found] == [*names[:-1], None, None, "m7"]
    assert cache.reads == 1, "one read for every miss asked together (chunks of names)"
    assert asyncio.run(scenario()) == found and cache.reads == 1  # all kept, unknown too


def test_a_failing_machine_lookup_fails_every_waiter_and_the_next_one_reads_again(
        store: Store, tmp_path: Path) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    store.apply("a", [machine("m0"), machine("m1")], {}, NOW)
    cache = MachineCache(store, seconds=3600)

    async def both() -> list[MachineRecord | BaseException | None]:
        return list(await asyncio.gather(cache.get("a", "m0"), cache.get("a", "m1"),
                                         return_exceptions=True))

    with sqlite3.connect(tmp_path / "db.sqlite") as raw:
        raw.execute("ALTER TABLE machines RENAME TO machines_away")
    failed = asyncio.run(both())
    assert all(isinstance(f, SQLAlchemyError) for f in failed), failed
    with sqlite3.connect(tmp_path / "db.sqlite") as raw:
        raw.execute("ALTER TABLE machines_away RENAME TO machines")
    found = asyncio.run(both())
    assert [r.name for r in found if isinstance(r, MachineRecord)] == ["m0", "m1"]
    assert cache.reads == 2


def test_a_live_machine_is_kept_past_the_lookup_time_until_it_ends(store_url: str) -> None:
    """``alive`` trusts a lookup of a live machine beyond ``seconds`` while the space's
    ends are read; a heartbeat (a write too) does not drop it, the machine's end does.
    On both backends."""
    store = Store(store_url)
    store.apply("a", [machine("m0"), machine("m1")], {}, NOW)
    cache = MachineCache(store, seconds=0.5)

    async def scenario() -> list[object]:
        assert await cache.get("a", "m0") is not None and await cache.get("a", "m1")
        seen: list[object] = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and cache.peek("a", "m0")[0]:
            seen.append(cache.alive("a", "m0"))  # (each call reads ends when due)
            await asyncio.sleep(0.05)
        store.record_heartbeats({("a", "m0"): NOW + 1, ("a", "m1"): NOW + 1})
        until = time.monotonic() + 2.0  # ends read meanwhile: nothing ended
        while time.monotonic() < until:
            seen.append(cache.alive("a", "m0"))
            await asyncio.sleep(0.05)
        store.apply("a", [replace(machine("m0"), state=S.STOPPED, stopped_at=NOW)], {}, NOW)
        while time.monotonic() < deadline and cache.alive("a", "m0") is not None:
            await asyncio.sleep(0.05)
        return [seen, cache.peek("a", "m1"), cache.alive("a", "m0"), cache.alive("a", "m1")]

    try:
        seen, peeked, ended, other = asyncio.run(scenario())
    finally:
        store.close()
    assert isinstance(seen, list) and all(isinstance(r, MachineRecord) for r in seen)
    assert peeked == (False, None), "past the lookup time, yet alive() keeps it"
    assert ended is None, "its end was read"
    assert isinstance(other, MachineRecord) and cache.reads == 2


def test_the_ends_of_every_space_are_read_together(store: Store) -> None:
    for space in ("a", "b"):
        store.apply(space, [replace(machine(n), space=space) for n in ("m0", "m1")], {}, NOW)
    cache = MachineCache(store, seconds=3600)

    async def scenario() -> list[object]:
        for space in ("a", "b"):
            for name in ("m0", "m1"):
                assert await cache.get(space, name) is not None
        for space in ("a", "b"):
            store.apply(space, [replace(machine("m1"), space=space, state=S.FAILED,
                                        stopped_at=NOW)], {}, NOW)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and (cache.alive("a", "m1") or cache.alive("b", "m1")):
            await asyncio.sleep(0.05)
        return [cache.alive(space, name) for space in ("a", "b") for name in ("m0", "m1")]

    found = asyncio.run(scenario())
    assert [r is not None for r in found] == [True, False, True, False]


def test_heartbeat_list_horizon_is_its_own_option(tmp_path: Path) -> None:
    """heartbeat_seconds (the staleness limit) is 600 here, but the list shows only VMs
    that beat within heartbeat_list_seconds."""
    with web_server(tmp_path, space_with(heartbeat_list_seconds=30)) as web:
        web.add_machine("cloudvac-x-belle-fresh")
        web.add_machine("cloudvac-x-belle-older")
        web.store.record_heartbeats({(SPACE, "cloudvac-x-belle-fresh"): time.time() - 5,
                                     (SPACE, "cloudvac-x-belle-older"): time.time() - 120})
        own = {"Authorization": f"Bearer {web.token('cloudvac-x-belle-fresh')}"}
        listed = httpx.get(f"{web.url}/heartbeatlists/{SPACE}/belle",
                           headers=own).text.split()
    assert "cloudvac-x-belle-fresh" in listed and "cloudvac-x-belle-older" not in listed


def test_a_shutdown_message_wakes_its_space(tmp_path: Path) -> None:
    """The slot of a VM that says it ended is refilled soon: the upload wakes the engine."""
    with web_server(tmp_path) as web:
        woken: list[str] = []
        web.context.wake = woken.append
        name = "cloudvac-x-belle-ending"
        web.add_machine(name)
        response = httpx.put(f"{web.url}/machines/{SPACE}/{name}/joboutputs/shutdown_message",
                             content=b"200 Success\n",
                             headers={"Authorization": f"Bearer {web.token(name)}"})
        bad = httpx.put(f"{web.url}/machines/{SPACE}/{name}/joboutputs/shutdown_message",
                        content=b"not a code\n",
                        headers={"Authorization": f"Bearer {web.token(name)}"})
    assert response.status_code == 204 and bad.status_code == 400
    assert woken == [SPACE]
