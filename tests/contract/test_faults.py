"""Faults against REAL Nova (issue 13): losing the store deletes no VM, and a create that
never reached Nova (an image that cannot be resolved) frees its intent at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudvac.config import load_config_dir
from cloudvac.engine.daemon import Daemon
from cloudvac.model.states import MachineState
from cloudvac.service import build_daemon
from cloudvac.store import Store
from tests.contract.conftest import launch

pytestmark = pytest.mark.contract

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = 1
space_timeout_seconds = 60

[space faults.example]
{openstack}processors_limit = 3
full_listing_seconds = 0

[machinetype faults.example belle]
target_share = 1
root_image = {image}
fizzle_seconds = 0
heartbeat_file = heartbeat
heartbeat_seconds = {heartbeat}
"""


@pytest.fixture(scope="module")
def nova(oracle_ready: None) -> Iterator[Any]:
    with launch.nova_oracle(launch.NovaOptions(quota_cores=8, quota_instances=20)) as info:
        yield info


def write_config(root: Path, nova: Any, image: str, heartbeat: int) -> Path:
    secret = root / "password"
    cdir = root / "conf"
    cdir.mkdir(exist_ok=True)
    (cdir / "10-faults.conf").write_text(CONFIG.format(
        state=root / "state", openstack=nova.space_options(secret),
        image=image, heartbeat=heartbeat))
    return cdir


def sdk_of(nova: Any) -> Any:
    import openstack

    return openstack.connect(load_yaml_config=False, load_envvars=False,
                             **nova.connect_kwargs())


def active_ids(sdk: Any) -> set[str]:
    return {s.id for s in sdk.compute.servers() if s.status == "ACTIVE"}


def clean(sdk: Any) -> None:
    for server in list(sdk.compute.servers()):
        sdk.compute.delete_server(server, ignore_missing=True)
    deadline = time.monotonic() + 120
    while list(sdk.compute.servers()) and time.monotonic() < deadline:
        time.sleep(0.5)


async def run_while(daemon: Daemon, done: Any, store: Store, timeout: float) -> None:
    """Run the daemon until ``done()``; meanwhile every machine heartbeats, as its in-VM
    agent would (these VMs are Nova's fake driver's: they run nothing)."""
    runner = asyncio.create_task(daemon.run())
    try:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(done):
            assert time.monotonic() < deadline, "condition not reached"
            assert not runner.done(), runner
            beats = {("faults.example", m.name): time.time()
                     for m in await asyncio.to_thread(store.machines, "faults.example")}
            await asyncio.to_thread(store.record_heartbeats, beats)
            await asyncio.sleep(0.5)
    finally:
        daemon.stop()
        await asyncio.wait_for(runner, 60)


def test_losing_the_store_deletes_no_vm(nova: Any, tmp_path: Path) -> None:
    """Fill the space, lose the database, start again on an empty one: every VM is
    adopted with a fresh grace; none is deleted although none has a heartbeat on record
    and all ran longer than heartbeat_seconds."""
    cdir = write_config(tmp_path, nova, nova["image_id"], heartbeat=4)
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    sdk = sdk_of(nova)
    try:
        first = Store(loaded.settings.database_url)
        daemon = build_daemon(cdir, loaded.settings, first)
        asyncio.run(run_while(daemon, lambda: len(active_ids(sdk)) == 3, first, 180))
        first.close()
        before = active_ids(sdk)
        time.sleep(5)  # every VM now ran longer than heartbeat_seconds
        Path(loaded.settings.database_url.removeprefix("sqlite:///")).unlink()
        second = Store(loaded.settings.database_url)
        restarted = build_daemon(cdir, loaded.settings, second, keep_reports=100)

        def three_cycles() -> bool:
            state = restarted.spaces.get("faults.example")
            return state is not None and len(state.reports) >= 3

        asyncio.run(run_while(restarted, three_cycles, second, 120))
        after = active_ids(sdk)
        kinds = [e.kind for e in second.events("faults.example", 500)]
        adopted = [m for m in second.machines("faults.example") if m.adopted_at is not None]
        second.close()
    finally:
        clean(sdk)
        sdk.close()
    assert after == before and len(after) == 3
    assert "delete" not in kinds
    assert len(adopted) == 3


def test_an_image_that_cannot_be_resolved_frees_its_intent_at_once(nova: Any,
                                                                     tmp_path: Path) -> None:
    """This Nova has no image service in its catalog (the field case: the SDK's
    ServiceDisabledException): the create was never sent, so its intent holds nothing."""
    cdir = write_config(tmp_path, nova, "no-such-image", heartbeat=0)
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    sdk = sdk_of(nova)
    store = Store(loaded.settings.database_url)
    try:
        daemon = build_daemon(cdir, loaded.settings, store, keep_reports=10)
        asyncio.run(daemon.run(cycles=2))
        machines = store.machines("faults.example", include_gone=True)
        errors = [e.message for e in store.events("faults.example") if e.kind == "error"]
        servers = list(sdk.compute.servers())
    finally:
        store.close()
        clean(sdk)
        sdk.close()
    assert servers == []
    assert machines and all(m.state is MachineState.GONE for m in machines)
    assert errors and all(m.startswith("create not sent (NotSent): image 'no-such-image'")
                          for m in errors)
