"""``cloudvac run --dry-run`` against the REAL local Nova (the session's shim Nova): it lists,
reads the limits, plans, and prints what it would delete and create and why; afterwards the
project's servers and the store are exactly as they were."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudvac.model.cloud import machine_metadata
from cloudvac.model.naming import machine_name
from cloudvac.store import Store
from tests.contract.conftest import budget

pytestmark = pytest.mark.contract
SPACE = "dryrun.example"
WAIT_S = 60

CONFIG = """\
[settings]
state_dir = {state}

[space {space}]
{openstack}processors_limit = 4
creation_burst_processors = 4

[machinetype {space} belle]
target_share = 1
root_image = {image}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudvac", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def servers(conn: Any) -> dict[str, tuple[str, str]]:
    """Every server of the project: id -> (name, status), as an observer (Nova can repeat a
    server across pages while states change: deduplicated by id)."""
    return {s.id: (s.name, s.status) for s in conn.compute.servers()}


def dump(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as raw:
        return list(raw.iterdump())


def ours(conn: Any, nova: Any, state: str) -> Any:
    """One server carrying this space's tags, brought to ``state`` (ACTIVE or SHUTOFF)."""
    flavor = conn.compute.find_flavor("m1.small", ignore_missing=False)
    server = conn.compute.create_server(
        name=machine_name(SPACE, "belle"), image_id=nova["image_id"], flavor_id=flavor.id,
        networks="none", metadata=machine_metadata(
            space=SPACE, machinetype="belle", manager_id="cloudvac", created_at=time.time(),
            manager_url="http://127.0.0.1:8080"))
    server = conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"],
                                          interval=0.5, wait=WAIT_S)
    if state == "SHUTOFF":
        conn.compute.stop_server(server)
        server = conn.compute.wait_for_server(server, status="SHUTOFF", failures=["ERROR"],
                                              interval=0.5, wait=WAIT_S)
    return server


@budget(60)
def test_dry_run_on_real_nova_lists_plans_and_changes_nothing(nova_shim: Any, shim_conn: Any,
                                                              tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-nova.conf").write_text(CONFIG.format(
        state=tmp_path / "state", space=SPACE, image=nova_shim["image_id"],
        openstack=nova_shim.space_options(tmp_path / "password")))
    running, stopped = ours(shim_conn, nova_shim, "ACTIVE"), ours(shim_conn, nova_shim, "SHUTOFF")
    try:
        before = servers(shim_conn)
        first = cli("run", "--dry-run", "-c", str(conf))
        print(first.stdout, first.stderr, sep="\n")
        assert first.returncode == 0, first.stderr
        out = first.stdout.splitlines()
        assert f"space {SPACE}: 2 machines listed (1 running, 1 stopped)" in out
        assert f"  would delete {stopped.name} (belle, stopped): stopped" in out
        assert not any(running.name in line for line in out)
        free = re.search(r"cloud limits: (\d+) processors and (\d+) servers free", first.stdout)
        assert free is not None, "the limits were read"
        # 4 processors at most in the space, 2 held (a stopped machine holds its cores
        # until the cloud has deleted it), and no more than the quota leaves
        expected = min(2, int(free.group(1)), int(free.group(2)))
        if expected:
            assert f"  would create {expected} x belle (flavor m1.small, 1 processors each)" \
                in out
        assert out[-1].startswith("dry run: 1 spaces, 0 failed; would delete 1 and create ")
        assert not (tmp_path / "state").exists(), "no store was created"
        assert servers(shim_conn) == before

        # with a store that drains the space: the running machine goes too, nothing new
        store = Store(f"sqlite:///{tmp_path / 'state' / 'cloudvac.db'}")
        store.set_drain(SPACE, "*", True, time.time() - 10, 0.0)
        store.close()
        stored = dump(tmp_path / "state" / "cloudvac.db")
        second = cli("run", "--dry-run", "-c", str(conf))
        print(second.stdout, second.stderr, sep="\n")
        assert second.returncode == 0, second.stderr
        out = second.stdout.splitlines()
        assert f"  would delete {stopped.name} (belle, stopped): stopped" in out
        assert f"  would delete {running.name} (belle, running): drained: 100 Drained by " \
               "operator" in out
        assert "  would create nothing" in out and "  belle: creates no more: space drained" \
            in out
        assert "  would record: 2 listed" in out  # adopted: the store had never seen them
        assert dump(tmp_path / "state" / "cloudvac.db") == stored
        assert servers(shim_conn) == before
    finally:
        for server in (running, stopped):
            shim_conn.compute.delete_server(server, ignore_missing=True)
        for server in (running, stopped):
            shim_conn.compute.wait_for_delete(server, interval=0.5, wait=WAIT_S)
