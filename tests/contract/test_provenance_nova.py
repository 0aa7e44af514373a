"""Provenance on REAL Nova: a server created by cloudvac's OpenStack adapter carries
cloudvac's tags and EGI's orchestrator properties exactly as built, read back from Nova;
metadata at Nova's limits is accepted, past them refused the same way by Nova and the sim."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudvac.clouds.openstack import OpenStackCloud
from cloudvac.clouds.sim import SimProject
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.cloud import (
    METADATA_VALUE_CHARS,
    TAG_ORCHESTRATOR_URL,
    Flavor,
    MachineSpec,
    machine_metadata,
    metadata_problem,
)
from cloudvac.model.errors import Misconfigured
from tests.contract.conftest import launch

pytestmark = pytest.mark.contract
SPACE = "s" + "-" * 61 + "s"  # the longest space name the configuration accepts
MANAGER = "m" + "." * 62  # the longest manager_id
PREFIX = f"cloudvac-{hashlib.sha256(SPACE.encode()).hexdigest()[:6]}-"
#: A public base URL exactly as long as a metadata value may be.
URL = "https://" + "h" * (METADATA_VALUE_CHARS - len("https://:8443")) + ":8443"


@pytest.fixture(scope="module")
def nova(oracle_ready: None) -> Iterator[Any]:
    with launch.nova_oracle(launch.NovaOptions(quota_cores=6, quota_instances=10)) as server:
        yield server


def metadata() -> dict[str, str]:
    return machine_metadata(space=SPACE, machinetype="belle", manager_id=MANAGER,
                            created_at=1_800_000_000.0, manager_url=URL)


def spec(name: str, flavor: Flavor, image: str, tags: dict[str, str]) -> MachineSpec:
    return MachineSpec(name=PREFIX + name, space=SPACE, machinetype="belle", flavor=flavor,
                       image=image, user_data="#cloud-config\n", metadata=tags)


#: Metadata past Nova's limits: (what, extra items).
REFUSED = [
    ("value of 256 characters", {TAG_ORCHESTRATOR_URL: URL + "0"}),
    ("key with a slash", {"cloudvac/space": "x"}),
    ("key with an equals sign", {"a=b": "x"}),
    ("key of 256 characters", {"k" * 256: "x"}),
    ("empty key", {"": "x"}),
]


def test_provenance_read_back_from_nova(nova: Any, tmp_path: Path) -> None:
    import openstack

    secret = tmp_path / "password"
    secret.write_text(nova.password + "\n")
    secret.chmod(0o600)
    options = OpenStackSpace(auth_url=nova.auth_url, username=nova.username,
                             password_file=secret, project_name=nova.project_name,
                             region_name="RegionOne", networks=["none"])
    mt = Machinetype(name="belle", space=SPACE, target_share=1, root_image=nova["image_id"])
    space = Space(name=SPACE, api="openstack", openstack=options, flavor_names=["m1.small"],
                  machinetypes={"belle": mt})
    cloud = OpenStackCloud(space, Settings(manager_id=MANAGER), EngineMetrics())
    sdk = openstack.connect(load_yaml_config=False, load_envvars=False,
                            **nova.connect_kwargs())
    tags = metadata()
    assert len(tags[TAG_ORCHESTRATOR_URL]) == METADATA_VALUE_CHARS

    async def flow() -> tuple[dict[str, str], list[str]]:
        small = await cloud.flavor(["m1.small"], 1, None)
        refused = []
        for what, extra in REFUSED:
            bad = {**tags, **extra}
            assert metadata_problem(bad) is not None, what
            with pytest.raises(Misconfigured, match="Invalid input for field") as caught:
                await cloud.create_machine(spec("bad", small, nova["image_id"], bad))
            refused.append(str(caught.value))
        cloud_id = await cloud.create_machine(spec("vm0", small, nova["image_id"], tags))
        server = await asyncio.to_thread(sdk.compute.get_server, cloud_id)
        listed = [m.cloud_id for m in await cloud.list_machines()]
        assert listed == [cloud_id], "Nova's copy of the tags is what the adapter lists by"
        await cloud.close()
        return dict(server.metadata), refused

    try:
        on_nova, refused = asyncio.run(flow())
        names = [s.name for s in sdk.compute.servers()]
    finally:
        for server in sdk.compute.servers():
            sdk.compute.delete_server(server, ignore_missing=True)
        sdk.close()
    assert on_nova == tags
    assert on_nova == {
        "cloudvac:space": SPACE, "cloudvac:machinetype": "belle", "cloudvac:manager": MANAGER,
        "cloudvac:created": "1800000000", "eu.egi.cloud.orchestrator": "cloudvac",
        "eu.egi.cloud.orchestrator.id": f"{MANAGER}/{SPACE}",
        "eu.egi.cloud.orchestrator.url": URL}
    assert names == [PREFIX + "vm0"], "no refused create left a server behind"
    # Nova's schema names the field at fault: the over-long value's key, else "metadata"
    assert f"field/attribute {TAG_ORCHESTRATOR_URL}." in refused[0]
    assert all("field/attribute metadata." in r for r in refused[1:])


def test_the_sim_keeps_and_refuses_the_same() -> None:
    project = SimProject()
    flavor = project.flavors["m1.small"]
    tags = metadata()
    cloud_id = project.create(spec("vm0", flavor, "image", tags))
    assert project.servers[cloud_id].metadata == tags
    for what, extra in REFUSED:
        with pytest.raises(Misconfigured, match="Invalid input for field"):
            project.create(spec("bad", flavor, "image", {**tags, **extra}))
        assert len(project.servers) == 1, what
