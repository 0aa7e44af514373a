"""``cloudvac run`` logic against REAL Nova: fill the quota with belle/t2k/hyperk, replace a
machine that stops, and spend exactly the API calls the design promises."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cloudvac.config import load_config_dir
from cloudvac.engine.daemon import Daemon
from cloudvac.service import build_daemon
from cloudvac.store import Store
from tests.contract.conftest import NOVA_START_S, budget, launch

pytestmark = pytest.mark.contract
MAX_LIMIT = 2

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = 1
space_timeout_seconds = 60

[space nova.example]
{openstack}full_listing_seconds = {full_listing}
creation_burst_processors = 6
max_starting_seconds = 300

[machinetype nova.example belle]
target_share = 2
root_image = {image}

[machinetype nova.example t2k]
target_share = 1
root_image = {image}

[machinetype nova.example hyperk]
target_share = 1
root_image = {image}
"""


# starts its own Nova, then drives the daemon until the quota is full, a server replaced
@budget(NOVA_START_S + 20)
@pytest.mark.parametrize("full_listing", [0, 600])
def test_run_fills_quota_replaces_stopped_and_counts_calls(oracle_ready: None, tmp_path: Path,
                                                           full_listing: int) -> None:
    import openstack

    options = launch.NovaOptions(quota_cores=6, quota_instances=20, max_limit=MAX_LIMIT)
    with launch.nova_oracle(options) as nova:
        secret = tmp_path / "password"
        cdir = tmp_path / "conf"
        cdir.mkdir()
        (cdir / "10-nova.conf").write_text(CONFIG.format(
            state=tmp_path / "state", openstack=nova.space_options(secret),
            image=nova["image_id"],
            full_listing=full_listing))
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None and not loaded.issues, loaded.issues
        store = Store(loaded.settings.database_url)
        daemon = build_daemon(cdir, loaded.settings, store, keep_reports=1000)
        sdk = openstack.connect(load_yaml_config=False, load_envvars=False,
                                **nova.connect_kwargs())
        try:
            result = asyncio.run(_drive(daemon, sdk))
        finally:
            for server in _servers(sdk):
                sdk.compute.delete_server(server, ignore_missing=True)
            sdk.close()
            store.close()

    full, stopped_id, replaced, settled = result
    assert sum(full.values()) == 6 and set(full) == {"belle", "t2k", "hyperk"}
    assert full["belle"] >= max(full["t2k"], full["hyperk"])  # target shares 2:1:1
    assert replaced, f"server {stopped_id} stopped, was deleted and replaced"

    reports = daemon.spaces["nova.example"].reports
    assert all(r.ok for r in reports), [r.error for r in reports if not r.ok]
    for r in reports[1:]:  # after the first cycle (flavor lookup): at most one limits
        # call per cycle and exactly one call per action
        calls = r.api_requests
        assert calls.get("limits", 0) <= 1, calls
        assert calls.get("limits") == 1 or not r.created, "creates follow a fresh read"
        assert calls.get("create", 0) == r.created + r.create_failures, (calls, r)
        assert calls.get("delete", 0) == r.deleted, (calls, r)
        assert set(calls) <= {"list", "changes", "limits", "create", "delete"}, calls
    steady = reports[settled:]
    assert len(steady) >= 2, "some idle cycles once everything was ACTIVE"
    for r in steady:
        assert r.created == r.deleted == 0
        calls = {k: n for k, n in r.api_requests.items() if k != "limits"}
        if full_listing == 0:  # one page per max_limit servers; Nova answers a full last
            # page with a next link, so an exact multiple costs one (empty) page more
            assert calls == {"list": r.listed // MAX_LIMIT + 1}, r
        else:  # changes-since listings only (how many pages depends on what changed)
            assert set(calls) == {"changes"}, r
    # The quota is full and our usage unchanged: limits are not read again (at most once
    # more, by the cycle that first saw the replacement listed).
    assert sum(r.api_requests.get("limits", 0) for r in steady) <= 1, steady
    full_cycles = [r for r in reports if "list" in r.api_requests]
    if full_listing == 0:
        assert full_cycles == reports
    else:  # in full until a listing showed servers (no change mark before), then never
        assert full_cycles == reports[:len(full_cycles)] and 1 <= len(full_cycles) <= 3
    auth = daemon.tools.metrics.auth_calls.labels("nova.example")._value.get()
    assert auth == 1, "one Keystone token for the whole run (<= 2 per space per hour)"


async def _drive(daemon: Daemon, sdk: Any) -> tuple[dict[str, int], str, bool, int]:
    runner = asyncio.create_task(daemon.run())
    try:
        full = await _until_full(sdk)
        victim = (await asyncio.to_thread(_servers, sdk))[0]
        await asyncio.to_thread(sdk.compute.stop_server, victim)
        replaced = await _until_replaced(sdk, victim.id)
        settled = await _after_cycles(daemon, 1)  # the cycle in progress ends
        await _after_cycles(daemon, 3)  # a few idle cycles for the call-count check
        return full, victim.id, replaced, settled
    finally:
        daemon.stop()
        await asyncio.wait_for(runner, 60)


async def _after_cycles(daemon: Daemon, cycles: int, seconds: float = 60) -> int:
    """Wait until ``cycles`` more cycle reports are in (bounded): how many there are then."""
    def count() -> int:
        return len(daemon.spaces["nova.example"].reports)

    target = count() + cycles
    deadline = time.monotonic() + seconds
    while count() < target and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return count()


def _servers(sdk: Any) -> list[Any]:
    """All servers, as an observer.  Nova can repeat or skip a server across pages while
    states change (and openstacksdk then aborts); try again, deduplicating by id."""
    import openstack.exceptions

    for _ in range(10):
        try:
            return list({s.id: s for s in sdk.compute.servers()}.values())
        except openstack.exceptions.SDKException:
            time.sleep(0.2)
    raise AssertionError("could not list servers")


async def _until_full(sdk: Any, seconds: float = 120) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        servers = await asyncio.to_thread(_servers, sdk)
        if len(servers) == 6 and all(s.status == "ACTIVE" for s in servers):
            counts: dict[str, int] = {}
            for s in servers:
                mt = s.metadata.get("cloudvac:machinetype", "?")
                counts[mt] = counts.get(mt, 0) + 1
            return counts
        await asyncio.sleep(1)
    raise AssertionError("the space never filled its 6-core quota")


async def _until_replaced(sdk: Any, victim: str, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        servers = await asyncio.to_thread(_servers, sdk)
        ids = {s.id for s in servers}
        if victim not in ids and len(servers) == 6 and all(s.status == "ACTIVE"
                                                            for s in servers):
            return True
        await asyncio.sleep(1)
    return False
