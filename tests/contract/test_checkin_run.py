"""Must-show: the daemon on one ``egi_checkin`` space creates and deletes VMs on real Nova
behind real Keystone federation across several (shortened) access-token lifetimes, with at
most one Check-in token call per access-token lifetime."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from cloudvac.config import load_config_dir
from cloudvac.engine.daemon import Daemon
from cloudvac.service import build_daemon
from cloudvac.store import Store
from tests.contract.conftest import KEYSTONE_START_S, NOVA_START_S, SLOWDOWN, budget, launch

pytestmark = pytest.mark.contract
ACCESS_LIFETIME = 5
RUN_SECONDS = 24  # at least; then until the VMs counted below were created and deleted

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = 1
space_timeout_seconds = 60

[space egi.example]
api = openstack
auth = egi_checkin
auth_url = {auth_url}
egi_checkin_url = {issuer}
egi_checkin_client_id = {client_id}
egi_checkin_client_secret_file = {secret}
egi_project_id = {project}
egi_vo = {vo}
region_name = RegionOne
networks = none
flavor_names = m1.small
processors_limit = 3
creation_burst_processors = 3

[machinetype egi.example belle]
target_share = 1
root_image = {image}
max_wallclock_seconds = 4
fizzle_seconds = 0
"""


def enough_vms(daemon: Daemon) -> bool:
    reports = daemon.spaces["egi.example"].reports
    return sum(r.created for r in reports) >= 4 and sum(r.deleted for r in reports) >= 2


# starts its own Keystone and Nova, then runs the daemon for RUN_SECONDS or more
@budget(KEYSTONE_START_S + NOVA_START_S + RUN_SECONDS + 10)
def test_daemon_on_federated_keystone_across_access_token_lifetimes(
        oidc_provider: Any, tmp_path: Path) -> None:
    op = oidc_provider
    previous = op.configure(access_token_lifetime=ACCESS_LIFETIME)["access_token_lifetime"]
    try:
        # Keystone tokens of 125 s: keystoneauth renews 120 s before expiry, so the daemon
        # re-federates every few seconds and needs Check-in again and again.
        with launch.keystone_oracle(launch.KeystoneOptions(token_expiration=125),
                                    oidc=op) as ks, \
                launch.nova_oracle(keystone=ks) as nova:
            secret = tmp_path / "sa.secret"
            secret.write_text(op["client_secret"])
            secret.chmod(0o600)
            cdir = tmp_path / "conf"
            cdir.mkdir()
            (cdir / "10.conf").write_text(CONFIG.format(
                state=tmp_path / "state", auth_url=ks.auth_url,
                issuer=ks["federation"]["issuers"][0], client_id=op["client_id"],
                secret=secret, project=ks["vo_project_id"], vo=ks["vo"],
                image=nova["image_id"]))
            loaded = load_config_dir(cdir)
            assert loaded.settings is not None and not loaded.issues, loaded.issues
            store = Store(loaded.settings.database_url)
            daemon = build_daemon(cdir, loaded.settings, store, keep_reports=1000)
            before = int(op.stats()["token_requests_by_grant"].get("client_credentials", 0))

            async def run() -> float:
                runner = asyncio.create_task(daemon.run())
                started = time.monotonic()
                await asyncio.sleep(RUN_SECONDS)
                # a loaded machine creates and deletes VMs more slowly: wait for them, bounded
                while not enough_vms(daemon) and \
                        time.monotonic() - started < RUN_SECONDS * SLOWDOWN / 2:
                    await asyncio.sleep(0.5)
                daemon.stop()
                await asyncio.wait_for(runner, 60)
                return time.monotonic() - started

            elapsed = asyncio.run(run())
            calls = int(op.stats()["token_requests_by_grant"].get("client_credentials", 0)) \
                - before
            credentials = store.credentials()
            store.close()
    finally:
        op.configure(access_token_lifetime=previous)

    reports = daemon.spaces["egi.example"].reports
    assert sum(r.created for r in reports) >= 4, "VMs created"
    assert sum(r.deleted for r in reports) >= 2, "VMs deleted (max_wallclock_seconds)"
    late = [r for r in reports if r.started > reports[0].started + 3 * ACCESS_LIFETIME]
    assert late and all(r.ok for r in late), [r.error for r in late if not r.ok]
    assert 2 <= calls <= math.ceil(elapsed / ACCESS_LIFETIME) + 1, (calls, elapsed)
    federations = daemon.tools.metrics.auth_calls.labels("egi.example")._value.get()
    assert federations >= 2
    assert credentials["egi.example"]["keystone"] > time.time() - 200
