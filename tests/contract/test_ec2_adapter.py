"""cloudvac's EC2 adapter against moto's EC2 API served on 127.0.0.1 (``tests/ec2server.py``).

The scenario follows the shared one of ``test_openstack_adapter.py`` (flavors, creates,
listing with tags and times, foreign usage in limits, quota refusal, idempotent deletes,
lookup by name); that function itself names Nova's flavors and waits for Nova's ERROR
state, which EC2 has not, so EC2 runs this version of it.  Quota, auth and throttling
answers that moto cannot give come from ``FaultProxy``, a test fake in front of moto.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from cloudvac.clouds.ec2 import Ec2Cloud
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.ec2 import Ec2Space
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.cloud import Flavor, MachineSpec, machine_metadata
from cloudvac.model.errors import AuthFailed, Misconfigured, QuotaExceeded, Retryable
from cloudvac.model.states import MachineState
from tests.ec2server import (
    ACCESS_KEY,
    EMPTY_LISTING,
    IMAGE_NAME,
    REGION,
    SECRET_KEY,
    Fault,
    FaultProxy,
    MotoServer,
    credentials_file,
)

pytestmark = pytest.mark.contract
SPACE = "ec2.example"
PREFIX = "cloudvac-e2e2e2-"
S = MachineState


def ec2_space(url: str, tmp_path: Path, **options: Any) -> Space:
    ec2 = Ec2Space(region=REGION, endpoint_url=url, credentials_file=credentials_file(tmp_path),
                   **options)
    mt = Machinetype(name="belle", space=SPACE, target_share=1, root_image=IMAGE_NAME)
    return Space(name=SPACE, api="ec2", ec2=ec2, flavor_names=["t3.micro"],
                 machinetypes={"belle": mt})


def spec(name: str, flavor: Flavor, image: str = IMAGE_NAME) -> MachineSpec:
    metadata = machine_metadata(space=SPACE, machinetype="belle", manager_id="cloudvac",
                                created_at=time.time(), manager_url="https://vc.example:8443")
    return MachineSpec(name=PREFIX + name, space=SPACE, machinetype="belle", flavor=flavor,
                       image=image, user_data="#cloud-config\n", metadata=metadata)


async def scenario(cloud: Ec2Cloud, ec2: MotoServer, metrics: EngineMetrics) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    micro = await cloud.flavor(["no-such.type", "t3.micro"], 1, None)
    seen["micro"] = (micro.processors, micro.ram_mb)
    with pytest.raises(Misconfigured, match="no instance type"):
        await cloud.flavor(["no-such.type"], 1, None)
    ids = [await cloud.create_machine(spec(f"vm{i}", micro)) for i in range(7)]
    before = dict(metrics.requests_of(SPACE))
    machines = await cloud.list_machines()
    seen["pages"] = metrics.requests_of(SPACE)["list"] - before.get("list", 0)
    seen["listed"] = sorted(m.name[len(PREFIX):] for m in machines)
    seen["states"] = {m.state for m in machines}
    seen["tags"] = {m.machinetype for m in machines}
    seen["times"] = all(m.created_at and m.started_at for m in machines)
    seen["found"] = (await cloud.find_machine(PREFIX + "vm3") or machines[0]).cloud_id == ids[3]
    seen["not_found"] = await cloud.find_machine(PREFIX + "nobody")
    client = ec2.client()
    client.run_instances(ImageId=ec2.image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    limits = await cloud.limits()
    seen["free"], seen["foreign"] = limits.free_processors, limits.foreign_processors
    client.stop_instances(InstanceIds=[ids[0]])
    seen["stopped"] = {m.cloud_id: m.state for m in await cloud.list_machines()}[ids[0]]
    await asyncio.gather(*(cloud.delete_machine(i) for i in ids[:3]))
    await cloud.delete_machine(ids[0])  # idempotent: already terminated
    await cloud.delete_machine("i-0123456789abcdef0")  # never existed
    after = {m.cloud_id: m.state for m in await cloud.list_machines()}
    seen["after_delete"] = sorted(after[i].value for i in ids)
    seen["lookup_terminated"] = await cloud.find_machine(PREFIX + "vm1")
    with pytest.raises(Misconfigured, match="InvalidAMIID"):
        await cloud.create_machine(spec("badami", micro, "ami-12345678"))
    with pytest.raises(Misconfigured, match="no image named"):
        await cloud.create_machine(spec("badname", micro, "no-such-image"))
    return seen


def test_scenario_on_moto(ec2: MotoServer, tmp_path: Path) -> None:
    metrics = EngineMetrics()
    cloud = Ec2Cloud(ec2_space(ec2.url, tmp_path, list_page_size=5, vcpu_limit=32),
                     Settings(), metrics)

    async def flow() -> dict[str, Any]:
        try:
            return await scenario(cloud, ec2, metrics)
        finally:
            await cloud.close()

    seen = asyncio.run(flow())
    assert seen == {
        "micro": (2, 1024), "pages": 2,
        "listed": [f"vm{i}" for i in range(7)], "states": {S.RUNNING}, "tags": {"belle"},
        "times": True, "found": True, "not_found": None,
        "free": 32 - 8 * 2, "foreign": 2, "stopped": S.STOPPED,
        "after_delete": ["gone"] * 3 + ["running"] * 4, "lookup_terminated": None}


def test_error_answers_through_a_fault_proxy(ec2: MotoServer, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cloudvac")
    with FaultProxy(ec2.url) as proxy:
        cloud = Ec2Cloud(ec2_space(proxy.url, tmp_path, max_attempts=3), Settings(),
                         EngineMetrics())
        seen: dict[str, Any] = {}

        async def expect(action: str, fault: Fault, error: type[Exception], call: Any) -> None:
            proxy.faults = {action: fault}
            proxy.seen.clear()
            with pytest.raises(error, match=fault.code) as info:
                await call()
            seen[fault.code] = proxy.seen.count(action)
            assert SECRET_KEY not in str(info.value)

        async def flow() -> None:
            micro = await cloud.flavor(["t3.micro"], 1, None)
            for code in ("InsufficientInstanceCapacity", "VcpuLimitExceeded",
                         "InstanceLimitExceeded"):
                await expect("RunInstances", Fault(400, code, f"no {code} for t3.micro"),
                             QuotaExceeded, lambda: cloud.create_machine(spec("q", micro)))
            await expect("RunInstances", Fault(400, "InvalidParameterValue", "bad value"),
                         Misconfigured, lambda: cloud.create_machine(spec("p", micro)))
            for status, code in ((401, "AuthFailure"), (403, "UnauthorizedOperation"),
                                 (403, "InvalidClientTokenId"), (403, "SignatureDoesNotMatch")):
                await expect("DescribeInstances", Fault(
                    status, code, f"refused; aws_secret_access_key={SECRET_KEY}"),
                    AuthFailed, cloud.list_machines)
            await expect("DescribeInstances", Fault(500, "InternalError", "down"), Retryable,
                         cloud.list_machines)
            proxy.faults = {"DescribeInstances": Fault(503, "RequestLimitExceeded", "slow",
                                                       times=1)}
            proxy.seen.clear()
            seen["throttled_then_listed"] = len(await cloud.list_machines())
            seen["throttled_attempts"] = proxy.seen.count("DescribeInstances")
            await cloud.close()

        asyncio.run(flow())
    assert seen == {"InsufficientInstanceCapacity": 1, "VcpuLimitExceeded": 1,
                    "InstanceLimitExceeded": 1, "InvalidParameterValue": 1,
                    "AuthFailure": 1, "UnauthorizedOperation": 1, "InvalidClientTokenId": 1,
                    "SignatureDoesNotMatch": 1, "InternalError": 3,
                    "throttled_then_listed": 0, "throttled_attempts": 2}
    assert SECRET_KEY not in caplog.text


def test_credentials_from_file_env_or_refused(ec2: MotoServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    space = ec2_space(ec2.url, tmp_path)
    assert space.ec2 is not None and space.ec2.credentials_file is not None
    space.ec2.credentials_file.chmod(0o644)
    with pytest.raises(Misconfigured, match="chmod 600"):
        Ec2Cloud(space, Settings(), EngineMetrics())
    with pytest.raises(ValueError, match="inline secrets are refused"):
        Ec2Space(region=REGION, credentials="env", secret_access_key=SECRET_KEY)
    env = Ec2Space(region=REGION, endpoint_url=ec2.url, credentials="env",
                   access_key_id_env="CV_TEST_KEY", secret_access_key_env="CV_TEST_SECRET")
    with pytest.raises(Misconfigured, match="CV_TEST_KEY is not set"):
        Ec2Cloud(space.model_copy(update={"ec2": env}), Settings(), EngineMetrics())
    monkeypatch.setenv("CV_TEST_KEY", ACCESS_KEY)
    monkeypatch.setenv("CV_TEST_SECRET", SECRET_KEY)
    cloud = Ec2Cloud(space.model_copy(update={"ec2": env}), Settings(), EngineMetrics())

    async def flow() -> int:
        try:
            return len(await cloud.list_machines())
        finally:
            await cloud.close()

    assert asyncio.run(flow()) == 0


def test_an_instance_missing_from_listings_after_its_create_is_never_gone(
        ec2: MotoServer, tmp_path: Path) -> None:
    """EC2's DescribeInstances is eventually consistent: for a few cycles after the create
    the listing (here: the proxy) shows nothing.  The machine stays an intent, holding its
    capacity (no second create), and is listed as created once EC2 shows it."""
    from cloudvac.engine.cycle import SpaceCycle
    from cloudvac.engine.tools import CycleTools
    from cloudvac.store import Store

    store = Store(f"sqlite:///{tmp_path / 'db'}")
    with FaultProxy(ec2.url) as proxy:
        space = ec2_space(proxy.url, tmp_path).model_copy(update={"processors_limit": 2})
        cloud = Ec2Cloud(space, Settings(state_dir=tmp_path), EngineMetrics())
        cycle = SpaceCycle(cloud, Settings(state_dir=tmp_path),
                           CycleTools(store, EngineMetrics()))

        def states() -> str:
            return " ".join(sorted({m.state.value for m in store.machines()}))

        async def flow() -> list[tuple[int, str]]:
            found: list[tuple[int, str]] = [((await cycle.run(space)).created, "created")]
            proxy.faults = {"DescribeInstances": EMPTY_LISTING}
            for _ in range(3):
                found.append(((await cycle.run(space)).created, states()))
            proxy.faults = {}
            found.append(((await cycle.run(space)).created, states()))
            await cloud.close()
            return found

        try:
            found = asyncio.run(flow())
        finally:
            store.close()
    assert found[:4] == [(1, "created"), (0, "intent"), (0, "intent"), (0, "intent")], found
    assert found[4] in ((0, "starting"), (0, "running")), found  # listed: created, no other
    assert len([i for r in ec2.client().describe_instances()["Reservations"]
                for i in r["Instances"]]) == 1


def test_service_quotas_unavailable_falls_back_to_the_configured_limit(
        ec2: MotoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """moto does not serve the EC2 vCPU quota (L-1216C47A) from Service Quotas: the
    configured vcpu_limit applies, with one warning."""
    caplog.set_level(logging.WARNING, logger="cloudvac")
    cloud = Ec2Cloud(ec2_space(ec2.url, tmp_path, vcpu_limit=8,
                               vcpu_limit_from_service_quotas=True), Settings(),
                     EngineMetrics())

    async def flow() -> list[int | None]:
        try:
            return [(await cloud.limits()).free_processors for _ in range(2)]
        finally:
            await cloud.close()

    assert asyncio.run(flow()) == [8, 8]
    warned = [r.getMessage() for r in caplog.records if "L-1216C47A" in r.getMessage()]
    assert len(warned) == 1 and "using vcpu_limit 8" in warned[0]
