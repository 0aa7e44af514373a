"""The embedded simulated cloud, driven by a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import pytest

from cloudvac.clouds import simserver
from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.clouds.simpilots import PilotReporter
from cloudvac.config.models import SimMachinetype, SimSpace
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE, Cloud, Flavor, MachineSpec
from cloudvac.model.errors import Misconfigured, QuotaExceeded, Retryable
from cloudvac.model.states import MachineState, ShutdownMessage

SPACE = "sim-a.example"
MANAGER = "mgr1"
MACHINETYPE = "belle"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.heartbeats: list[tuple[str, str, float]] = []
        self.shutdowns: list[tuple[str, str, ShutdownMessage, float]] = []

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        self.heartbeats.append((space, name, at))

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        self.shutdowns.append((space, name, message, at))


class Broken:
    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        raise RuntimeError("web side down")

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        raise RuntimeError("web side down")


def spec(name: str, flavor: str = "m1.small", space: str = SPACE, manager: str = MANAGER,
         user_data: str = "#cloud-config\n") -> MachineSpec:
    """A machine of machinetype ``MACHINETYPE``, tagged for ``space`` and ``manager``."""
    return MachineSpec(name=name, space=space, machinetype=MACHINETYPE,
                       flavor=Flavor(flavor, 0), image="cernvm", user_data=user_data,
                       metadata={TAG_SPACE: space, TAG_MACHINETYPE: MACHINETYPE,
                                 TAG_MANAGER: manager})


def setup(mt: SimMachinetype | None = None, clock: Clock | None = None,
          reporter: PilotReporter | None = None, **options: Any
          ) -> tuple[SimProject, SimCloud, Recorder, Clock]:
    clock = clock or Clock()
    options.setdefault("seed", 1)
    machinetypes: Mapping[str, SimMachinetype] = {"belle": mt} if mt else {}
    project = SimProject(SimSpace(**options), dict(machinetypes), clock=clock)
    recorder = Recorder()
    cloud = SimCloud(project, (SPACE, MANAGER), reporter or recorder)
    return project, cloud, recorder, clock


def only(cloud: SimCloud) -> Any:
    machines = run(cloud.list_machines())
    assert len(machines) == 1
    return machines[0]


def test_sim_cloud_satisfies_protocol() -> None:
    _, cloud, _, _ = setup()
    assert isinstance(cloud, Cloud)


def test_create_starting_running_stopped_with_success_reported() -> None:
    project, cloud, rec, clock = setup(
        SimMachinetype(job_seconds=100, heartbeat_period_seconds=1000), boot_seconds=10)
    cloud_id = run(cloud.create_machine(spec("vm1")))
    m = only(cloud)
    assert (m.cloud_id, m.name, m.machinetype, m.state, m.cloud_status) == (
        cloud_id, "vm1", "belle", MachineState.STARTING, "BUILD")
    assert m.created_at == 1000.0 and m.processors == 1 and m.started_at is None

    clock.now += 16  # boot takes 0.5x-1.5x boot_seconds
    m = only(cloud)
    assert (m.state, m.cloud_status) == (MachineState.RUNNING, "ACTIVE")
    assert m.started_at is not None and 1005 <= m.started_at <= 1015
    assert rec.shutdowns == []

    clock.now += 151  # job takes 0.5x-1.5x job_seconds
    m2 = only(cloud)
    assert (m2.state, m2.cloud_status) == (MachineState.STOPPED, "SHUTOFF")
    assert len(rec.shutdowns) == 1
    space, name, message, at = rec.shutdowns[0]
    assert (space, name, message) == (SPACE, "vm1", ShutdownMessage(200, "Success"))
    assert m.started_at + 50 <= at <= m.started_at + 150
    assert project.calls["create"] == 1 and project.calls["list"] == 3


def test_failure_rate_one_gives_error_with_fault() -> None:
    _, cloud, rec, clock = setup(boot_seconds=2, failure_rate=1.0)
    run(cloud.create_machine(spec("vm1")))
    clock.now += 3
    m = only(cloud)
    assert (m.state, m.cloud_status) == (MachineState.FAILED, "ERROR")
    assert m.fault.startswith("No valid host was found")
    clock.now += 10_000
    assert only(cloud).state is MachineState.FAILED
    assert rec.heartbeats == [] and rec.shutdowns == []


def test_no_work_ends_early_with_300() -> None:
    _, cloud, rec, clock = setup(SimMachinetype(job_seconds=3600, no_work_probability=1.0),
                                 boot_seconds=1)
    run(cloud.create_machine(spec("vm1")))
    clock.now += 2
    started = only(cloud).started_at
    clock.now += 300
    assert only(cloud).state is MachineState.STOPPED
    [(_, _, message, at)] = rec.shutdowns
    assert message == ShutdownMessage(300, "Nothing to do")
    assert at - started < 0.1 * 3600  # well under a fizzle_seconds of 600


def test_error_probability_gives_500_or_600() -> None:
    _, cloud, rec, clock = setup(SimMachinetype(job_seconds=50, error_probability=1.0),
                                 boot_seconds=1)
    for i in range(20):
        run(cloud.create_machine(spec(f"vm{i}")))
    clock.now += 200
    run(cloud.list_machines())
    codes = {message.code for _, _, message, _ in rec.shutdowns}
    assert len(rec.shutdowns) == 20 and codes == {500, 600}


def test_heartbeats_while_running_without_flooding() -> None:
    _, cloud, rec, clock = setup(SimMachinetype(job_seconds=10_000, heartbeat_period_seconds=10),
                                 boot_seconds=0)
    run(cloud.create_machine(spec("vm1")))
    for _ in range(20):  # 100 s in 5 s steps
        clock.now += 5
        run(cloud.list_machines())
    times = [at for _, _, at in rec.heartbeats]
    assert times[0] == 1000.0  # the pilot's first heartbeat comes as it starts
    assert times == sorted(times) and len(times) == 11
    assert all(b - a == pytest.approx(10) for a, b in itertools.pairwise(times))
    assert all(space == SPACE and name == "vm1" for space, name, _ in rec.heartbeats)

    before = len(rec.heartbeats)
    clock.now += 95  # nine heartbeats fell due: report only the latest one
    run(cloud.list_machines())
    assert len(rec.heartbeats) == before + 1
    assert clock.now - 10 < rec.heartbeats[-1][2] <= clock.now
    assert rec.shutdowns == []


def test_quota_counts_foreign_servers() -> None:
    project, cloud, _, _ = setup(quota_processors=4, quota_instances=10)
    project.add_foreign("someone-else", 2)
    run(cloud.create_machine(spec("vm1", flavor="m1.medium")))
    with pytest.raises(QuotaExceeded, match=r"Quota exceeded for cores: Requested 1, "
                       r"but already used 4 of 4 cores"):
        run(cloud.create_machine(spec("vm2")))
    limits = run(cloud.limits())
    assert (limits.free_processors, limits.free_instances, limits.foreign_processors) == (0, 8, 2)
    assert limits.free_ram_mb is None


def test_instance_quota() -> None:
    project, cloud, _, _ = setup(quota_instances=1)
    project.add_foreign("someone-else", 1)
    with pytest.raises(QuotaExceeded, match="instances"):
        run(cloud.create_machine(spec("vm1")))
    assert run(cloud.limits()).free_processors is None  # unlimited


def test_unknown_flavor_and_oversized_user_data_are_misconfigured() -> None:
    project, cloud, _, _ = setup()
    with pytest.raises(Misconfigured, match=r"Flavor m9\.huge could not be found"):
        run(cloud.create_machine(spec("vm1", flavor="m9.huge")))
    with pytest.raises(Misconfigured, match="User data too large"):
        run(cloud.create_machine(spec("vm1", user_data="x" * 50_000)))
    assert project.servers == {}


def test_flavor_selection_range() -> None:
    _, cloud, _, _ = setup()
    names = ["m1.xlarge", "m1.large", "m1.small"]
    assert run(cloud.flavor(names, 1, 4)).name == "m1.large"
    assert run(cloud.flavor(["nope", "m1.small", "m1.medium"], 2, None)) == Flavor(
        "m1.medium", 2, 4096, "2")
    assert run(cloud.flavor(names, 8, 8)).processors == 8
    with pytest.raises(Misconfigured, match=r"m1.small.*m1.xlarge|m1.xlarge.*m1.small"):
        run(cloud.flavor(["m1.small", "m1.xlarge"], 2, 4))


def test_bad_flavor_option() -> None:
    with pytest.raises(ValueError, match=r"m1\.tiny:one"):  # caught by the config model
        SimSpace(flavors=["m1.tiny:one:512"])
    with pytest.raises(Misconfigured, match=r"m1\.tiny:one"):  # and again by the sim itself
        simserver.parse_flavors(["m1.tiny:one:512"])


def test_delete_is_async_idempotent_and_frees_quota_when_gone() -> None:
    project, cloud, _, clock = setup(quota_instances=1, boot_seconds=1)
    cloud_id = run(cloud.create_machine(spec("vm1")))
    clock.now += 2
    run(cloud.delete_machine(cloud_id))
    m = only(cloud)
    assert (m.state, m.cloud_status) == (MachineState.DELETING, "ACTIVE/deleting")
    run(cloud.delete_machine(cloud_id))  # a second delete while deleting is fine
    assert run(cloud.limits()).free_instances == 0  # still counts until gone
    clock.now += simserver.DELETE_SECONDS
    assert run(cloud.list_machines()) == []
    assert run(cloud.limits()).free_instances == 1
    run(cloud.delete_machine(cloud_id))  # gone: still success
    run(cloud.delete_machine("no-such-id"))
    assert project.servers == {} and project.calls["delete"] == 4


def test_delete_with_zero_delay_is_gone_at_next_call() -> None:
    project, cloud, rec, clock = setup(SimMachinetype(job_seconds=5), boot_seconds=1)
    project.delete_seconds = 0
    cloud_id = run(cloud.create_machine(spec("vm1")))
    clock.now += 2
    run(cloud.delete_machine(cloud_id))
    assert run(cloud.list_machines()) == []
    clock.now += 100
    run(cloud.list_machines())
    assert rec.shutdowns == []  # a deleted pilot never reports its end


def test_untagged_server_runs_its_course_unlisted_and_unreported() -> None:
    project, cloud, rec, clock = setup(SimMachinetype(job_seconds=50, heartbeat_period_seconds=5),
                                       boot_seconds=1)
    untagged = MachineSpec(name="bare", space=SPACE, machinetype="belle",
                           flavor=Flavor("m1.small", 1), image="cernvm", user_data="")
    cloud_id = run(cloud.create_machine(untagged))
    for _ in range(10):
        clock.now += 10
        assert run(cloud.list_machines()) == []
    assert project.servers[cloud_id].state is MachineState.STOPPED
    assert rec.heartbeats == [] and rec.shutdowns == []
    assert run(cloud.limits()).foreign_processors == 1


def test_listing_filters_other_managers_spaces_and_foreign() -> None:
    project, cloud, _, _ = setup()
    other_mgr = SimCloud(project, (SPACE, "mgr2"))
    other_space = SimCloud(project, ("sim-b.example", MANAGER))
    run(cloud.create_machine(spec("mine")))
    run(other_mgr.create_machine(spec("theirs", manager="mgr2")))
    run(other_space.create_machine(spec("elsewhere", space="sim-b.example")))
    project.add_foreign("untagged", 4)
    project.add_foreign("adopted", 2, {TAG_SPACE: SPACE, TAG_MANAGER: MANAGER,
                                       TAG_MACHINETYPE: "t2k"})
    listed = {m.name: m for m in run(cloud.list_machines())}
    assert set(listed) == {"mine", "adopted"}
    assert listed["adopted"].machinetype == "t2k" and listed["adopted"].processors == 2
    assert [m.name for m in run(other_mgr.list_machines())] == ["theirs"]
    assert run(cloud.limits()).foreign_processors == 1 + 1 + 4


def test_fail_api_raises_retryable_everywhere() -> None:
    project, cloud, _, _ = setup(fail_api=True)
    calls: list[Coroutine[Any, Any, object]] = [
        cloud.list_machines(), cloud.create_machine(spec("vm1")), cloud.delete_machine("x"),
        cloud.limits(), cloud.flavor(["m1.small"], 1, None)]
    for call in calls:
        with pytest.raises(Retryable, match="simulated API outage"):
            run(call)
    assert project.servers == {}
    assert dict(project.calls) == {"list": 1, "create": 1, "delete": 1, "limits": 1,
                                   "flavor": 1}
    cloud.reconfigure(SimSpace(seed=1), {})
    assert run(cloud.list_machines()) == []


def test_api_latency_sleeps_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)  # what sim.py calls
    _, cloud, _, _ = setup()
    run(cloud.limits())
    assert slept == []
    cloud.reconfigure(SimSpace(api_latency_seconds=0.25), {})
    run(cloud.limits())
    assert slept == [0.25]


def _scenario(seed: int) -> tuple[list[tuple[object, ...]], Recorder]:
    mt = SimMachinetype(job_seconds=30, no_work_probability=0.3, error_probability=0.2,
                        heartbeat_period_seconds=7)
    _, cloud, rec, clock = setup(mt, seed=seed, boot_seconds=5, failure_rate=0.2)
    seen: list[tuple[object, ...]] = []
    for step in range(40):
        if step < 10:
            run(cloud.create_machine(spec(f"vm{step}")))
        clock.now += 3
        seen.extend((m.cloud_id, m.name, m.state, m.cloud_status, m.fault, m.started_at)
                    for m in run(cloud.list_machines()))
    return seen, rec


def test_same_seed_and_clock_give_identical_outcomes() -> None:
    first, rec1 = _scenario(42)
    second, rec2 = _scenario(42)
    assert first == second
    assert (rec1.heartbeats, rec1.shutdowns) == (rec2.heartbeats, rec2.shutdowns)
    assert rec1.shutdowns  # the scenario did exercise pilots
    other, _ = _scenario(43)
    assert other != first


def test_reporter_errors_do_not_break_the_cloud(caplog: pytest.LogCaptureFixture) -> None:
    _, cloud, _, clock = setup(SimMachinetype(job_seconds=10, heartbeat_period_seconds=2),
                               reporter=Broken(), boot_seconds=1)
    run(cloud.create_machine(spec("vm1")))
    clock.now += 100
    with caplog.at_level(logging.WARNING, logger="cloudvac.clouds.sim"):
        m = only(cloud)
    assert m.state is MachineState.STOPPED
    assert any("shutdown report failed" in r.getMessage() and "vm1" in r.getMessage()
               for r in caplog.records)


def test_restarted_manager_gets_later_reports() -> None:
    project, old, rec_old, clock = setup(SimMachinetype(job_seconds=100), boot_seconds=1)
    run(old.create_machine(spec("vm1")))
    run(old.close())
    rec_new = Recorder()
    new = SimCloud(project, (SPACE, MANAGER), rec_new)
    clock.now += 500
    assert only(new).state is MachineState.STOPPED
    assert rec_old.shutdowns == [] and [s[1] for s in rec_new.shutdowns] == ["vm1"]


def test_reconfigure_changes_quota_and_pilot_behaviour() -> None:
    _, cloud, rec, clock = setup(boot_seconds=1)
    cloud.reconfigure(SimSpace(quota_processors=1, boot_seconds=1),
                      {"belle": SimMachinetype(no_work_probability=1.0)})
    run(cloud.create_machine(spec("vm1")))
    with pytest.raises(QuotaExceeded):
        run(cloud.create_machine(spec("vm2")))
    clock.now += 100
    run(cloud.list_machines())
    assert [message.code for _, _, message, _ in rec.shutdowns] == [300]
