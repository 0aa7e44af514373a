"""The sim cloud process's VMs report to the manager over HTTP, as the in-VM agent does:
a real ``cloudvac run`` (web + engine, SQLite) on two spaces, two projects of one
``cloudvac sim-cloud``, fills both; the VMs' heartbeats, shutdown messages, cpu_totals and
pilot logs reach the store through the manager's VM door, with the token of their
user_data; ended machines are replaced and accounted with their CPU time."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.context.userdata import ContextRenderer
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE
from tests.integration.webserver import SPACE as WEB_SPACE
from tests.integration.webserver import web_server
from tests.simapi_server import SimCloudServer, sim_cloud

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = 1
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0
"""
SPACE = """
[space {space}]
{openstack}
[machinetype {space} belle]
target_share = 1
root_image = cloudvac-sim-image
"""
SPACES = {"project-0001": "a.sim.example", "project-0002": "b.sim.example"}
DEADLINE_SECONDS = 420.0  # a loaded 2-core CI machine; the usual run takes under a minute


def _until(check: Callable[[], Any], deadline: float, what: str) -> Any:
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            assert found, f"not within the deadline: {what}"
            return found
        time.sleep(1.0)


def _accounted(db: Path) -> dict[str, int]:
    """Accounting records with CPU time, per space."""
    if not db.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=30)) as conn:
            return dict(conn.execute("SELECT space, count(*) FROM accounting WHERE "
                                     "cpu_seconds > 0 GROUP BY space").fetchall())
    except sqlite3.OperationalError:  # the table is not there yet
        return {}


def _config(tmp_path: Path, cloud: SimCloudServer) -> Path:
    cdir = tmp_path / "conf"
    cdir.mkdir()
    text = CONFIG.format(state=tmp_path / "state")
    for project, space in SPACES.items():
        options = cloud.space_options(tmp_path / f"password-{space}", project)
        text += SPACE.format(space=space, openstack=options)
    (cdir / "10-sim.conf").write_text(text)
    return cdir


def test_vms_of_two_projects_report_to_a_real_run(tmp_path: Path) -> None:
    with sim_cloud(tmp_path / "sim", projects=2, quota_processors=3, quota_instances=3,
                   boot_seconds=0.5, job_seconds=6, heartbeat_seconds=1) as cloud:
        cdir = _config(tmp_path, cloud)
        db = tmp_path / "state" / "cloudvac.db"
        log = (tmp_path / "run.log").open("w")
        run = subprocess.Popen([sys.executable, "-m", "cloudvac", "run", "--config-dir",
                                str(cdir)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + DEADLINE_SECONDS
            _until(lambda: all(n >= 2 for n in _accounted(db).values())
                   and len(_accounted(db)) == 2, deadline,
                   "two accounted machines with CPU time in each space")
            states = {p: cloud.state(p) for p in SPACES}
        finally:
            run.send_signal(signal.SIGTERM)
            code = run.wait(120)
            log.close()
        assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    for project, state in states.items():
        servers = state["servers"]
        assert {s["project"] for s in servers} == {project}
        assert {s["metadata"].get("cloudvac:space") for s in servers
                if s["status"] != "DELETED"} <= {SPACES[project]}
        assert all(s["agent"] for s in servers), "every VM found its agent in its user_data"
        assert sum(s["heartbeats_acked"] for s in servers) >= 2
        ended = [s for s in servers if s["shutdown_acked"]]
        assert len(ended) >= 2 and all(s["shutdown_status"] == 204 for s in ended)
        assert len(state["creates"]) > 3, "ended machines were replaced"
        assert state["usage"]["instances"] <= 3
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT space, count(heartbeat_at), count(reported_at) FROM "
                            "machines GROUP BY space ORDER BY space").fetchall()
        files = dict(conn.execute("SELECT file, count(*) FROM joboutputs GROUP BY file"))
    assert [r[0] for r in rows] == sorted(SPACES.values())
    assert all(beats >= 2 and reported >= 2 for _, beats, reported in rows), rows
    assert files.get("cpu_totals", 0) >= 4 and files.get("pilot.log", 0) >= 4, files
    report = subprocess.run([sys.executable, "-m", "cloudvac", "accounting", "--config-dir",
                             str(cdir), "--format", "json", "--by", "space"],
                            capture_output=True, text=True, timeout=600, check=True)
    groups = {g["group"]: g for g in json.loads(report.stdout)["groups"]}
    assert set(groups) == {*SPACES.values(), "TOTAL"}, report.stdout
    for group in groups.values():
        assert group["machines"] >= 2 and group["cpu_hours"] > 0
        assert group["jobs_production"] + group["jobs_user"] > 0
        assert group["shutdown_codes"].get("200", 0) >= 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _create(cloud: SimCloudServer, token: str, name: str, user_data: str = "") -> httpx.Response:
    metadata = {TAG_SPACE: WEB_SPACE, TAG_MACHINETYPE: "belle", TAG_MANAGER: "cloudvac"}
    body = {"server": {"name": name, "flavorRef": "2", "imageRef": cloud["image_id"],
                       "networks": "none", "metadata": metadata,
                       "user_data": base64.b64encode(user_data.encode()).decode()}}
    return httpx.post(f"{cloud.url}/compute/v2.1/servers", json=body, timeout=60,
                      headers={"X-Auth-Token": token})


def test_vms_report_through_the_vm_doors_and_stop_at_a_final_refusal(tmp_path: Path) -> None:
    """Two doors, one down: every report lands on the other; a VM whose token the manager
    refuses sends each report once (401 is final) and still powers off."""
    with web_server(tmp_path / "web") as web:
        dead = f"http://127.0.0.1:{_free_port()}"
        elsewhere = web.settings.model_copy(update={"web_url": dead})  # the user_data's base
        mt = web.space.machinetypes["belle"]
        good, bad = "cloudvac-0a0b0c-belle-0000000001", "cloudvac-0a0b0c-belle-0000000002"
        for name in (good, bad):
            web.add_machine(name, processors=1, started=time.time())
        with sim_cloud(tmp_path / "sim", boot_seconds=0.2, job_seconds=6, heartbeat_seconds=1,
                       vm_door=[dead, web.url]) as cloud:
            token = _token(cloud, cloud.project_name)
            renderer = ContextRenderer(elsewhere, web.signer)
            assert _create(cloud, token, good, renderer(web.space, mt, good)).status_code == 202
            wrong = ContextRenderer(elsewhere, TokenSigner(b"w" * 32))
            assert _create(cloud, token, bad, wrong(web.space, mt, bad)).status_code == 202

            def ended() -> dict[str, Any] | None:
                servers = {s["name"]: s for s in cloud.state()["servers"]}
                return servers if all(s["status"] == "SHUTOFF" for s in servers.values()) \
                    else None

            servers = _until(ended, time.monotonic() + DEADLINE_SECONDS, "both VMs off")
        record = web.store.machine(WEB_SPACE, good)
    assert servers[good]["shutdown_acked"] and servers[good]["heartbeats_acked"] >= 1
    assert servers[good]["reports_acked"] >= servers[good]["heartbeats_acked"] + 3
    assert record is not None and record.heartbeat_at is not None
    assert record.shutdown is not None and record.shutdown.code == 200
    assert web.joboutput(good, "cpu_totals") and b"JobID=" in (web.joboutput(good, "pilot.log")
                                                               or b"")
    refused = servers[bad]
    assert refused["shutdown_status"] == 401 and not refused["shutdown_acked"]
    assert refused["reports_acked"] == 0 and refused["powered_off"]
    # a 401 is not retried: at most two requests (the dead door first) per report, and a
    # 3-9 s pilot makes at most 10 heartbeats and 3 final uploads
    assert 3 <= refused["reports_sent"] <= 2 * (10 + 3), refused


def _token(cloud: SimCloudServer, project: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": cloud.username, "domain": {"name": "Default"}, "password": cloud.password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    answer = httpx.post(f"{cloud.auth_url}/auth/tokens", json=body, timeout=60)
    assert answer.status_code == 201, answer.text
    assert answer.json()["token"]["project"]["name"] == project
    return answer.headers["X-Subject-Token"]


def test_a_token_sees_and_deletes_only_its_own_projects_servers(tmp_path: Path) -> None:
    with sim_cloud(tmp_path / "sim", projects=3, quota_instances=1) as cloud:
        assert cloud.projects == ("project-0001", "project-0002", "project-0003")
        one, two = (_token(cloud, p) for p in cloud.projects[:2])
        made = _create(cloud, one, "cloudvac-0a0b0c-belle-0000000011")
        assert made.status_code == 202, made.text
        mine = made.json()["server"]["id"]
        assert _create(cloud, two, "cloudvac-0a0b0c-belle-0000000012").status_code == 202, \
            "quota is per project"
        nova = f"{cloud.url}/compute/v2.1/servers"

        def call(method: str, path: str, token: str) -> httpx.Response:
            return httpx.request(method, nova + path, headers={"X-Auth-Token": token},
                                 timeout=60)

        listed = {t: [s["id"] for s in call("GET", "/detail", t).json()["servers"]]
                  for t in (one, two)}
        assert listed[one] == [mine] and mine not in listed[two] and len(listed[two]) == 1
        assert call("GET", f"/{mine}", two).status_code == 404
        assert call("DELETE", f"/{mine}", two).status_code == 404
        assert call("GET", f"/{mine}", one).status_code == 200
        state = cloud.state()
        assert {s["project"] for s in state["servers"]} == {"project-0001", "project-0002"}
        assert state["projects"]["project-0003"]["instances"] == 0
        assert [s["id"] for s in cloud.state("project-0001")["servers"]] == [mine]
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": cloud.username, "domain": {"name": "Default"},
            "password": cloud.password}}},
            "scope": {"project": {"name": "project-0404", "domain": {"name": "Default"}}}}}
        assert httpx.post(f"{cloud.auth_url}/auth/tokens", json=body,
                          timeout=60).status_code == 401
