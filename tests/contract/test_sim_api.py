"""The simulated cloud served as its own process (``cloudvac sim-cloud``), driven by the REAL
OpenStack adapter (openstacksdk, keystoneauth1, the raw listings): the shared contract
scenario, pages, ``changes-since``, Keystone's refusals, application credentials and the
fault injection of the chaos tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudvac.clouds.openstack import OpenStackCloud
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE
from cloudvac.model.errors import AuthFailed, QuotaExceeded, Retryable
from cloudvac.model.states import MachineState
from tests.contract.scenario import PREFIX, SPACE, ScenarioCloud, expected, scenario, spec, until
from tests.contract.test_openstack_adapter import openstack_space
from tests.simapi_server import SimCloudServer, sim_cloud

pytestmark = pytest.mark.contract
S = MachineState
OURS = {TAG_SPACE: SPACE, TAG_MACHINETYPE: "belle", TAG_MANAGER: "cloudvac"}


@pytest.fixture(scope="module")
def cloud_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCloudServer]:
    """The contract scenario's cloud: 6 cores, 10 instances, pages of 2 servers."""
    with sim_cloud(tmp_path_factory.mktemp("simapi"), quota_processors=6, quota_instances=10,
                   page_limit=2) as server:
        yield server


@pytest.fixture
def sdk(cloud_server: SimCloudServer) -> Iterator[Any]:
    import openstack

    conn = openstack.connect(load_yaml_config=False, load_envvars=False,
                             **cloud_server.connect_kwargs())
    yield conn
    cloud_server.faults()
    for server in conn.compute.servers():
        conn.compute.delete_server(server, ignore_missing=True)
    deadline = time.monotonic() + 120  # deleted servers hold quota until they are gone
    while any(s["status"] != "DELETED" for s in cloud_server.state()["servers"]) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    conn.close()


def adapter(server: SimCloudServer, tmp_path: Path, **overrides: Any
            ) -> tuple[OpenStackCloud, EngineMetrics]:
    metrics = EngineMetrics()
    return OpenStackCloud(openstack_space(server, tmp_path, **overrides), Settings(),
                          metrics), metrics


def create_raw(sdk: Any, server: SimCloudServer, name: str, **fields: Any) -> str:
    return str(sdk.compute.create_server(name=name, flavor_id="2", networks="none",
                                         image_id=server["image_id"], **fields).id)


def test_contract_scenario_through_the_openstack_adapter(
        cloud_server: SimCloudServer, sdk: Any, tmp_path: Path) -> None:
    cloud, metrics = adapter(cloud_server, tmp_path)

    async def foreign() -> None:  # not ours: no cloudvac tags, created by "someone else"
        await asyncio.to_thread(lambda: sdk.compute.wait_for_server(sdk.compute.create_server(
            name="someone-else", flavor_id="1", image_id=cloud_server["image_id"],
            networks="none"), wait=120))

    sc = ScenarioCloud(cloud, cloud_server["image_id"], foreign)
    assert asyncio.run(scenario(sc)) == expected(sc)
    samples = {s.labels.get("kind"): s.value for m in metrics.registry.collect()
               for s in m.samples if s.name == "cloudvac_auth_calls_total"}
    assert samples == {None: 1.0}, "one Keystone authentication for the whole scenario"
    state = cloud_server.state()
    assert state["creates"]["someone-else"] == 1 and state["creates"][PREFIX + "vm0"] == 1


def test_listing_pages_follow_novas_next_links(cloud_server: SimCloudServer, sdk: Any,
                                               tmp_path: Path) -> None:
    ids = {create_raw(sdk, cloud_server, f"{PREFIX}page{i}", metadata=OURS) for i in range(5)}
    create_raw(sdk, cloud_server, "other-name", metadata=OURS)  # not matched by the name filter
    cloud, metrics = adapter(cloud_server, tmp_path, full_listing_seconds=0)
    listed = asyncio.run(cloud.list_machines())
    asyncio.run(cloud.close())
    assert sorted(m.cloud_id for m in listed) == sorted(ids)
    assert metrics.requests_of(SPACE)["list"] == 3, "pages of 2, 2 and 1 servers"

    token = sdk.session.get_token()
    url = f"{cloud_server.url}/compute/v2.1/servers/detail"
    pages, params = [], {"name": f"^{PREFIX}page", "limit": "2"}
    while True:
        doc = httpx.get(url, params=params, headers={"X-Auth-Token": token},
                        timeout=60).json()
        pages.append([s["id"] for s in doc["servers"]])
        links = [link["href"] for link in doc.get("servers_links", []) if link["rel"] == "next"]
        if not links:
            break
        params = dict(httpx.URL(links[0]).params)  # Nova: the request's, sorted, + marker
        assert links[0].startswith(url + "?limit=2&")
        assert params == {"limit": "2", "name": f"^{PREFIX}page", "marker": pages[-1][-1]}
    assert [len(p) for p in pages] == [2, 2, 1]
    assert {i for p in pages for i in p} == ids
    unauthenticated = httpx.get(url, timeout=60)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["title"] == "Unauthorized"


def test_changes_since_shows_changes_and_deletions(cloud_server: SimCloudServer, sdk: Any,
                                                   tmp_path: Path) -> None:
    cloud, metrics = adapter(cloud_server, tmp_path, full_listing_seconds=3600)
    cloud.listing.overlap = 1.0  # whole-second stamps; the test waits out the rest
    full, _ = adapter(cloud_server, tmp_path, full_listing_seconds=0)

    async def flow() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        small = await cloud.flavor(["m1.small"], 1, None)
        ids = [await cloud.create_machine(spec(f"ch{i}", small, cloud_server["image_id"]))
               for i in range(3)]

        async def running() -> bool:
            machines = await cloud.list_machines()
            return len(machines) == 3 and all(m.state is S.RUNNING for m in machines)

        seen["running"] = await until(running)
        await asyncio.sleep(2.5)  # past the overlap: the next change listing is short
        await cloud.delete_machine(ids[1])

        async def gone() -> bool:
            return ids[1] not in {m.cloud_id for m in await full.list_machines()}

        seen["gone"] = await until(gone)
        await cloud.list_machines()  # sees the deletion; the mark moves to it
        seen["same"] = {m.cloud_id for m in await cloud.list_machines()} == \
            {m.cloud_id for m in await full.list_machines()} == {ids[0], ids[2]}
        seen["returned"] = cloud.listing.returned
        seen["kinds"] = metrics.requests_of(SPACE)
        await cloud.close()
        await full.close()
        return seen

    seen = asyncio.run(flow())
    assert seen["running"] and seen["gone"] and seen["same"]
    assert seen["returned"] == 1, "only the deleted server came back"
    # one full listing (two pages of at most 2), then change listings only
    assert seen["kinds"]["list"] == 2 and seen["kinds"]["changes"] >= 3, seen["kinds"]
    deleted = [s for s in cloud_server.state()["servers"] if s["status"] == "DELETED"]
    assert deleted and all(s["metadata"] == {} for s in deleted)


def test_wrong_password_is_refused_and_never_shown(cloud_server: SimCloudServer,
                                                   tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "wrong-canary-pw-31337"
    cloud, _ = adapter(cloud_server, tmp_path, password=canary)
    with pytest.raises(AuthFailed, match="Keystone refused the credentials") as failure:
        asyncio.run(cloud.list_machines())
    asyncio.run(cloud.close())
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": cloud_server.username, "domain": {"name": "Default"}, "password": canary}}}}}
    answer = httpx.post(f"{cloud_server.auth_url}/auth/tokens", json=body, timeout=60)
    assert answer.status_code == 401 and "X-Subject-Token" not in answer.headers
    assert answer.json() == {"error": {"code": 401, "title": "Unauthorized", "message":
                                       "The request you have made requires authentication."}}
    server_log = cloud_server.log_path.read_text()
    for secret in (canary, cloud_server.password, cloud_server.admin_token):
        assert secret not in caplog.text and secret not in str(failure.value)
        assert secret not in server_log and secret not in answer.text
    assert "token refused" in server_log


def test_application_credential(tmp_path: Path) -> None:
    with sim_cloud(tmp_path / "sim", app_cred=True) as server:
        assert server.app_cred_secret is not None
        secret = tmp_path / "appcred"
        secret.write_text(server.app_cred_secret)
        secret.chmod(0o600)
        options = OpenStackSpace(auth="application_credential", auth_url=server.auth_url,
                                 application_credential_id=server.app_cred_id,
                                 application_credential_secret_file=secret,
                                 region_name="RegionOne", networks=["none"])
        mt = Machinetype(name="belle", space=SPACE, target_share=1,
                         root_image="cloudvac-sim-image")
        cloud = OpenStackCloud(Space(name=SPACE, api="openstack", openstack=options,
                                     flavor_names=["m1.small"], machinetypes={"belle": mt}),
                               Settings(), EngineMetrics())

        async def flow() -> list[str]:
            small = await cloud.flavor(["m1.small"], 1, None)
            cloud_id = await cloud.create_machine(spec("ac", small, "cloudvac-sim-image"))
            listed = [m.cloud_id for m in await cloud.list_machines()]
            await cloud.close()
            return [cloud_id, *listed]

        made, *listed = asyncio.run(flow())
        assert listed == [made]
        assert server.app_cred_secret not in server.log_path.read_text()
    assert server["exit_code"] == 0, "SIGTERM stops it cleanly"


def test_injected_faults_change_outcomes(cloud_server: SimCloudServer, sdk: Any,
                                         tmp_path: Path) -> None:
    cloud, _ = adapter(cloud_server, tmp_path, api_retries=0)
    image = cloud_server["image_id"]
    admin = httpx.post(f"{cloud_server.url}/_sim/faults", json={"error_503": 1}, timeout=60,
                       headers={"Authorization": "Bearer wrong"})
    assert admin.status_code == 403

    async def flow() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        small = await cloud.flavor(["m1.small"], 1, None)
        for plan, kind, call in (
                ({"error_503": 1}, Retryable, cloud.list_machines),
                ({"error_500": 1}, Retryable, cloud.limits),
                ({"unauthorized": 1}, AuthFailed, cloud.list_machines),
                ({"quota": 1}, QuotaExceeded,
                 lambda: cloud.create_machine(spec("q", small, image))),
                ({"lost_create": 1}, Retryable,
                 lambda: cloud.create_machine(spec("lost", small, image)))):
            cloud_server.faults(**plan)
            try:
                await call()
            except kind:
                seen[next(iter(plan))] = True
        cloud_server.faults(delay=1, delay_seconds=0.2, seed=7)
        seen["delayed"] = len(await cloud.list_machines())
        cloud_server.faults()
        seen["after"] = sorted(m.name[len(PREFIX):] for m in await cloud.list_machines())
        await cloud.close()
        return seen

    seen = asyncio.run(flow())
    state = cloud_server.state()
    assert seen == {"error_503": True, "error_500": True, "unauthorized": True, "quota": True,
                    "lost_create": True, "delayed": 1, "after": ["lost"]}
    assert state["creates"].get(PREFIX + "q") is None, "a refused create made nothing"
    assert state["creates"][PREFIX + "lost"] == 1, "a lost create made its server"
    assert state["injected"]["delay"] >= 1 and state["injected"]["lost_create"] == 1


def test_tags_and_microversions_as_nova(cloud_server: SimCloudServer, sdk: Any) -> None:
    token = sdk.session.get_token()
    nova = f"{cloud_server.url}/compute/v2.1"

    def call(method: str, path: str, version: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, nova + path, timeout=60, headers={
            "X-Auth-Token": token, "OpenStack-API-Version": f"compute {version}"}, **kw)

    for name, tags in (("t-ab", ["a", "b"]), ("t-a", ["a"]), ("t-none", [])):
        made = call("POST", "/servers", "2.52", json={"server": {
            "name": name, "flavorRef": "2", "imageRef": cloud_server["image_id"],
            "networks": "none", "tags": tags}})
        assert made.status_code == 202, made.text

    def names(version: str, **params: str) -> list[str]:
        answer = call("GET", "/servers/detail", version, params={"name": "^t-", **params})
        assert answer.headers["OpenStack-API-Version"] == f"compute {version}"
        return sorted(s["name"] for s in answer.json()["servers"])

    assert names("2.52", tags="a,b") == ["t-ab"]
    assert names("2.52", **{"tags-any": "b"}) == ["t-ab"]
    assert names("2.52", **{"not-tags": "a,b"}) == ["t-a", "t-none"]
    assert names("2.52", **{"not-tags-any": "a"}) == ["t-none"]
    old = call("GET", "/servers/detail", "2.1", params={"name": "^t-ab$"}).json()["servers"]
    assert "tags" not in old[0] and set(old[0]["flavor"]) == {"id", "links"}
    flavors = call("GET", "/flavors/detail", "2.61").json()["flavors"]
    assert {f["name"]: f["extra_specs"] for f in flavors}["cv.accounted"] == {
        "accounting:benchmark_type": "HEPscore23", "accounting:benchmark_value": "12.5"}
    assert call("GET", "/servers/detail", "2.99").status_code == 406
    bad = call("POST", "/servers", "2.52", json={"server": {
        "name": "t-bad", "flavorRef": "404", "imageRef": cloud_server["image_id"],
        "networks": "none"}})
    assert bad.status_code == 400 and "Flavor 404 could not be found" in bad.text
