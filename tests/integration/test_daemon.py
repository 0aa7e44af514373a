"""Cycle and daemon against the sim cloud and a real SQLite store (real time, short cycles)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from cloudvac.clouds.factory import CloudFactory
from cloudvac.config import load_config_dir
from cloudvac.config.models import SimMachinetype
from cloudvac.engine import observe
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.cycle import SpaceCycle
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.cloud import Cloud, Flavor, Limits, MachineSpec, ObservedMachine
from cloudvac.model.states import MachineState
from cloudvac.service import build_daemon
from cloudvac.store import Store

SPACE = """\
[space {name}]
api = sim
processors_limit = {limit}
creation_burst_processors = {limit}
flavor_names = m1.small
intent_seconds = {intent}
sim_boot_seconds = 0.2
sim_api_latency_seconds = {latency}
sim_seed = 3
{extra}
[machinetype {name} belle]
target_share = 1
sim_job_seconds = 100
"""
SETTINGS = "[settings]\ncycle_seconds = 0.3\nspace_timeout_seconds = {timeout}\n"


def config(tmp_path: Path, spaces: dict[str, dict[str, object]], timeout: float = 5) -> Path:
    cdir = tmp_path / "conf"
    cdir.mkdir(exist_ok=True)
    (cdir / "00-settings.conf").write_text(SETTINGS.format(timeout=timeout))
    for name, opts in spaces.items():
        values = {"limit": 4, "latency": 0, "intent": 600, "extra": "", **opts}
        (cdir / f"10-{name}.conf").write_text(SPACE.format(name=name, **values))
    return cdir


def make_daemon(cdir: Path, store: Store) -> Daemon:
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    return build_daemon(cdir, loaded.settings, store, keep_reports=50)


def intents(store: Store, space: str) -> list[str]:
    """Machines of ``space`` whose create is recorded but not yet listed."""
    return [m.name for m in store.machines(space) if m.state is MachineState.INTENT]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    s.close()


def live(store: Store, space: str) -> list[str]:
    return [m.name for m in store.machines(space) if m.state is not MachineState.GONE]


def test_cycles_fill_space_to_limit_and_record(tmp_path: Path, store: Store) -> None:
    daemon = make_daemon(config(tmp_path, {"a.example": {}}), store)
    asyncio.run(daemon.run(cycles=4))
    project = daemon.clouds.project("a.example")
    assert project is not None and len(project.servers) == 4
    machines = store.machines("a.example")
    assert {m.state for m in machines} == {MachineState.RUNNING}
    assert all(m.heartbeat_at is not None for m in machines)
    reports = daemon.spaces["a.example"].reports
    assert all(r.ok for r in reports) and sum(r.created for r in reports) == 4


def test_full_space_skips_the_limits_call(tmp_path: Path, store: Store) -> None:
    """Once the listed machines hold processors_limit, nothing can be created whatever
    the quota says: the cycle does not ask for limits, and says which limit blocks."""
    daemon = make_daemon(config(tmp_path, {"a.example": {}}), store)
    asyncio.run(daemon.run(cycles=6))
    project = daemon.clouds.project("a.example")
    assert project is not None
    reports = daemon.spaces["a.example"].reports
    full = [r for r in reports if r.listed == 4]
    assert full, "the space filled"
    assert project.calls["limits"] == len(reports) - len(full) >= 1
    assert {r.status["belle"].blocked for r in full} == {"space processors_limit reached"}


@pytest.mark.parametrize("reread_seconds", [600, 0])
def test_quota_bound_space_rereads_limits_only_when_they_can_have_changed(
        tmp_path: Path, store: Store, reread_seconds: int) -> None:
    """A space filled to its cloud quota (not to processors_limit) reads limits again only
    when its own usage changes or the last answer is quota_reread_seconds old."""
    cdir = config(tmp_path, {"a.example": {
        "limit": 100,
        "extra": f"sim_quota_processors = 4\nquota_reread_seconds = {reread_seconds}"}})
    daemon = make_daemon(cdir, store)
    asyncio.run(daemon.run(cycles=6))
    project = daemon.clouds.project("a.example")
    assert project is not None and len(project.servers) == 4
    reports = daemon.spaces["a.example"].reports
    assert [r.listed for r in reports] == [0, 4, 4, 4, 4, 4]
    # cycle 1 creates (room), cycle 2 sees its own usage change and finds no room
    expected = 2 if reread_seconds else len(reports)
    assert project.calls["limits"] == expected
    assert {r.status["belle"].blocked for r in reports[1:]} == {"cloud quota: no free cores"}


class ExplodingCloud:
    """A cloud whose adapter has a bug: every call raises a non-CloudError."""

    async def list_machines(self) -> Sequence[ObservedMachine]:
        raise RuntimeError("adapter bug")

    async def create_machine(self, spec: MachineSpec) -> str:
        raise RuntimeError("adapter bug")

    async def delete_machine(self, cloud_id: str) -> None:
        raise RuntimeError("adapter bug")

    async def find_machine(self, name: str) -> ObservedMachine | None:
        raise RuntimeError("adapter bug")

    async def limits(self) -> Limits:
        raise RuntimeError("adapter bug")

    async def flavor(self, names: Sequence[str], lo: int, hi: int | None) -> Flavor:
        raise RuntimeError("adapter bug")

    async def close(self) -> None:
        return None


def test_raising_and_hanging_spaces_do_not_stop_others(tmp_path: Path, store: Store) -> None:
    cdir = config(tmp_path, {"good.example": {}, "bad.example": {},
                             "slow.example": {"latency": 30}}, timeout=0.5)
    daemon = make_daemon(cdir, store)
    real_get = daemon.clouds.get

    def get(space, settings):  # type: ignore[no-untyped-def]
        return ExplodingCloud() if space.name == "bad.example" else real_get(space, settings)

    daemon.clouds.get = get  # type: ignore[method-assign]
    assert isinstance(ExplodingCloud(), Cloud)
    asyncio.run(daemon.run(cycles=3))
    good = daemon.spaces["good.example"].reports
    bad = daemon.spaces["bad.example"].reports
    slow = daemon.spaces["slow.example"].reports
    assert all(r.ok for r in good) and len(live(store, "good.example")) == 4
    assert len(bad) == 3 and all("RuntimeError: adapter bug" in r.error for r in bad)
    assert len(slow) == 3 and all("space_timeout_seconds" in r.error for r in slow)
    errors = [e for e in store.events("bad.example") if e.kind == "error"]
    assert errors and "adapter bug" in errors[0].message


def test_restart_adopts_existing_machines_even_with_a_lost_store(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {}})
    first = Store(f"sqlite:///{tmp_path / 'one.sqlite'}")
    daemon = make_daemon(cdir, first)
    asyncio.run(daemon.run(cycles=3))
    project = daemon.clouds.project("a.example")
    assert project is not None and len(project.servers) == 4
    first.close()

    second = Store(f"sqlite:///{tmp_path / 'two.sqlite'}")  # the store is lost
    restarted = make_daemon(cdir, second)
    restarted.clouds.use_project("a.example", project)
    asyncio.run(restarted.run(cycles=2))
    assert len(project.servers) == 4  # nothing created on top
    adopted = [e for e in second.events("a.example") if e.kind == "listed"]
    assert len(adopted) == 4 and all("adopted" in e.message for e in adopted)
    assert sorted(live(second, "a.example")) == sorted(s.name for s in project.servers.values())
    second.close()


class Wrapping:
    """Forwards everything to the wrapped cloud; subclasses replace one call."""

    def __init__(self, inner: Cloud) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class Dying(Wrapping):
    """The manager 'dies' in the middle of its cycle's creates: every one of the cycle's
    CREATES calls gets this far before any of them dies.  (``run(cycles=1)`` returns as
    soon as its dead space task ends and releases its lease; a create still on its way
    would then never start, which is a different scenario from the one named.)"""

    CREATES = 4  # processors_limit = creation_burst_processors = 4, m1.small

    def __init__(self, inner: Cloud) -> None:
        super().__init__(inner)
        self.arrived = 0
        self.all_arrived = asyncio.Event()

    async def die_together(self) -> NoReturn:
        self.arrived += 1
        if self.arrived >= self.CREATES:
            self.all_arrived.set()
        await self.all_arrived.wait()
        raise asyncio.CancelledError


class DyingAfterCreate(Dying):
    """The creates reach the cloud, then the manager 'dies' before recording them."""

    async def create_machine(self, spec: MachineSpec) -> str:
        await self.inner.create_machine(spec)
        await self.die_together()  # killed between the cloud's answer and our record


def test_kill_between_create_and_record_leaves_no_duplicate(tmp_path: Path,
                                                           store: Store) -> None:
    cdir = config(tmp_path, {"a.example": {}})
    daemon = make_daemon(cdir, store)
    real_get = daemon.clouds.get
    daemon.clouds.get = lambda space, settings: DyingAfterCreate(real_get(space, settings))  # type: ignore
    asyncio.run(daemon.run(cycles=1))  # the space task dies mid-cycle, the daemon survives
    assert daemon.spaces["a.example"].task is not None
    assert daemon.spaces["a.example"].task.cancelled()
    project = daemon.clouds.project("a.example")
    assert project is not None and len(project.servers) >= 1
    assert intents(store, "a.example")  # the intents survived the kill
    created_before = len(project.servers)

    restarted = make_daemon(cdir, store)
    restarted.clouds.use_project("a.example", project)
    asyncio.run(restarted.run(cycles=3))
    names = [s.name for s in project.servers.values()]
    assert len(names) == len(set(names)) == 4
    assert created_before <= 4
    assert intents(store, "a.example") == []


class NeverCreates(Dying):
    """The manager dies after recording the intents but before the create calls."""

    async def create_machine(self, spec: MachineSpec) -> str:
        await self.die_together()


def test_intent_without_create_holds_capacity_until_it_expires(tmp_path: Path,
                                                               store: Store) -> None:
    cdir = config(tmp_path, {"a.example": {"intent": 1}})
    daemon = make_daemon(cdir, store)
    real_get = daemon.clouds.get
    daemon.clouds.get = lambda space, settings: NeverCreates(real_get(space, settings))  # type: ignore
    asyncio.run(daemon.run(cycles=1))
    assert intents(store, "a.example")
    restarted = make_daemon(cdir, store)
    asyncio.run(restarted.run(cycles=1))  # intents still young: nothing new
    project = restarted.clouds.project("a.example")
    assert project is not None and len(project.servers) == 0
    asyncio.run(asyncio.sleep(1.1))
    again = make_daemon(cdir, store)
    again.clouds.use_project("a.example", project)
    asyncio.run(again.run(cycles=2))
    assert len(project.servers) == 4
    expired = [e for e in store.events("a.example") if e.kind == "intent-expired"]
    assert expired


def test_bad_edit_keeps_last_good_config(tmp_path: Path, store: Store) -> None:
    cdir = config(tmp_path, {"a.example": {}, "b.example": {}})

    async def scenario() -> Daemon:
        daemon = make_daemon(cdir, store)
        runner = asyncio.create_task(daemon.run())
        await asyncio.sleep(1.0)
        (cdir / "10-a.example.conf").write_text("[space a.example]\napi = sim\n"
                                                 "processors_limit = nope\n")
        await asyncio.sleep(1.0)
        state = daemon.spaces["a.example"]
        assert not state.config_ok and state.config.processors_limit == 4
        cycles_before = state.cycles
        await asyncio.sleep(1.0)
        assert daemon.spaces["a.example"].cycles > cycles_before  # still cycling
        daemon.stop()
        await asyncio.wait_for(runner, 10)
        return daemon

    daemon = asyncio.run(scenario())
    assert daemon.last_load is not None
    assert any(i.option == "processors_limit" for i in daemon.last_load.issues)
    assert len(live(store, "b.example")) == 4


def test_quota_refusal_is_an_error_event_not_a_backoff(tmp_path: Path, store: Store) -> None:
    cdir = config(tmp_path, {"a.example": {"limit": 8, "extra": "sim_quota_processors = 2"}})
    daemon = make_daemon(cdir, store)
    # The planner sees free cores from limits(), so make limits() lie to force a refusal.
    real_get = daemon.clouds.get

    class Lying(Wrapping):
        async def limits(self) -> Limits:
            return Limits()

    daemon.clouds.get = lambda space, settings: Lying(real_get(space, settings))  # type: ignore
    asyncio.run(daemon.run(cycles=2))
    project = daemon.clouds.project("a.example")
    assert project is not None
    assert store.last_aborts() == {}
    errors = [e.message for e in store.events("a.example") if e.kind == "error"]
    assert errors and all("QuotaExceeded" in m for m in errors)
    assert len(project.servers) <= 2
    assert intents(store, "a.example") == []


def test_quota_is_reread_every_quota_reread_seconds_while_full(tmp_path: Path,
                                                                store: Store) -> None:
    """With a virtual clock: the quota answer that left no room is reused for exactly
    quota_reread_seconds while the space's own usage stays the same."""

    cdir = config(tmp_path, {"a.example": {
        "limit": 100, "extra": "sim_quota_processors = 4\nquota_reread_seconds = 250"}})
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    space = loaded.spaces["a.example"]
    long_pilots = SimMachinetype(job_seconds=86400.0, heartbeat_period_seconds=3600.0)
    space = space.model_copy(update={"machinetypes": {"belle": space.machinetypes[
        "belle"].model_copy(update={"sim": long_pilots})}})  # usage stays the same
    now = [1_000.0]
    metrics = EngineMetrics()
    factory = CloudFactory(metrics, clock=lambda: now[0])
    settings = loaded.settings

    async def cycles() -> list[int]:
        cycle = SpaceCycle(factory.get(space, settings), settings,
                           CycleTools(store, metrics, clock=lambda: now[0],
                                      monotonic=lambda: now[0]))
        project = factory.project("a.example")
        assert project is not None
        reads = []
        for _ in range(8):  # t = 1000, 1100, ..., 1700
            before = project.calls.get("limits", 0)
            assert (await cycle.run(space)).ok
            reads.append(project.calls.get("limits", 0) - before)
            now[0] += 100.0
        return reads

    # read (room, creates 4), read (usage changed, full), reuse, reuse, read (300 s
    # >= 250 s), reuse, reuse, read
    assert asyncio.run(cycles()) == [1, 1, 0, 0, 1, 0, 0, 1]


def test_a_backward_wall_clock_step_never_freezes_a_space(tmp_path: Path, store: Store) -> None:
    """The wall clock jumps an hour back after the first cycle: cycles go on at their
    period, because every delay is measured on the monotonic clock."""
    cdir = config(tmp_path, {"a.example": {}})
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None
    calls = [0]

    def stepping() -> float:
        calls[0] += 1
        return time.time() - (3600.0 if calls[0] > 5 else 0.0)

    metrics = EngineMetrics()
    tools = CycleTools(store, metrics, clock=stepping)
    daemon = Daemon(ConfigSource(cdir), loaded.settings, tools, CloudFactory(metrics))

    async def scenario() -> int:
        runner = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        while daemon.spaces.get("a.example") is None or daemon.spaces["a.example"].cycles < 6:
            assert time.monotonic() < deadline, "the space stopped cycling"
            await asyncio.sleep(0.1)
        daemon.stop()
        await asyncio.wait_for(runner, 30)
        return daemon.spaces["a.example"].cycles

    assert asyncio.run(scenario()) >= 6
    assert calls[0] > 5  # the step did happen


def test_intents_left_by_a_dead_manager_are_looked_up_and_freed(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manager dies after recording its intents, before asking the cloud.  The next one
    looks each up by name once they are old enough for any create to have been answered,
    frees those the cloud has none of at once (not after intent_seconds), and fills the
    space in the same cycle."""
    cdir = config(tmp_path, {"a.example": {"intent": 3600}})
    daemon = make_daemon(cdir, store)
    real_get = daemon.clouds.get
    daemon.clouds.get = lambda space, settings: NeverCreates(real_get(space, settings))  # type: ignore
    asyncio.run(daemon.run(cycles=1))
    assert len(intents(store, "a.example")) == 4
    monkeypatch.setattr(observe, "LOOKUP_AFTER_SECONDS", 0.0)
    restarted = make_daemon(cdir, store)
    asyncio.run(restarted.run(cycles=1))
    project = restarted.clouds.project("a.example")
    assert project is not None and project.calls["lookup"] == 4
    assert len(project.servers) == 4  # created in the first cycle after the restart
    forgotten = [e for e in store.events("a.example") if e.kind == "intent-expired"]
    assert len(forgotten) == 4 and all("never reached" in e.message for e in forgotten)


def test_a_wake_brings_the_next_cycle_forward_taking_its_slot(tmp_path: Path,
                                                                 store: Store) -> None:
    """cycle_seconds is 30 here: a wake (a shutdown message) gets a cycle in
    wake_seconds, taking the next slot; a second wake takes the slot after (two periods
    ahead: a refill needs two cycles); further wakes wait for those slots' time (never
    more than one cycle per slot: no extra listings)."""
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "00.conf").write_text("[settings]\ncycle_seconds = 30\nwake_seconds = 0.2\n")
    (cdir / "10.conf").write_text(SPACE.format(name="a.example", limit=4, intent=600,
                                                latency=0, extra=""))
    daemon = make_daemon(cdir, store)

    async def cycles_after(wakes: int) -> int:
        for _ in range(wakes):
            daemon.wake("a.example")
            await asyncio.sleep(2.0)  # far longer than wake_seconds, far shorter than 30 s
        return daemon.spaces["a.example"].cycles

    async def scenario() -> tuple[int, int, int, int]:
        runner = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        while daemon.spaces.get("a.example") is None or \
                daemon.spaces["a.example"].cycles < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        first = daemon.spaces["a.example"].cycles
        woken = await cycles_after(1)
        woken_again = await cycles_after(1)
        refused = await cycles_after(2)
        daemon.stop()
        await asyncio.wait_for(runner, 30)
        return first, woken, woken_again, refused

    assert asyncio.run(scenario()) == (1, 2, 3, 3)


def test_an_unreadable_or_emptied_file_keeps_its_space_on_its_last_config(
        tmp_path: Path, store: Store) -> None:
    """A non-UTF-8 or emptied file must not unmanage its space silently nor look fine:
    the space keeps its last good configuration, is reported invalid (metric 0), and the
    error names the file.  Deleting the file is what removes a space."""
    cdir = config(tmp_path, {"a.example": {}, "b.example": {}})
    daemon = make_daemon(cdir, store)
    path = cdir / "10-a.example.conf"

    def state_after(content: bytes | None) -> tuple[bool, float, list[str]]:
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
        loaded = daemon.reload()
        ok = daemon.tools.metrics.space_config_ok.labels("a.example")._value.get()
        state = daemon.spaces.get("a.example")
        return (state is not None and state.config_ok, ok,
                [str(i) for i in loaded.issues if str(path) in str(i)])

    async def scenario() -> list[tuple[bool, float, list[str]]]:
        daemon.reload()
        found = [state_after(b"[space a.example]\napi = sim\n\xff\xfe broken\n"),
                 state_after(b"")]
        daemon.stop()
        found.append(state_after(None))
        for state in daemon.spaces.values():
            if state.task is not None:
                state.task.cancel()
        return found

    unreadable, emptied, deleted = asyncio.run(scenario())
    assert unreadable[:2] == (False, 0) and unreadable[2]
    assert emptied[:2] == (False, 0) and emptied[2]
    assert "a.example" not in daemon.spaces and "b.example" in daemon.spaces
    assert deleted[2] == []
