"""The demo's VMs get their VO user_data from the real web endpoint, with their own token."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from cloudvac.auth.vmtokens import TokenSigner, load_or_create_secret
from cloudvac.config import load_config_dir
from cloudvac.demo import prepare
from cloudvac.engine.configsource import ConfigSource
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.service import build, run_service
from cloudvac.store import Store

MARKERS = {"belle": "VO_BELLE_SW_DIR", "t2k": "VO_T2K_ORG_SW_DIR",
           "hyperk": "VO_HYPERK_ORG_SW_DIR"}


def test_demo_machines_fetch_their_user_data(tmp_path: Path) -> None:
    config_dir = prepare(tmp_path)
    loaded = load_config_dir(config_dir)
    assert loaded.settings is not None
    overrides = {"state_dir": tmp_path, "database": None, "web_listen": "127.0.0.1:0",
                 "operator_listen": "127.0.0.1:0"}
    settings = loaded.settings.model_copy(update=overrides)
    store = Store(settings.database_url)
    service = build(ConfigSource(config_dir, overrides), settings, store)

    async def scenario() -> dict[str, str]:
        runner = asyncio.create_task(run_service(service))
        try:
            deadline = time.monotonic() + 60
            seen: dict[str, str] = {}
            while len(seen) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                for m in await asyncio.to_thread(store.machines, "sim-a.example"):
                    if m.state is not MachineState.GONE:
                        seen.setdefault(m.machinetype, m.name)
            signer = TokenSigner(load_or_create_secret(tmp_path))
            texts = {}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as http:
                for mt, name in seen.items():
                    token = signer.token("sim-a.example", name, time.time() + 600)
                    url = f"/machines/sim-a.example/{name}/user_data"
                    response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 200, response.text
                    texts[mt] = response.text
                    assert (await http.get(url)).status_code == 401
            return texts
        finally:
            service.stop()
            await asyncio.wait_for(runner, 30)

    try:
        texts = asyncio.run(scenario())
    finally:
        store.close()
    assert set(texts) == {"belle", "t2k", "hyperk"}
    for mt, text in texts.items():
        assert text.startswith("#cloud-config") and MARKERS[mt] in text


SQUID_CONFIG = """\
[settings]
cycle_seconds = 0.5

[dirac gridpp]
format = operations
site_prefix = CLOUD
setup = GridPP
configuration_servers = dips://dirac01.grid.hep.ph.ic.ac.uk:9135/Configuration/Server

[space squids.example]
api = sim
site_name = SQUIDS.uk
flavor_names = m1.small
creation_burst_processors = 4
squid_machinetype = squid
squid_proxies = http://fallback.example:3128
sim_boot_seconds = 0.2

[machinetype squids.example squid]
target_share = 1
processors_limit = 2
heartbeat_file = heartbeat
heartbeat_seconds = 60
sim_job_seconds = 600
sim_heartbeat_period_seconds = 0.3

[machinetype squids.example t2k]
target_share = 1
dirac = gridpp
vo = t2k.org
user_data = builtin:t2k
sim_job_seconds = 600
"""


def test_squid_machinetype_vms_become_the_cvmfs_proxies(tmp_path: Path) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "10.conf").write_text(SQUID_CONFIG)
    loaded = load_config_dir(config_dir)
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    overrides = {"state_dir": tmp_path, "web_listen": "127.0.0.1:0",
                 "operator_listen": "127.0.0.1:0"}
    settings = loaded.settings.model_copy(update=overrides)
    store = Store(settings.database_url)
    service = build(ConfigSource(config_dir, overrides), settings, store)

    async def scenario() -> tuple[list[str], str]:
        runner = asyncio.create_task(run_service(service))
        try:
            deadline = time.monotonic() + 30
            squids: list[str] = []
            while len(squids) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                squids = [m.address for m in await asyncio.to_thread(
                    store.heartbeating, "squids.example", "squid", time.time() - 3600)]
            assert service.web.render is not None
            space = service.daemon.current_spaces()["squids.example"]  # type: ignore[union-attr]
            text = service.web.render(space, space.machinetypes["t2k"],
                                      "cloudvac-000000-t2k-0000000000", time.time())
            return squids, text
        finally:
            service.stop()
            await asyncio.wait_for(runner, 30)

    try:
        squids, text = asyncio.run(scenario())
    finally:
        store.close()
    assert len(squids) == 2
    group = "|".join(f"http://{address}:3128" for address in squids)
    assert f'CVMFS_HTTP_PROXY="{group};http://fallback.example:3128"' in text


def test_the_web_side_knows_the_spaces_from_its_first_request(tmp_path: Path) -> None:
    """The web door opened before the daemon had read its configuration: for a moment a
    VM's upload got 404 (a lost shutdown message).  The spaces are loaded first now."""
    config_dir = prepare(tmp_path)
    loaded = load_config_dir(config_dir)
    assert loaded.settings is not None
    overrides = {"state_dir": tmp_path, "database": None, "web_listen": "127.0.0.1:0",
                 "operator_listen": "127.0.0.1:0"}
    settings = loaded.settings.model_copy(update=overrides)
    store = Store(settings.database_url)
    name = "cloudvac-abcdef-belle-0123456789"
    store.apply("sim-a.example", [MachineRecord("sim-a.example", name, "belle",
                                                MachineState.RUNNING, cloud_id="x")], {}, 1.0)
    service = build(ConfigSource(config_dir, overrides), settings, store)
    token = TokenSigner(load_or_create_secret(tmp_path)).token("sim-a.example", name,
                                                               time.time() + 600)

    async def scenario() -> tuple[list[str], int]:
        runner = asyncio.create_task(run_service(service))
        try:
            deadline = time.monotonic() + 60
            while not service.server.started:
                assert time.monotonic() < deadline and not runner.done()
                await asyncio.sleep(0)
            known = sorted(service.web.spaces())  # what the first request would see
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as http:
                response = await http.put(
                    f"/machines/sim-a.example/{name}/joboutputs/shutdown_message",
                    content=b"200 Success\n", headers={"Authorization": f"Bearer {token}"})
            return known, response.status_code
        finally:
            service.stop()
            await asyncio.wait_for(runner, 30)

    try:
        known, status = asyncio.run(scenario())
    finally:
        store.close()
    assert "sim-a.example" in known and status == 204
