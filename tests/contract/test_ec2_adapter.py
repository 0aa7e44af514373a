"""cloudvac's EC2 adapter against moto's EC2 API served on 127.0.0.1 (``tests/ec2server.py``).

First the shared contract scenario (``tests/contract/scenario.py``, the one real Nova and
the sim pass), with EC2's instance types and more machines than one listing page; then
what only EC2 has.  Quota, auth and throttling answers that moto cannot give come from
``FaultProxy``, a test fake in front of moto.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from cloudvac.clouds.ec2 import Ec2Cloud
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.ec2 import Ec2Space
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.errors import AuthFailed, Misconfigured, QuotaExceeded, Retryable
from cloudvac.model.states import MachineState
from tests.contract.scenario import PREFIX, SPACE, ScenarioCloud, expected, scenario, spec
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
S = MachineState


def ec2_space(url: str, tmp_path: Path, **options: Any) -> Space:
    ec2 = Ec2Space(region=REGION, endpoint_url=url, credentials_file=credentials_file(tmp_path),
                   **options)
    mt = Machinetype(name="belle", space=SPACE, target_share=1, root_image=IMAGE_NAME)
    return Space(name=SPACE, api="ec2", ec2=ec2, flavor_names=["t3.micro"],
                 machinetypes={"belle": mt})


def test_shared_scenario_on_moto(ec2: MotoServer, tmp_path: Path) -> None:
    """Six t3.small (2 vCPUs, 2 GiB in moto's DescribeInstanceTypes) under a vcpu_limit of
    18, listed in pages of 5; the refusal of a t3.2xlarge is EC2's own error document,
    served by the proxy (moto enforces no vCPU limit).  Skipped, as EC2 has no counterpart:
    the benchmark extra specs (instance types have none) and Nova's ERROR state (a launch
    that fails is refused by RunInstances at once or ends ``terminated``, which moto never
    does by itself)."""
    metrics = EngineMetrics()
    client = ec2.client()
    refusal = Fault(400, "VcpuLimitExceeded", "You have requested more vCPU capacity than "
                    "your current vCPU limit of 18 allows for the instance bucket that the "
                    "specified instance type belongs to.", times=1)

    async def foreign() -> None:  # someone else's instance: no tags
        await asyncio.to_thread(lambda: client.run_instances(
            ImageId=ec2.image_id, MinCount=1, MaxCount=1, InstanceType="t3.small"))

    with FaultProxy(ec2.url) as proxy:
        cloud = Ec2Cloud(ec2_space(proxy.url, tmp_path, list_page_size=5, vcpu_limit=18),
                         Settings(), metrics)

        def over_quota() -> None:
            proxy.faults = {"RunInstances": refusal}

        sc = ScenarioCloud(
            cloud, IMAGE_NAME, foreign, quota_processors=18, machines=6, small="t3.small",
            small_processors=2, small_ram_mb=2048, foreign_processors=2, too_big="t3.2xlarge",
            quota_error="VcpuLimitExceeded", over_quota=over_quota,
            accounted=None, unschedulable=None,  # no counterpart on EC2: see the docstring
            shows_starting=False,  # moto's instances are running at once (AWS: pending)
            missing_id="i-0123456789abcdef0",
            list_requests=lambda: metrics.requests_of(SPACE).get("list", 0))
        seen = asyncio.run(scenario(sc))
    assert seen == {**expected(sc), "pages": 2}
    assert refusal.times == 0, "the refusal came from the proxy, once"


def test_stopped_terminated_and_unknown_images(ec2: MotoServer, tmp_path: Path) -> None:
    """What EC2 shows that Nova does not: a stopped instance, a terminated one listed (as
    GONE) for an hour, AMIs by id or by name."""
    cloud = Ec2Cloud(ec2_space(ec2.url, tmp_path), Settings(), EngineMetrics())

    async def flow() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        micro = await cloud.flavor(["t3.micro"], 1, None)
        ids = [await cloud.create_machine(spec(f"vm{i}", micro, IMAGE_NAME)) for i in range(3)]
        ec2.client().stop_instances(InstanceIds=[ids[0]])
        await asyncio.gather(*(cloud.delete_machine(i) for i in ids[1:]))
        states = {m.cloud_id: m.state for m in await cloud.list_machines()}
        seen["states"] = [states[i] for i in ids]
        seen["lookup_terminated"] = await cloud.find_machine(PREFIX + "vm1")
        with pytest.raises(Misconfigured, match="InvalidAMIID"):
            await cloud.create_machine(spec("badami", micro, "ami-12345678"))
        with pytest.raises(Misconfigured, match="no image named"):
            await cloud.create_machine(spec("badname", micro, "no-such-image"))
        await cloud.close()
        return seen

    assert asyncio.run(flow()) == {"states": [S.STOPPED, S.GONE, S.GONE],
                                   "lookup_terminated": None}


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
            q, p = spec("q", micro, IMAGE_NAME), spec("p", micro, IMAGE_NAME)
            for code in ("InsufficientInstanceCapacity", "VcpuLimitExceeded",
                         "InstanceLimitExceeded"):
                await expect("RunInstances", Fault(400, code, f"no {code} for t3.micro"),
                             QuotaExceeded, lambda: cloud.create_machine(q))
            await expect("RunInstances", Fault(400, "InvalidParameterValue", "bad value"),
                         Misconfigured, lambda: cloud.create_machine(p))
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
