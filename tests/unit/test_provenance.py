"""Provenance on every VM: cloudvac's tags and EGI's orchestrator properties, within Nova's
metadata limits, the same on the sim as the engine asks for, and never a secret."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.engine.cycle import SpaceCycle
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.cloud import (
    METADATA_ITEMS,
    METADATA_KEY,
    METADATA_VALUE_CHARS,
    TAG_ORCHESTRATOR_URL,
    MachineSpec,
    machine_metadata,
    metadata_problem,
    public_url,
)
from cloudvac.model.errors import Misconfigured
from cloudvac.model.states import MachineState
from cloudvac.store import Store

SPACE = "recas-napoli.example"


def test_the_metadata_of_a_machine() -> None:
    metadata = machine_metadata(space=SPACE, machinetype="belle", manager_id="napoli-1",
                                created_at=1_800_000_000.4,
                                manager_url="https://cloudvac.example.org:8443")
    assert metadata == {
        "cloudvac:space": SPACE,
        "cloudvac:machinetype": "belle",
        "cloudvac:manager": "napoli-1",
        "cloudvac:created": "1800000000",
        "eu.egi.cloud.orchestrator": "cloudvac",
        "eu.egi.cloud.orchestrator.id": f"napoli-1/{SPACE}",
        "eu.egi.cloud.orchestrator.url": "https://cloudvac.example.org:8443",
    }
    assert metadata_problem(metadata) is None


def test_a_loopback_manager_publishes_no_url() -> None:
    settings = Settings()  # web_listen 127.0.0.1:8080: nobody else can reach it
    assert settings.web_base_url == "http://127.0.0.1:8080"
    metadata = machine_metadata(space=SPACE, machinetype="belle",
                                manager_id=settings.manager_id, created_at=None,
                                manager_url=settings.web_base_url)
    assert TAG_ORCHESTRATOR_URL not in metadata
    assert metadata["eu.egi.cloud.orchestrator.id"] == f"cloudvac/{SPACE}"
    assert metadata["cloudvac:created"] == "0"


@pytest.mark.parametrize("url, public", [
    ("https://cloudvac.example.org", "https://cloudvac.example.org"),
    ("http://192.0.2.7:8080", "http://192.0.2.7:8080"),
    ("https://[2001:db8::7]:8443", "https://[2001:db8::7]:8443"),
    ("https://CloudVac.Example.org.", "https://cloudvac.example.org"),
    # a user:password part, a query or a fragment may be a secret: never published
    ("https://svc:s3cret@cloudvac.example.org", "https://cloudvac.example.org"),
    ("https://cloudvac.example.org?token=s3cret#x", "https://cloudvac.example.org"),
    ("http://127.0.0.1:8080", None), ("http://127.9.9.9", None),
    ("http://localhost:8080", None), ("http://vm.localhost", None),
    ("http://[::1]:8080", None), ("http://0.0.0.0:8080", None), ("http://[::]:80", None),
    ("ftp://cloudvac.example.org", None), ("cloudvac.example.org", None), ("", None),
    ("https://cloudvac.example.org:99999", None),
    ("https://" + "a" * 250 + ".org", None),  # longer than a metadata value
])
def test_only_a_public_base_url_is_published(url: str, public: str | None) -> None:
    assert public_url(url) == public


def test_the_longest_names_fit_nova() -> None:
    """Names are bounded by the configuration (63 characters each); the URL by the value
    limit.  Every key and value of the longest metadata is one Nova accepts."""
    space = "s" + "-" * 61 + "s"
    manager = "m" + "." * 62
    host = "h" * (METADATA_VALUE_CHARS - len("https://:65535"))
    url = f"https://{host}:65535"
    metadata = machine_metadata(space=space, machinetype="t" * 32, manager_id=manager,
                                created_at=9e12, manager_url=url)
    assert metadata[TAG_ORCHESTRATOR_URL] == url and len(url) == METADATA_VALUE_CHARS
    assert all(METADATA_KEY.match(k) and len(v) <= METADATA_VALUE_CHARS
               for k, v in metadata.items())
    assert Settings(manager_id=manager, web_url=url).web_base_url == url


def test_nova_metadata_rules() -> None:
    assert metadata_problem({"eu.egi.cloud.orchestrator.id": "x" * 255}) is None
    assert "value" in (metadata_problem({"k": "x" * 256}) or "")
    for key in ("", "a/b", "k" * 256, "\u00e9", "a=b"):
        assert "key" in (metadata_problem({key: "v"}) or ""), key
    too_many = {f"k{i}": "v" for i in range(METADATA_ITEMS + 1)}
    assert "items" in (metadata_problem(too_many) or "")


def spec(metadata: dict[str, str]) -> MachineSpec:
    project = SimProject()
    flavor = project.flavors["m1.small"]
    return MachineSpec(name="cloudvac-x", space=SPACE, machinetype="belle", flavor=flavor,
                       image="", user_data="#cloud-config\n", metadata=metadata)


def test_the_sim_refuses_what_nova_refuses_and_keeps_the_rest() -> None:
    project = SimProject()
    metadata = machine_metadata(space=SPACE, machinetype="belle", manager_id="napoli-1",
                                created_at=1.0, manager_url="https://cloudvac.example.org")
    cloud_id = project.create(spec(metadata))
    assert project.servers[cloud_id].metadata == metadata
    with pytest.raises(Misconfigured, match="metadata"):
        project.create(spec({**metadata, "eu.egi.cloud.orchestrator.url": "x" * 256}))
    with pytest.raises(Misconfigured, match="metadata"):
        project.create(spec({**metadata, "cloudvac/bad": "v"}))


def test_the_engine_tags_every_machine_it_creates(tmp_path: Path) -> None:
    """One cycle on the sim: each created server carries the tags and the provenance."""
    settings = Settings(state_dir=tmp_path, manager_id="napoli-1",
                        web_url="https://cloudvac.example.org:8443")
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    project = SimProject()
    cloud = SimCloud(project, (SPACE, "napoli-1"))
    tools = CycleTools(store, EngineMetrics(), render=lambda space, mt, name: "#cloud-config\n")
    mt = Machinetype(name="belle", space=SPACE, target_share=1)
    space = Space(name=SPACE, api="sim", flavor_names=["m1.small"], processors_limit=2,
                  machinetypes={"belle": mt})
    try:
        report = asyncio.run(SpaceCycle(cloud, settings, tools).run(space))
        assert report.ok and report.created >= 1
        created = {m.name: m.created_at for m in store.machines()
                   if m.state is not MachineState.GONE}
        assert sorted(s.name for s in project.servers.values()) == sorted(created)
        for server in project.servers.values():
            assert server.metadata == {
                "cloudvac:space": SPACE, "cloudvac:machinetype": "belle",
                "cloudvac:manager": "napoli-1",
                "cloudvac:created": f"{created[server.name] or 0:.0f}",
                "eu.egi.cloud.orchestrator": "cloudvac",
                "eu.egi.cloud.orchestrator.id": f"napoli-1/{SPACE}",
                "eu.egi.cloud.orchestrator.url": "https://cloudvac.example.org:8443"}
    finally:
        asyncio.run(cloud.close())
        store.close()
