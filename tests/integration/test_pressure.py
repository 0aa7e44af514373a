"""Backoff by cause (issue 13): refused credentials are not retried every cycle, quota
and capacity refusals wait per flavor, a space whose starts keep failing stops creating,
and a large burst spreads over cycles instead of overrunning the cycle's deadline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.config import Machinetype, Settings, SimSpace, Space
from cloudvac.engine.cycle import CycleReport, SpaceCycle
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.cloud import Flavor, Limits, MachineSpec, ObservedMachine
from cloudvac.model.errors import AuthFailed
from cloudvac.store import Store

SPACE = "p.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield opened
    opened.close()


def space(limit: int = 4, **mt: object) -> Space:
    belle = Machinetype(name="belle", space=SPACE, target_share=1, **mt)
    return Space(name=SPACE, api="sim", flavor_names=["m1.small"], processors_limit=limit,
                 creation_burst_processors=limit, max_starting_seconds=100,
                 machinetypes={"belle": belle})


def cycle_on(cloud: object, store: Store, clock: Clock,
             settings: Settings | None = None) -> SpaceCycle:
    tools = CycleTools(store, EngineMetrics(), clock=clock, monotonic=clock)
    return SpaceCycle(cloud, settings or Settings(), tools)  # type: ignore[arg-type]


def run_at(cycle: SpaceCycle, clock: Clock, the_space: Space, at: float) -> CycleReport:
    clock.now = 1_000_000.0 + at
    return asyncio.run(cycle.run(the_space))


def calling_times(calls: Callable[[], int], cycle_at: Callable[[int], object],
                  times: range) -> list[int]:
    """The times among ``times`` at which a cycle made calls (as counted by ``calls``)."""
    found = []
    for t in times:
        before = calls()
        cycle_at(t)
        if calls() != before:
            found.append(t)
    return found


class Refusing:
    """A cloud that refuses the credentials on every call, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def list_machines(self) -> Sequence[ObservedMachine]:
        self.calls += 1
        raise AuthFailed("Keystone refused the credentials (HTTP 401)")

    async def create_machine(self, spec: MachineSpec) -> str:
        raise AssertionError("never reached")

    async def delete_machine(self, cloud_id: str) -> None:
        raise AssertionError("never reached")

    async def find_machine(self, name: str) -> ObservedMachine | None:
        return None

    async def limits(self) -> Limits:
        return Limits()

    async def flavor(self, names: Sequence[str], lo: int, hi: int | None) -> Flavor:
        return Flavor("m1.small", 1)

    async def close(self) -> None:
        return None


def test_refused_credentials_back_off_exponentially(store: Store) -> None:
    """151 Keystone logins in 151 cycles tripped an account lockout: now 60 s, 120 s,
    240 s ... between attempts, and the status says when the next one is."""
    cloud, clock = Refusing(), Clock()
    cycle, the_space = cycle_on(cloud, store, clock), space()
    attempts = calling_times(lambda: cloud.calls,
                             lambda t: run_at(cycle, clock, the_space, t), range(0, 1000, 10))
    assert attempts == [0, 60, 180, 420, 900]
    skipped = run_at(cycle, clock, the_space, 1000)
    assert not skipped.ok and "next attempt in" in skipped.error and cloud.calls == 5
    metrics = cycle.tools.metrics
    assert metrics.cycles.labels(SPACE, "auth_backoff")._value.get() > 80
    assert metrics.space_waits.labels(SPACE, "credentials")._value.get() > 0


def sim(clock: Clock, **options: object) -> tuple[SimProject, SimCloud]:
    opts = SimSpace(**{"seed": 5, "boot_seconds": 1, **options})
    project = SimProject(opts, clock=clock)
    return project, SimCloud(project, (SPACE, "cloudvac"), options=opts)


class LyingLimits(SimCloud):
    """Says the quota is free, so the planner creates and the cloud refuses."""

    async def limits(self) -> Limits:
        return Limits()


def test_quota_refusal_waits_per_flavor_doubling(store: Store) -> None:
    clock = Clock()
    opts = SimSpace(seed=5, quota_processors=0)
    project = SimProject(opts, clock=clock)
    cloud = LyingLimits(project, (SPACE, "cloudvac"), options=opts)
    cycle, the_space = cycle_on(cloud, store, clock), space()
    tries = calling_times(lambda: project.calls["create"],
                          lambda t: run_at(cycle, clock, the_space, t), range(0, 1000, 30))
    assert tries == [0, 300, 900]  # 5 min, then 10 min
    report = run_at(cycle, clock, the_space, 1000)
    assert "cloud refused flavor m1.small" in report.status["belle"].blocked
    assert store.last_aborts() == {}  # never the VO's fizzle backoff


def test_breaker_stops_creations_when_starts_keep_failing(store: Store) -> None:
    """Machines that never leave BUILD (not a VO's fault, not a quota refusal): after 10
    failed starts in a row the space stops creating for the breaker's period, says why in
    its status and an error event, and then tries again."""
    clock = Clock()
    _, cloud = sim(clock, boot_seconds=1e9)
    cycle, the_space = cycle_on(cloud, store, clock), space(limit=4)
    created: dict[int, int] = {}
    opened_at, blocked = None, ""
    for t in range(0, 2000, 20):
        report = run_at(cycle, clock, the_space, t)
        created[t] = report.created
        if opened_at is not None and not blocked:
            blocked = report.status["belle"].blocked
        if opened_at is None and cycle.pressure.breaker_until:
            opened_at = t
    assert opened_at is not None and blocked.startswith("circuit breaker open")
    assert sum(n for t, n in created.items() if t < opened_at) >= 10
    assert sum(n for t, n in created.items() if opened_at < t < opened_at + 600) == 0
    assert sum(n for t, n in created.items() if t >= opened_at + 600) > 0  # tries again
    errors = [e.message for e in store.events(SPACE, 1000) if e.kind == "error"]
    assert any(re.match(r"circuit breaker open: 1\d starts in a row failed", m) for m in errors)
    assert store.last_aborts() == {}  # the cloud's failures are not the VO's fizzle


def test_a_large_burst_spreads_over_cycles(store: Store) -> None:
    """200 creates at 4 in flight and 6-10 s per POST overran a 300 s deadline: now no
    create starts after half of it, and the rest come next cycle."""
    clock = Clock()
    _, cloud = sim(clock, api_latency_seconds=0.05)
    settings = Settings(api_concurrency=1, space_timeout_seconds=1.0)
    tools = CycleTools(store, EngineMetrics(), clock=clock)  # real monotonic: real latency
    cycle = SpaceCycle(cloud, settings, tools)
    report = asyncio.run(cycle.run(space(limit=60)))
    assert report.ok and report.deferred > 0
    assert report.created + report.deferred == 60 and 0 < report.created < 20
    assert report.duration < 1.0 + 0.5  # within the deadline, one call's latency to spare
