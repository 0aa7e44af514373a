"""The shared contract scenario (``tests/contract/scenario.py``) on two clouds: cloudvac's
OpenStack adapter on REAL Nova, and the sim adapter; then what only OpenStack has.

Both must give the same observable results; that keeps the simulated cloud (used by the
demo, unit tests and benchmarks) honest about how Nova behaves.  The same scenario runs on
moto's EC2 API in ``test_ec2_adapter.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudvac.clouds.openstack import OpenStackCloud
from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.config import Machinetype, Settings, SimSpace, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE
from cloudvac.model.errors import AuthFailed, Misconfigured
from cloudvac.model.states import MachineState
from tests.contract.conftest import KEYSTONE_START_S, NOVA_START_S, budget, launch
from tests.contract.scenario import (
    PREFIX,
    SPACE,
    ScenarioCloud,
    expected,
    scenario,
    spec,
    until,
)

pytestmark = pytest.mark.contract
S = MachineState


@pytest.fixture(scope="module")
def nova(oracle_ready: None) -> Iterator[Any]:
    options = launch.NovaOptions(quota_cores=6, quota_instances=10, max_limit=2)
    with launch.nova_oracle(options) as server:
        yield server


def openstack_space(nova: Any, tmp_path: Path, **overrides: Any) -> Space:
    secret = tmp_path / "password"
    secret.write_text(overrides.pop("password", nova.password) + "\n")
    secret.chmod(0o600)
    options = OpenStackSpace(auth_url=nova.auth_url, username=nova.username,
                             password_file=secret, project_name=nova.project_name,
                             region_name="RegionOne", networks=["none"], **overrides)
    mt = Machinetype(name="belle", space=SPACE, target_share=1, root_image=nova["image_id"])
    return Space(name=SPACE, api="openstack", openstack=options, flavor_names=["m1.small"],
                 machinetypes={"belle": mt})


def test_scenario_on_real_nova(nova: Any, tmp_path: Path) -> None:
    import openstack

    metrics = EngineMetrics()
    cloud = OpenStackCloud(openstack_space(nova, tmp_path), Settings(), metrics)
    sdk = openstack.connect(load_yaml_config=False, load_envvars=False,
                            **nova.connect_kwargs())

    async def foreign() -> None:
        await asyncio.to_thread(lambda: sdk.compute.wait_for_server(sdk.compute.create_server(
            name="someone-else", flavor_id="1", image_id=nova["image_id"], networks="none")))

    sc = ScenarioCloud(cloud, nova["image_id"], foreign)
    try:
        seen = asyncio.run(scenario(sc))
    finally:
        for server in sdk.compute.servers():
            sdk.compute.delete_server(server, ignore_missing=True)
        sdk.close()
    assert seen == expected(sc)
    samples = {s.labels.get("kind"): s.value for m in metrics.registry.collect()
               for s in m.samples if s.name == "cloudvac_auth_calls_total"}
    assert samples == {None: 1.0}, "one Keystone authentication for the whole scenario"


def test_same_scenario_on_the_sim() -> None:
    options = SimSpace(quota_processors=6, quota_instances=10, boot_seconds=1,
                       unschedulable_flavors=["cv.unschedulable"],
                       flavors=["m1.tiny:1:512", "m1.small:1:2048", "m1.xlarge:8:16384",
                                "cv.unschedulable:1:512", "cv.accounted:1:512:12.5:HEPscore23"])
    project = SimProject(options=options)
    cloud = SimCloud(project, (SPACE, "cloudvac"), options=options)

    async def foreign() -> None:
        project.add_foreign("someone-else", 1)

    sc = ScenarioCloud(cloud, "image", foreign)
    assert asyncio.run(scenario(sc)) == expected(sc)


def test_wrong_password_is_a_clear_auth_failure(nova: Any, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    space = openstack_space(nova, tmp_path, password="wrong-password-123")
    cloud = OpenStackCloud(space, Settings(), EngineMetrics())
    with pytest.raises(AuthFailed, match="Keystone refused the credentials"):
        asyncio.run(cloud.list_machines())
    asyncio.run(cloud.close())
    assert "wrong-password-123" not in caplog.text


def test_inline_or_loose_secrets_are_refused(nova: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inline secrets are refused; use password_file"):
        OpenStackSpace(auth_url=nova.auth_url, username="u", project_name="p",
                       password="inline", password_file=tmp_path / "x")
    space = openstack_space(nova, tmp_path)
    assert space.openstack is not None and space.openstack.password_file is not None
    space.openstack.password_file.chmod(0o644)
    with pytest.raises(Misconfigured, match="chmod 600"):
        OpenStackCloud(space, Settings(), EngineMetrics())


@budget(KEYSTONE_START_S + NOVA_START_S + 5)  # starts its own Keystone and Nova
def test_application_credential_through_real_keystone(oracle_ready: None, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with launch.keystone_oracle() as keystone, launch.nova_oracle(keystone=keystone) as nova:
        secret = tmp_path / "appcred"
        secret.write_text(keystone["app_credential_secret"])
        secret.chmod(0o600)
        options = OpenStackSpace(auth="application_credential", auth_url=keystone.auth_url,
                                 application_credential_id=keystone["app_credential_id"],
                                 application_credential_secret_file=secret,
                                 region_name="RegionOne", networks=["none"])
        mt = Machinetype(name="belle", space=SPACE, target_share=1,
                         root_image=nova["image_id"])
        space = Space(name=SPACE, api="openstack", openstack=options,
                      flavor_names=["m1.small"], machinetypes={"belle": mt})
        cloud = OpenStackCloud(space, Settings(), EngineMetrics())

        async def flow() -> tuple[int, str]:
            small = await cloud.flavor(["m1.small"], 1, None)
            cloud_id = await cloud.create_machine(spec("ac", small, nova["image_id"]))
            listed = [m.cloud_id for m in await cloud.list_machines()]
            await cloud.delete_machine(cloud_id)
            assert cloud.session is not None
            token = await asyncio.to_thread(cloud.session.get_token)
            await cloud.close()
            return listed.count(cloud_id), token or ""

        count, token = asyncio.run(flow())
    assert count == 1
    assert keystone["app_credential_secret"] not in caplog.text
    assert token and token not in caplog.text


def test_change_listings_match_a_full_listing(nova: Any, tmp_path: Path) -> None:
    """Between full listings the adapter lists only what Nova shows changed: a stop, an
    outside delete and an outside (crashed-create) server must still give exactly what a
    full listing of the same moment gives."""
    import openstack

    metrics = EngineMetrics()
    cloud = OpenStackCloud(openstack_space(nova, tmp_path, full_listing_seconds=3600),
                           Settings(), metrics)
    cloud.listing.overlap = 1.0  # Nova stamps whole seconds; the test waits out the rest
    full = OpenStackCloud(openstack_space(nova, tmp_path, full_listing_seconds=0),
                          Settings(), EngineMetrics())
    sdk = openstack.connect(load_yaml_config=False, load_envvars=False,
                            **nova.connect_kwargs())

    def view(machines: Any) -> set[tuple[str, str, str, str, int]]:
        return {(m.cloud_id, m.name, m.machinetype, m.state.value, m.processors)
                for m in machines}

    async def flow() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        small = await cloud.flavor(["m1.small"], 1, None)
        ids = [await cloud.create_machine(spec(f"ch{i}", small, nova["image_id"]))
               for i in range(3)]

        async def running() -> bool:
            machines = await cloud.list_machines()
            return len(machines) == 3 and all(m.state is S.RUNNING for m in machines)

        seen["running"] = await until(running)
        await asyncio.sleep(2.5)  # past the overlap: the next change listing is short
        seen["first_full_at"] = cloud.listing.full_at

        def stop() -> None:
            sdk.compute.stop_server(ids[0])
            sdk.compute.wait_for_server(sdk.compute.get_server(ids[0]), status="SHUTOFF",
                                        wait=60)

        await asyncio.to_thread(stop)
        await asyncio.sleep(2.5)
        await cloud.list_machines()  # sees the stop; the mark moves to it
        await cloud.list_machines()
        seen["returned_when_one_changed"] = cloud.listing.returned
        await asyncio.to_thread(sdk.compute.delete_server, ids[1])
        outside = await asyncio.to_thread(lambda: sdk.compute.create_server(
            name=PREFIX + "outside", flavor_id=small.cloud_id, image_id=nova["image_id"],
            networks="none", metadata={TAG_SPACE: SPACE, TAG_MACHINETYPE: "belle",
                                       TAG_MANAGER: "cloudvac"}))

        async def settled() -> bool:
            states = {m.cloud_id: m.state for m in await full.list_machines()}
            return ids[1] not in states and states.get(outside.id) is S.RUNNING

        seen["settled"] = await until(settled)
        seen["same"] = view(await cloud.list_machines()) == view(await full.list_machines())
        seen["states"] = sorted(m.state.value for m in await cloud.list_machines())
        seen["kinds"] = metrics.requests_of(SPACE)
        seen["last_full_at"] = cloud.listing.full_at
        await cloud.close()
        await full.close()
        return seen

    try:
        seen = asyncio.run(flow())
    finally:
        for server in sdk.compute.servers():
            sdk.compute.delete_server(server, ignore_missing=True)
        sdk.close()
    assert seen["running"] and seen["settled"]
    assert seen["returned_when_one_changed"] == 1, "only the stopped server came back"
    assert seen["same"], "change listings gave the same machines as a full listing"
    assert seen["states"] == ["running", "running", "stopped"]
    assert seen["first_full_at"] == seen["last_full_at"], "one full listing, the first"
    assert seen["kinds"]["changes"] >= 4 and seen["kinds"]["list"] >= 1, seen["kinds"]
