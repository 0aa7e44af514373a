"""Space leases, fencing and spreading (store/leases.py, engine/leases.py) on a real SQLite
file and a real PostgreSQL server (``store_url``), and takeovers of a space by a second
daemon on one store and one simulated cloud.

The keepers are driven in-process with explicit rounds (no timing: a lease here lasts a
minute unless the test is about expiry, which polls the database's own clock)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudvac.clouds.factory import CloudFactory
from cloudvac.clouds.simpilots import StorePilots
from cloudvac.config import load_config_dir
from cloudvac.engine import observe
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.leases import LeaseKeeper
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.accounting import AccountingRecord, JobCounts
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.store.leases import Fence, LeaseLost, Presence, quota
from tests.integration.test_daemon import DyingAfterCreate, NeverCreates, config, intents

TTL = 60.0
DEADLINE_S = 60.0
"""Bound of a poll on the database's clock (a loaded machine is slow)."""
postgresql_only = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def owner_of(store: Store, space: str) -> tuple[str | None, int]:
    lease = next(lease for lease in store.lease_view().leases if lease.space == space)
    return lease.owner, lease.generation


def intent(space: str, name: str) -> MachineRecord:
    return MachineRecord(space, name, "belle", MachineState.INTENT, processors=1,
                         created_at=1000.0)


# --- the store ---------------------------------------------------------------------


def test_acquire_renew_release_on_the_database_clock(store: Store) -> None:
    store.announce("a", "host-a", 1, 0, 30.0)
    fence = store.acquire("s1", "a", TTL)
    assert fence == Fence("s1", "a", 1, TTL)
    view = store.lease_view("a")
    (lease,) = view.leases
    assert lease.owner == "a" and lease.generation == 1
    assert lease.renewed_at <= view.now < lease.expires_at <= lease.renewed_at + TTL + 1e-6
    assert store.acquire("s1", "a", TTL) is None  # held, unexpired, its owner asks
    assert store.renew("a", TTL) == {"s1": 1}
    assert store.lease_view().leases[0].renewed_at >= lease.renewed_at
    assert store.release(fence)
    assert owner_of(store, "s1") == (None, 1)
    assert not store.release(fence)
    again = store.acquire("s1", "a", TTL)
    assert again is not None and again.generation == 2  # every new owner: a new generation
    assert store.leave("a") == 1
    assert owner_of(store, "s1") == (None, 2)
    assert [i.instance for i in store.lease_view().instances] == []


def test_a_lease_expires_on_the_database_clock(store: Store) -> None:
    """Expiry makes a lease takeable, nothing more: its owner revives it at the same
    generation while nobody took it, and loses it (writes refused) once somebody did."""
    fence = store.acquire("s1", "a", 0.5)
    assert fence is not None
    deadline = time.monotonic() + DEADLINE_S
    while (view := store.lease_view()).now < view.leases[0].expires_at:  # not renewed
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.1)
    assert store.renew("a", 0.5) == {"s1": fence.generation}  # nobody took it: revived
    store.apply("s1", [intent("s1", "m1")], {}, 1000.0, fence)
    while (view := store.lease_view()).now < view.leases[0].expires_at:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.1)
    taken = store.acquire("s1", "b", TTL)  # expired: anyone may take it
    assert taken is not None and taken.generation == fence.generation + 1
    assert store.renew("a", 0.5) == {}
    with pytest.raises(LeaseLost):
        store.apply("s1", [intent("s1", "m2")], {}, 1000.0, fence)
    assert [m.name for m in store.machines("s1")] == ["m1"]


def test_a_fenced_write_after_a_takeover_is_refused_and_writes_nothing(store: Store) -> None:
    old = store.acquire("s1", "a", TTL)
    assert old is not None
    store.apply("s1", [intent("s1", "m1")], {}, 1000.0, old)  # the owner writes
    # "a" holds no presence lock (a dead process): "b" takes the space at once
    new = store.acquire("s1", "b", TTL)
    assert new is not None and new.generation == old.generation + 1
    with pytest.raises(LeaseLost):
        store.apply("s1", [intent("s1", "m2")], {"belle": 2000.0}, 1000.0, old)
    assert [m.name for m in store.machines("s1")] == ["m1"]
    assert store.last_aborts() == {}
    assert list(store.history("s1").machines) == ["m1"]
    record = AccountingRecord(
        space="s1", machine="m1", vm_uuid="u", machinetype="belle", vo="belle",
        dirac_site="", site="", processors=1, benchmark_per_processor=None,
        benchmark_source="", started_at=1.0, stopped_at=2.0, cpu_seconds=None,
        idle_seconds=None, shutdown_code=None, shutdown_text="", jobs=JobCounts(),
        fizzled=True)
    with pytest.raises(LeaseLost):
        store.record_accounting_fenced(old, [record], 3.0)
    assert store.accounting() == []
    store.apply("s1", [intent("s1", "m2")], {}, 1000.0, new)  # the new owner writes
    assert store.record_accounting_fenced(new, [record], 3.0) == 1


@postgresql_only
def test_a_present_owner_keeps_its_lease_until_expiry_and_loses_it_when_it_dies(
        store: Store, store_url: str) -> None:
    """PostgreSQL: an owner holding its presence lock keeps its spaces while the lease runs
    (a stopped process); the moment its lock goes (kill -9: the server drops the session),
    its spaces are free at once, long before the lease expires."""
    presence = Presence(store_url)
    try:
        store.announce("a", "host-a", 1, presence.ensure(), 30.0)
        assert store.acquire("s1", "a", TTL) is not None
        assert store.lease_view().present() == {"a"}
        assert store.acquire("s1", "b", TTL) is None
        short = store.acquire("s2", "a", 0.3)  # a stopped owner: its lease runs out
        assert short is not None
        deadline = time.monotonic() + DEADLINE_S
        while store.acquire("s2", "b", TTL) is None:
            assert time.monotonic() < deadline, "an expired lease was never taken"
            time.sleep(0.1)
    finally:
        presence.close()
    # the server ends the session a moment after the client went: poll, far within the TTL
    gone = time.monotonic()
    while (taken := store.acquire("s1", "b", TTL)) is None:
        assert time.monotonic() < gone + TTL / 2, "a dead owner's lease was not freed"
        time.sleep(0.05)
    assert taken.generation == 2 and store.lease_view().present() == set()


CHILD = """
import sys, json
from cloudvac.store import Store
store = Store(sys.argv[1])
me, spaces = sys.argv[2], sys.argv[3].split(",")
print("ready", flush=True)
sys.stdin.readline()
got = []
for _ in range(int(sys.argv[4])):
    for space in spaces:
        fence = store.acquire(space, me, 60.0)
        if fence is not None:
            got.append([space, fence.generation])
store.close()
print(json.dumps(got), flush=True)
"""


def test_concurrent_acquires_from_processes_never_give_a_generation_two_owners(
        store: Store, store_url: str) -> None:
    """Four processes take the same spaces over and over (none is present, so each may
    take from the others): every (space, generation) has exactly one owner, and the
    generations of a space are 1..n without a gap."""
    import json

    spaces = ["s1", "s2", "s3"]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, store_url, f"p{i}",
                               ",".join(spaces), "15"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for i in range(4)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [json.loads(proc.communicate(timeout=300)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    taken = Counter((space, gen) for got in outputs for space, gen in got)
    assert taken and max(taken.values()) == 1
    for space in spaces:
        generations = sorted(gen for s, gen in taken if s == space)
        assert generations == list(range(1, len(generations) + 1))
        assert owner_of(store, space)[1] == len(generations)


# --- spreading ---------------------------------------------------------------------


def test_quota_spreads_within_one() -> None:
    for spaces in range(0, 12):
        for n in range(1, 5):
            quotas = [quota(rank, n, spaces) for rank in range(n)]
            assert sum(quotas) == spaces and max(quotas) - min(quotas) <= 1


def owned(keepers: list[LeaseKeeper]) -> list[int]:
    return [len(k.owned()) for k in keepers]


def rounds(keepers: list[LeaseKeeper], spaces: list[str], n: int) -> None:
    for _ in range(n):
        for keeper in keepers:
            keeper.round(spaces)


@postgresql_only
def test_three_keepers_spread_within_one_and_rebalance_when_one_leaves_or_dies(
        store: Store, store_url: str) -> None:
    spaces = [f"s{i:02d}" for i in range(10)]
    keepers = [LeaseKeeper(Store(store_url), lambda: 30.0, time.monotonic,
                           Presence(store_url)) for _ in range(3)]
    try:
        rounds(keepers, spaces, 2)
        counts = owned(keepers)
        assert sorted(counts) == [3, 3, 4], counts
        assert set().union(*(k.owned() for k in keepers)) == set(spaces)
        assert {lease.owner for lease in store.lease_view().leases} == \
            {k.instance for k in keepers}
        keepers[2].leave()  # graceful stop: its leases are released at once
        rounds(keepers[:2], spaces, 2)
        assert owned(keepers[:2]) == [5, 5]
        # kill -9 of one of the two: its presence lock goes with its connection; the
        # other takes all within one round, while the leases still run for a minute
        assert keepers[1].presence is not None
        keepers[1].presence.close()
        killed = time.monotonic()
        while owned(keepers[:1]) != [10]:  # a round or two: the server ends the session
            assert time.monotonic() < killed + TTL / 2, owned(keepers[:1])
            rounds(keepers[:1], spaces, 1)
            time.sleep(0.05)
        assert {lease.owner for lease in store.lease_view().leases} == {keepers[0].instance}
    finally:
        for keeper in keepers:
            if keeper.presence is not None:
                keeper.presence.close()
            keeper.store.close()


def test_a_busy_space_is_not_released(store: Store, store_url: str) -> None:
    """Rebalancing releases only spaces not in the middle of a cycle."""
    a = LeaseKeeper(store, lambda: 30.0, time.monotonic)
    a.round(["s1", "s2"])
    assert a.owned() == {"s1", "s2"}
    tenures = [a.begin("s1"), a.begin("s2")]
    assert all(t is not None and t.valid() for t in tenures)
    assert a._release_extras(0) == []  # both busy
    a.end("s2")
    assert a._release_extras(0) == ["s2"]
    assert a.owned() == {"s1"}
    assert a.begin("s2") is None  # not owned: its cycle must not run
    # s1 was marked to go when it was busy: once its cycle ends it starts no other, and
    # the next round releases it (a space cycling back to back is never idle at a round)
    a.end("s1")
    assert a.begin("s1") is None
    assert a._release_extras(0) == ["s1"]
    assert {lease.owner for lease in store.lease_view().leases} == {None}


# --- takeover by a second daemon -----------------------------------------------------


def daemon_with_keeper(cdir: Path, store: Store) -> Daemon:
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    metrics = EngineMetrics()
    keeper = LeaseKeeper(store, lambda: 30.0, time.monotonic)  # no presence: dies at once
    return Daemon(ConfigSource(cdir), loaded.settings, CycleTools(store, metrics),
                  CloudFactory(metrics, StorePilots(store)), 50, keeper)


def test_takeover_after_a_kill_between_create_and_record_creates_no_duplicate(
        tmp_path: Path, store: Store) -> None:
    """Instance A is killed between the cloud's answer and its record; instance B takes the
    space over (A is not present) and adopts A's machines: the space holds its limit,
    every name once, no intent left, and A's fence is refused from then on."""
    cdir = config(tmp_path, {"a.example": {}})
    first = daemon_with_keeper(cdir, store)
    real_get = first.clouds.get
    first.clouds.get = lambda space, settings: DyingAfterCreate(real_get(space, settings))  # type: ignore
    asyncio.run(first.run(cycles=1))
    project = first.clouds.project("a.example")
    assert project is not None and len(project.servers) >= 1 and intents(store, "a.example")
    assert first.keeper is not None
    # graceful-stop released the lease; a kill -9 would not: take it back as a dead owner's
    stale = store.acquire("a.example", first.keeper.instance, TTL)
    assert stale is not None
    second = daemon_with_keeper(cdir, store)
    second.clouds.use_project("a.example", project)
    asyncio.run(second.run(cycles=3))
    names = [s.name for s in project.servers.values()]
    assert len(names) == len(set(names)) == 4
    assert intents(store, "a.example") == []
    with pytest.raises(LeaseLost):
        store.apply("a.example", [intent("a.example", "late")], {}, 1000.0, stale)


def test_takeover_settles_the_intents_of_the_previous_owner(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instance A dies after recording intents, before asking the cloud.  B, which owns
    the space from then on, looks each up by name and frees them (never forgets one while
    it is young, never creates beside one the cloud has), then fills the space."""
    cdir = config(tmp_path, {"a.example": {"intent": 3600}})
    first = daemon_with_keeper(cdir, store)
    real_get = first.clouds.get
    first.clouds.get = lambda space, settings: NeverCreates(real_get(space, settings))  # type: ignore
    asyncio.run(first.run(cycles=1))
    assert len(intents(store, "a.example")) == 4
    project = first.clouds.project("a.example")
    assert project is not None
    young = daemon_with_keeper(cdir, store)  # intents still young: they hold the capacity
    young.clouds.use_project("a.example", project)
    asyncio.run(young.run(cycles=1))
    assert len(project.servers) == 0 and len(intents(store, "a.example")) == 4
    monkeypatch.setattr(observe, "LOOKUP_AFTER_SECONDS", 0.0)
    second = daemon_with_keeper(cdir, store)
    second.clouds.use_project("a.example", project)
    asyncio.run(second.run(cycles=1))
    assert project.calls["lookup"] == 4
    assert len(project.servers) == 4
    forgotten = [e for e in store.events("a.example") if e.kind == "intent-expired"]
    assert len(forgotten) == 4
    assert owner_of(store, "a.example")[1] == 3  # three owners one after the other


# --- status ------------------------------------------------------------------------


def test_status_shows_the_owner_of_each_space_and_each_instances_last_renewal(
        tmp_path: Path, store: Store, store_url: str) -> None:
    import json

    from typer.testing import CliRunner

    from cloudvac.cli import app

    cdir = config(tmp_path, {"a.example": {}, "b.example": {}})
    settings = cdir / "00-settings.conf"
    settings.write_text(settings.read_text() + f"database = {store_url}\n")
    store.announce("inst-a", "host-a", 4242, 0, 30.0)
    store.announce("inst-b", "host-b", 4343, 0, 30.0)
    assert store.acquire("a.example", "inst-a", TTL) is not None
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--json", "--config-dir", str(cdir)])
    assert result.exit_code == 0, result.output
    rows = {r["space"]: r for r in json.loads(result.stdout)}
    assert rows["a.example"]["owner"] == "inst-a"
    assert rows["a.example"]["owner_host"] == "host-a pid 4242"
    assert rows["a.example"]["owner_renewed_at"] is not None
    assert rows["b.example"]["owner"] == ""
    result = runner.invoke(app, ["status", "--instances", "--json", "--config-dir", str(cdir)])
    assert result.exit_code == 0, result.output
    shown = {i["instance"]: i for i in json.loads(result.stdout)}
    assert shown["inst-a"]["spaces"] == ["a.example"] and shown["inst-b"]["spaces"] == []
    assert all(0 <= i["renewed_seconds_ago"] < DEADLINE_S for i in shown.values())
    table = runner.invoke(app, ["status", "--config-dir", str(cdir)])
    assert table.exit_code == 0 and "inst-a" in table.stdout and "host-b" in table.stdout


def test_a_take_on_a_stale_view_fails(store: Store) -> None:
    """Two instances saw a dead owner's lease at generation 1; the first to take it wins,
    and the second's take (its view is stale) fails even though the winner is not present
    in the second's statement snapshot (no presence locks here: nobody is)."""
    first = store.acquire("s1", "dead", TTL)
    assert first is not None and first.generation == 1
    winner = store.acquire("s1", "c", TTL, seen=1)
    assert winner is not None and winner.generation == 2
    assert store.acquire("s1", "b", TTL, seen=1) is None
    assert store.lease_view().leases[0].owner == "c"
    again = store.acquire("s1", "b", TTL, seen=2)  # a fresh view: c is not present either
    assert again is not None and again.generation == 3
