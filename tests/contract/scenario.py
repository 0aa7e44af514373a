"""The shared contract scenario: one drive of the ``Cloud`` protocol that every adapter passes.

``scenario(ScenarioCloud(...))`` creates, lists, looks up, counts foreign usage, is refused
over quota, (where the cloud has such a state) watches a create end in the cloud's error
state, and deletes (twice, and once more when gone, and an id that never existed), then
returns what it observed; ``expected(ScenarioCloud(...))`` is what it must observe.  It
runs on REAL Nova and the in-process sim (``test_openstack_adapter.py``), on ``cloudvac
sim-cloud`` through the OpenStack adapter (``test_sim_api.py``) and on moto's EC2 API
through the EC2 adapter (``test_ec2_adapter.py``).

What differs between the clouds is in ``ScenarioCloud`` and nowhere else: the flavor (or
instance type) names and their vCPUs, the quota, how a foreign machine is started, and
the parts a cloud has no counterpart for (``None``: skipped, each field says why).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cloudvac.model.cloud import Cloud, Flavor, MachineSpec, machine_metadata
from cloudvac.model.errors import Misconfigured, QuotaExceeded
from cloudvac.model.states import MachineState

SPACE = "contract.example"
PREFIX = f"cloudvac-{hashlib.sha256(SPACE.encode()).hexdigest()[:6]}-"
S = MachineState


def spec(name: str, flavor: Flavor, image: str) -> MachineSpec:
    """One machine of ``SPACE``, tagged as the engine tags it (``machine_metadata``)."""
    metadata = machine_metadata(space=SPACE, machinetype="belle", manager_id="cloudvac",
                                created_at=time.time(), manager_url="https://vc.example:8443")
    return MachineSpec(name=PREFIX + name, space=SPACE, machinetype="belle", flavor=flavor,
                       image=image, user_data="#cloud-config\n", metadata=metadata)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


@dataclass(frozen=True)
class ScenarioCloud:
    """One cloud the scenario runs on, and what differs there (defaults: Nova's)."""

    cloud: Cloud
    image: str
    add_foreign: Callable[[], Awaitable[None]]
    """Starts one machine of someone else (no cloudvac tags) of ``foreign_processors``."""
    quota_processors: int = 6
    """The project's vCPU quota (EC2: the space's ``vcpu_limit``)."""
    machines: int = 3
    """How many machines the scenario creates (EC2: more than one listing page)."""
    small: str = "m1.small"
    small_processors: int = 1
    small_ram_mb: int = 2048
    foreign_processors: int = 1
    too_big: str = "m1.xlarge"
    """A flavor larger than what is left of the quota once the scenario's machines run."""
    quota_error: str = r"(?i)quota"
    """What the cloud's refusal of ``too_big`` says (a regex on the QuotaExceeded)."""
    over_quota: Callable[[], None] | None = None
    """Called before creating ``too_big`` where the cloud enforces no quota by itself
    (moto: arms the fault proxy with EC2's own refusal); None: the cloud refuses."""
    accounted: str | None = "cv.accounted"
    """A flavor with cASO's benchmark extra specs; None where flavors have no extra specs."""
    unschedulable: str | None = "cv.unschedulable"
    """A flavor whose creates end in the cloud's error state (Nova: ERROR, "No valid host
    was found"); None where the cloud has no such state to provoke."""
    shows_starting: bool = True
    """Whether a listing right after the creates shows machines still starting."""
    missing_id: str = "00000000-0000-4000-8000-000000000000"
    """A well-formed id no machine ever had (deleting it must succeed)."""
    list_requests: Callable[[], int] | None = None
    """List requests the adapter has made so far, to count one listing's pages; None where
    the scenario does not count them."""


async def scenario(sc: ScenarioCloud) -> dict[str, Any]:
    """Drive ``sc.cloud`` through create/list/quota/error/delete; return what was observed
    (``expected(sc)`` says what it must be).  Closes the cloud."""
    seen: dict[str, Any] = {}
    try:
        small = await _flavors(sc, seen)
        ids = await _creates(sc, small, seen)
        await _quota(sc, seen)
        if sc.unschedulable is not None:
            await _error_state(sc, sc.unschedulable, seen)
        await _deletes(sc, ids, seen)
    finally:
        await sc.cloud.close()
    return seen


async def _flavors(sc: ScenarioCloud, seen: dict[str, Any]) -> Flavor:
    cloud = sc.cloud
    small = await cloud.flavor(["no-such-flavor", sc.small], 1, None)  # the first known
    seen["small"] = (small.name, small.processors, small.ram_mb)
    if sc.accounted is not None:
        accounted = await cloud.flavor([sc.accounted], 1, None)
        seen["flavor_benchmarks"] = {
            "plain": (small.benchmark_type, small.benchmark_value),
            "accounted": (accounted.benchmark_type, accounted.benchmark_value)}
    with pytest.raises(Misconfigured):
        await cloud.flavor(["no-such-flavor"], 1, None)
    return small


async def _creates(sc: ScenarioCloud, small: Flavor, seen: dict[str, Any]) -> list[str]:
    cloud, count = sc.cloud, sc.machines
    ids = [await cloud.create_machine(spec(f"vm{i}", small, sc.image)) for i in range(count)]
    listed = await cloud.list_machines()
    seen["first_states"] = sorted({m.state.value for m in listed} - {"running"})

    async def all_running() -> bool:
        machines = await cloud.list_machines()
        return len(machines) == count and all(m.state is S.RUNNING for m in machines)

    seen["running"] = await until(all_running)
    before = sc.list_requests() if sc.list_requests else 0
    machines = await cloud.list_machines()
    if sc.list_requests is not None:
        seen["pages"] = sc.list_requests() - before
    seen["listed"] = sorted(m.name[len(PREFIX):] for m in machines)
    seen["ids"] = {m.cloud_id for m in machines} == set(ids)
    seen["tags"] = {m.machinetype for m in machines}
    seen["processors"] = {m.processors for m in machines}
    seen["times"] = all(m.created_at and m.started_at for m in machines)
    found = await cloud.find_machine(PREFIX + "vm1")
    seen["found"] = found is not None and found.cloud_id == ids[1]
    seen["not_found"] = await cloud.find_machine(PREFIX + "nobody") is None
    await sc.add_foreign()
    limits = await cloud.limits()
    seen["free_processors"] = limits.free_processors
    seen["foreign_processors"] = limits.foreign_processors
    seen["listed_after_foreign"] = len(await cloud.list_machines())
    return ids


async def _quota(sc: ScenarioCloud, seen: dict[str, Any]) -> None:
    big = await sc.cloud.flavor([sc.too_big], 1, None)
    if sc.over_quota is not None:
        sc.over_quota()
    with pytest.raises(QuotaExceeded, match=sc.quota_error):
        await sc.cloud.create_machine(spec("big", big, sc.image))
    seen["listed_after_refusal"] = sorted(m.name[len(PREFIX):]
                                          for m in await sc.cloud.list_machines())


async def _error_state(sc: ScenarioCloud, flavor: str, seen: dict[str, Any]) -> None:
    cloud = sc.cloud
    bad = await cloud.flavor([flavor], 1, None)
    await cloud.create_machine(spec("bad", bad, sc.image))

    async def failed() -> bool:
        return any(m.state is S.FAILED for m in await cloud.list_machines())

    seen["failed"] = await until(failed)
    faults = [m.fault for m in await cloud.list_machines() if m.state is S.FAILED]
    seen["fault"] = faults[0].startswith("No valid host was found") if faults else None


async def _deletes(sc: ScenarioCloud, ids: list[str], seen: dict[str, Any]) -> None:
    cloud = sc.cloud
    await cloud.delete_machine(ids[0])
    await cloud.delete_machine(ids[0])  # idempotent while the cloud is still deleting

    async def gone() -> bool:  # a cloud may list an ended machine as GONE (EC2: an hour)
        return all(m.cloud_id != ids[0] or m.state is S.GONE
                   for m in await cloud.list_machines())

    seen["deleted"] = await until(gone)
    await cloud.delete_machine(ids[0])  # and once it is gone
    await cloud.delete_machine(sc.missing_id)  # and one that never was
    seen["lookup_deleted"] = await cloud.find_machine(PREFIX + "vm0") is None
    rest = [m.cloud_id for m in await cloud.list_machines() if m.state is not S.GONE]
    await asyncio.gather(*(cloud.delete_machine(cloud_id) for cloud_id in rest))


def expected(sc: ScenarioCloud) -> dict[str, Any]:
    """What ``scenario(sc)`` must observe."""
    names = [f"vm{i}" for i in range(sc.machines)]
    seen: dict[str, Any] = {
        "small": (sc.small, sc.small_processors, sc.small_ram_mb),
        "first_states": ["starting"] if sc.shows_starting else [], "running": True,
        "listed": names, "ids": True, "tags": {"belle"}, "processors": {sc.small_processors},
        "times": True, "found": True, "not_found": True,
        "free_processors": sc.quota_processors - sc.machines * sc.small_processors
        - sc.foreign_processors,
        "foreign_processors": sc.foreign_processors, "listed_after_foreign": sc.machines,
        "listed_after_refusal": names, "deleted": True, "lookup_deleted": True}
    if sc.accounted is not None:
        seen["flavor_benchmarks"] = {"plain": ("", None), "accounted": ("HEPscore23", 12.5)}
    if sc.unschedulable is not None:
        seen |= {"failed": True, "fault": True}
    return seen
