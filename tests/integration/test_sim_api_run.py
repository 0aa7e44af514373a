"""``cloudvac run`` (the real command, a subprocess) with an OpenStack space pointed at the
simulated cloud served as its own process (``cloudvac sim-cloud``): a few cycles fill the
project's quota, with one Keystone token and no duplicate creates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.simapi_server import sim_cloud

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = 0.5
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0

[space simapi.example]
{openstack}creation_burst_processors = 6

[machinetype simapi.example belle]
target_share = 1
root_image = cloudvac-sim-image
"""


def test_run_fills_the_sim_cloud_through_the_openstack_adapter(tmp_path: Path) -> None:
    with sim_cloud(tmp_path / "sim", quota_processors=6, quota_instances=20,
                   page_limit=4) as cloud:
        cdir = tmp_path / "conf"
        cdir.mkdir()
        (cdir / "10-simapi.conf").write_text(CONFIG.format(
            state=tmp_path / "state", openstack=cloud.space_options(tmp_path / "password")))
        run = subprocess.run([sys.executable, "-m", "cloudvac", "run", "--config-dir",
                              str(cdir), "--cycles", "4"], capture_output=True, text=True,
                             timeout=600, check=False)
        assert run.returncode == 0, run.stderr
        state = cloud.state()
        status = subprocess.run([sys.executable, "-m", "cloudvac", "status", "--config-dir",
                                 str(cdir), "--json"], capture_output=True, text=True,
                                timeout=600, check=False)
    live = [s for s in state["servers"] if s["status"] != "DELETED"]
    assert len(live) == 6, state["servers"]
    assert all(s["metadata"]["cloudvac:space"] == "simapi.example" for s in live)
    assert all(s["flavor"] == "m1.small" for s in live)
    assert state["usage"]["cores"] == 6
    assert set(state["creates"].values()) == {1}, "no name created twice"
    assert state["tokens_issued"] == 1, "one Keystone token for the whole run"
    rows = json.loads(status.stdout)
    assert [(r["space"], r["machinetype"]) for r in rows] == [("simapi.example", "belle")]
    assert rows[0]["starting"] + rows[0]["running"] == 6
    assert cloud.password not in run.stderr and cloud.password not in run.stdout
