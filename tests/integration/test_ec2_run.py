"""``cloudvac run`` (the real CLI, a subprocess) with an EC2 space against moto's EC2 API on
127.0.0.1: it fills the space with belle, t2k and hyperk machines, a second run replaces
the instances stopped in between (``fizzle_seconds = 0``: a VM stopped from outside after
a few seconds would otherwise back its VO off, as it should), and the secret access key
from the 0600 credentials file appears nowhere (output, logs, state directory,
database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.ec2server import IMAGE_NAME, REGION, SECRET_KEY, MotoServer, credentials_file

CLOUDVAC = [sys.executable, "-m", "cloudvac"]
RUN_SECONDS = 300.0  # a loaded 2-core machine; a run of 4 one-second cycles takes ~5 s

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = 1
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0
web_url = https://cloudvac.example:8443

[space ec2.example]
api = ec2
region = {region}
endpoint_url = {url}
credentials_file = {credentials}
image_owners = self
flavor_names = t3.micro
processors_limit = 16
creation_burst_processors = 16
list_page_size = 5

[machinetype ec2.example belle]
fizzle_seconds = 0
target_share = 2
root_image = {image}

[machinetype ec2.example t2k]
fizzle_seconds = 0
target_share = 1
root_image = {image}

[machinetype ec2.example hyperk]
fizzle_seconds = 0
target_share = 1
root_image = {image}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLOUDVAC, *args], capture_output=True, text=True, env=env,
                          timeout=RUN_SECONDS, check=False)


def ours(ec2: MotoServer) -> list[dict[str, Any]]:
    pages = ec2.client().get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:cloudvac:space", "Values": ["ec2.example"]}])
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def by_type(instances: list[dict[str, Any]], state: str) -> Counter[str]:
    return Counter(next(t["Value"] for t in i["Tags"] if t["Key"] == "cloudvac:machinetype")
                   for i in instances if i["State"]["Name"] == state)


def test_run_fills_an_ec2_space_and_replaces_stopped_instances(ec2: MotoServer,
                                                                tmp_path: Path) -> None:
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "10-ec2.conf").write_text(CONFIG.format(
        state=tmp_path / "state", region=REGION, url=ec2.url, image=IMAGE_NAME,
        credentials=credentials_file(tmp_path)))
    validated = cli("validate", "--config-dir", str(cdir))
    assert validated.returncode == 0, validated.stderr

    first = cli("run", "--config-dir", str(cdir), "--cycles", "3")
    assert first.returncode == 0, first.stderr
    running = by_type(ours(ec2), "running")
    assert running == {"belle": 4, "t2k": 2, "hyperk": 2}, running  # 16 cores of t3.micro

    victims = [i["InstanceId"] for i in ours(ec2) if i["State"]["Name"] == "running"][:3]
    ec2.client().stop_instances(InstanceIds=victims)
    second = cli("run", "--config-dir", str(cdir), "--cycles", "4")
    assert second.returncode == 0, second.stderr
    after = ours(ec2)
    states = {i["InstanceId"]: i["State"]["Name"] for i in after}
    assert all(states[v] == "terminated" for v in victims), states
    assert by_type(after, "running") == {"belle": 4, "t2k": 2, "hyperk": 2}, second.stderr[-6000:]
    assert len(after) == 8 + 3, "three replacements, no extra creates"

    status = cli("status", "--config-dir", str(cdir), "--json")
    rows = {r["machinetype"]: r for r in json.loads(status.stdout)}
    assert {n: r["processors"] for n, r in rows.items()} == {"belle": 8, "t2k": 4, "hyperk": 4}

    for text in (validated.stdout, validated.stderr, first.stdout, first.stderr,
                 second.stdout, second.stderr, status.stdout, status.stderr):
        assert SECRET_KEY not in text
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path
