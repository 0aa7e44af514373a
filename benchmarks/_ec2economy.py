"""The EC2 part of ``benchmarks.api_economy``: requests per machine per hour of the real
``Daemon`` with one ``api = ec2`` space against moto's EC2 API in server mode on 127.0.0.1.

Every HTTP request the adapter sends is counted by a botocore ``before-send`` hook on the
space's ``Ec2Cloud`` (``Ec2Cloud.hooks``; retries would be counted too), by operation.  The
space is filled (``--ec2-machines`` t3.micro instances, ``processors_limit`` = their
vCPUs), then ``--ec2-steady`` steady cycles are counted.  Two runs:

* ``page_is_fleet``: ``list_page_size`` = the fleet (at least 5, EC2's minimum), the case of
  1,000 machines with EC2's page of 1,000: one ``DescribeInstances`` per cycle;
* ``small_pages``: ``list_page_size = 5``, which checks pages = ceil(n / page size)
  (moto, as EC2, sends a ``NextToken`` only while more instances follow; real EC2 may
  also end on an empty page, one request more).

Per machine-hour at 1,000 machines and a 60 s cycle = steady requests per cycle x 60 /
1,000 (+ the hourly ``DescribeInstanceTypes``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

CYCLE = 60.0
START_SECONDS = 120.0
RUN_SECONDS = 300.0
REGION = "eu-west-1"

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = {period}
space_timeout_seconds = 120
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0

[space ec2.bench]
api = ec2
region = {region}
endpoint_url = {url}
credentials_file = {credentials}
flavor_names = t3.micro
processors_limit = {processors}
creation_burst_processors = {processors}
list_page_size = {page}

[machinetype ec2.bench pilot]
target_share = 1
root_image = {image}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Moto:
    """moto's server on 127.0.0.1 for one run; one AMI registered."""

    def __enter__(self) -> Moto:
        import boto3
        import httpx

        env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
               "MOTO_ENABLE_AMI_VALIDATION": "true"}
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H",
                                         "127.0.0.1", "-p", str(port)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("moto.server did not start") from None
                time.sleep(0.1)
        client = boto3.client("ec2", region_name=REGION, endpoint_url=self.url,
                              aws_access_key_id="AKIABENCH", aws_secret_access_key="bench")
        self.image = client.register_image(
            Name="bench", RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}]
        )["ImageId"]
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ec2_run(args: argparse.Namespace, page: int) -> dict[str, Any]:
    from cloudvac.config import load_config_dir
    from cloudvac.service import build_daemon
    from cloudvac.store import Store

    machines, started = args.ec2_machines, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudvac-api-ec2-") as tmp, Moto() as moto:
        root = Path(tmp)
        credentials = root / "aws"
        credentials.write_text("[default]\naws_access_key_id = AKIABENCH\n"
                               "aws_secret_access_key = bench\n")
        credentials.chmod(0o600)
        cdir = root / "cloudvac.d"
        cdir.mkdir()
        (cdir / "10-ec2.conf").write_text(CONFIG.format(
            state=root / "state", period=args.ec2_period, region=REGION, url=moto.url,
            credentials=credentials, processors=2 * machines, page=page, image=moto.image))
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None and not loaded.issues, loaded.issues[:3]
        store = Store(loaded.settings.database_url)
        daemon = build_daemon(cdir, loaded.settings, store, keep_reports=10_000)
        try:
            per_cycle = asyncio.run(_drive(daemon, machines, args.ec2_steady))
        finally:
            store.close()
    steady = per_cycle["steady"]
    mean = {k: round(sum(c.get(k, 0) for c in steady) / len(steady), 3)
            for k in sorted({k for c in steady for k in c})} if steady else {}
    per_cycle_total = round(sum(mean.values()), 3)
    pages = math.ceil(machines / page)
    return {
        "machines": machines, "list_page_size": page, "cycle_seconds": args.ec2_period,
        "requests_by_operation_total": dict(per_cycle["total"]),
        "reached_steady_state": bool(steady), "steady_cycles": len(steady),
        "steady_requests_per_cycle_by_operation": mean,
        "steady_requests_per_cycle": per_cycle_total,
        "expected_pages_per_cycle": pages,
        "pages_formula_holds": bool(steady) and all(
            c.get("DescribeInstances", 0) == pages for c in steady),
        "per_machine_hour_at_n_polling": round(per_cycle_total * 3600 / CYCLE / machines, 4),
        "run_seconds": round(time.monotonic() - started, 1),
    }


async def _drive(daemon: Any, machines: int, steady_cycles: int) -> dict[str, Any]:
    from cloudvac.clouds.ec2 import Ec2Cloud

    counts: Counter[str] = Counter()
    cycles: list[Counter[str]] = []
    hooked: set[int] = set()

    def count(**kwargs: Any) -> None:
        counts[str(kwargs.get("event_name", "")).rsplit(".", 1)[-1]] += 1

    runner = asyncio.create_task(daemon.run())
    deadline = time.monotonic() + RUN_SECONDS
    steady_from: int | None = None
    seen, last = 0, Counter[str]()
    try:
        while not runner.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            cloud = daemon.clouds.cloud("ec2.bench")
            if isinstance(cloud, Ec2Cloud) and id(cloud) not in hooked:
                cloud.hooks.append(count)
                hooked.add(id(cloud))
            state = daemon.spaces.get("ec2.bench")
            if state is None or state.cycles <= seen:
                continue
            seen = state.cycles
            cycles.append(counts - last)
            last = Counter(counts)
            report = state.reports[-1]
            st = report.status.get("pilot")
            quiet = st is not None and st.machines.get("running", 0) == machines \
                and report.created == report.deleted == 0
            if steady_from is None and quiet:
                steady_from = len(cycles)
            elif steady_from is not None and len(cycles) >= steady_from + steady_cycles:
                break
    finally:
        daemon.stop()
        await asyncio.wait_for(runner, 120)
    steady = [dict(c) for c in cycles[steady_from:]] if steady_from is not None else []
    return {"steady": steady, "total": counts}


def ec2_report(args: argparse.Namespace) -> dict[str, Any]:
    """Both runs and the extrapolation to 1,000 machines (page 1,000, 60 s cycle)."""
    if args.skip_ec2:
        return {"skipped": "--skip-ec2"}
    runs = {"page_is_fleet": ec2_run(args, max(5, args.ec2_machines)),
            "small_pages": ec2_run(args, 5)}
    measured = runs["page_is_fleet"]["steady_requests_per_cycle"]
    per_hour = measured * 3600 / CYCLE + 1  # + DescribeInstanceTypes, cached an hour
    return {
        "what": "measured on moto's EC2 API (server mode, 127.0.0.1): botocore before-send "
                "hook counts per steady cycle; extrapolated to 1,000 machines with EC2's "
                "page of 1,000 and a 60 s cycle, space full at processors_limit",
        "runs": runs,
        "per_machine_hour_at_1000_polling_and_types": round(per_hour / 1000, 4),
        "ok": all(r["reached_steady_state"] and r["pages_formula_holds"]
                  for r in runs.values()),
    }


def ec2_summary(ec2: dict[str, Any]) -> list[str]:
    if "skipped" in ec2:
        return [f"  (d) EC2 on moto: skipped ({ec2['skipped']})"]
    lines = []
    for name, r in ec2["runs"].items():
        lines.append(f"  (d) EC2 on moto {name}, MEASURED at {r['machines']} instances, page "
                     f"{r['list_page_size']}: steady {r['steady_requests_per_cycle_by_operation']}"
                     f" per cycle (pages formula holds: {r['pages_formula_holds']})")
    lines.append(f"      -> at 1,000 machines {ec2['per_machine_hour_at_1000_polling_and_types']}"
                 " requests per machine-hour (listing + hourly instance types)")
    return lines


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ec2-machines", type=int, default=24)
    parser.add_argument("--ec2-period", type=float, default=1.0)
    parser.add_argument("--ec2-steady", type=int, default=10)
    parser.add_argument("--skip-ec2", action="store_true")
