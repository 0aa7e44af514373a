"""Benchmark: the CPU the sim cloud process (``cloudvac sim-cloud``) spends per API call
when it serves many projects full of servers.

    .venv/bin/python -m benchmarks.sim_api [--projects 1000] [--servers 100]
        [--listings 2000] [--sample-creates 300] [--concurrency 8] [--out FILE]

What it does, all on 127.0.0.1:

1. starts ``python -m cloudvac sim-cloud --projects P`` (no quota, boot of a day, so no
   server boots and no VM reports during the run: what is measured is the API alone) and
   gets one Keystone token per project (password auth scoped to the project);
2. fills every project with S servers (``POST /servers``, no user_data), C requests in
   flight: the server's CPU per create, from ``/proc/PID/stat``;
3. creates ``--sample-creates`` more servers with a real rendered user_data (the generic
   template: the agent's files and config, about 12 KB), which the sim cloud parses as a VM
   would: CPU per create with user_data;
4. lists one random project's servers in full (``GET /servers/detail``, S servers on one
   page), ``--listings`` times: CPU per listing; then does the same on a second sim cloud
   with one project of S servers: a listing must cost the same whatever the number of
   other projects (it does not scan them);
5. measures the server's CPU while nobody calls for 10 s (the ticker that moves every
   project along its timeline) and its RSS.

The JSON (default ``results/sim_api.json``) holds every figure; ``ok`` is false if a call
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark

PASSWORD = "bench-password-0c41"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start(directory: Path, projects: int) -> tuple[subprocess.Popen[str], str]:
    secret = directory / "password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "cloudvac", "sim-cloud", "--password-file", str(secret),
         "--projects", str(projects), "--flavors", "m1.small:1:2048",
         "--boot-seconds", "86400", "--job-seconds", "86400", "--page-limit", "1000",
         "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"sim-cloud did not start: {line!r}")
    return process, line.split()[-1]


def _user_data() -> str:
    from cloudvac.auth.vmtokens import TokenSigner
    from cloudvac.config import Machinetype, Settings, Space
    from cloudvac.context.userdata import ContextRenderer

    settings = Settings(web_url="http://127.0.0.1:9")
    mt = Machinetype(name="belle", space="bench.example", target_share=1)
    space = Space(name="bench.example", api="sim", flavor_names=["m1.small"],
                  machinetypes={"belle": mt})
    return ContextRenderer(settings, TokenSigner(b"b" * 32))(
        space, mt, "cloudvac-0a0b0c-belle-0000000000")


class Client:
    """Tokens per project and bounded concurrent calls to one sim cloud."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url, self.gate = url, asyncio.Semaphore(concurrency)
        self.http = httpx.AsyncClient(timeout=120, trust_env=False)
        self.tokens: dict[str, str] = {}
        self.failed = 0

    async def login(self, project: str) -> None:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "cloudvac", "domain": {"name": "Default"}, "password": PASSWORD}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        async with self.gate:
            answer = await self.http.post(f"{self.url}/v3/auth/tokens", json=body)
        self.tokens[project] = answer.headers["X-Subject-Token"]

    async def create(self, project: str, name: str, user_data: str = "") -> None:
        server: dict[str, Any] = {"name": name, "flavorRef": "1", "networks": "none",
                                  "imageRef": self.image, "metadata": {
                                      "cloudvac:space": project, "cloudvac:manager": "b",
                                      "cloudvac:machinetype": "belle"}}
        if user_data:
            server["user_data"] = base64.b64encode(user_data.encode()).decode()
        async with self.gate:
            answer = await self.http.post(f"{self.url}/compute/v2.1/servers",
                                          json={"server": server},
                                          headers={"X-Auth-Token": self.tokens[project]})
        self.failed += answer.status_code != 202

    async def listing(self, project: str) -> int:
        async with self.gate:
            answer = await self.http.get(f"{self.url}/compute/v2.1/servers/detail",
                                         headers={"X-Auth-Token": self.tokens[project],
                                                  "OpenStack-API-Version": "compute 2.79"})
        self.failed += answer.status_code != 200
        return len(answer.json()["servers"]) if answer.status_code == 200 else 0

    @property
    def image(self) -> str:
        from cloudvac.clouds.simkeystone import image_id

        return image_id("cloudvac-sim-image")


async def _measure(pid: int, calls: list[Any]) -> dict[str, float]:
    cpu0, wall0 = _cpu(pid), time.monotonic()
    await asyncio.gather(*calls)
    cpu, wall = _cpu(pid) - cpu0, time.monotonic() - wall0
    return {"calls": len(calls), "server_cpu_seconds": round(cpu, 3),
            "server_cpu_ms_per_call": round(1000 * cpu / max(1, len(calls)), 3),
            "wall_seconds": round(wall, 2), "calls_per_second": round(len(calls) / wall, 1)}


async def _one_cloud(args: argparse.Namespace, projects: int, fill: bool) -> dict[str, Any]:
    names = [f"project-{i:04d}" for i in range(1, projects + 1)]
    result: dict[str, Any] = {"projects": projects, "servers_per_project": args.servers}
    with tempfile.TemporaryDirectory(prefix="bench-simapi-") as tmp:
        process, url = _start(Path(tmp), projects)
        client = Client(url, args.concurrency)
        try:
            result["tokens"] = await _measure(process.pid, [client.login(p) for p in names])
            result["creates"] = await _measure(process.pid, [
                client.create(p, f"cloudvac-0a0b0c-belle-{p[-4:]}{i:06d}")
                for i in range(args.servers) for p in names])
            if fill:
                user_data = _user_data()
                result["user_data_bytes"] = len(user_data)
                result["creates_with_user_data"] = await _measure(process.pid, [
                    client.create(random.choice(names), f"cloudvac-0a0b0c-belle-u{i:09d}",
                                  user_data) for i in range(args.sample_creates)])
            counts: list[int] = []

            async def listed(project: str) -> None:
                counts.append(await client.listing(project))

            result["listings"] = await _measure(process.pid, [
                listed(random.choice(names)) for _ in range(args.listings)])
            result["servers_per_listing"] = [min(counts), max(counts)]
            cpu0 = _cpu(process.pid)
            await asyncio.sleep(10)
            result["idle_cpu_share"] = round((_cpu(process.pid) - cpu0) / 10, 4)
            result["server_rss_mb"] = round(_rss_mb(process.pid), 1)
            result["failed_calls"] = client.failed
        finally:
            await client.http.aclose()
            process.terminate()
            process.wait(60)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    many = asyncio.run(_one_cloud(args, args.projects, True))
    one = asyncio.run(_one_cloud(args, 1, False))
    ratio = many["listings"]["server_cpu_ms_per_call"] / max(
        1e-9, one["listings"]["server_cpu_ms_per_call"])
    return {"benchmark": "sim_api", "host": host_info(), "started": started,
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "many_projects": many, "one_project": one,
            "listing_cpu_ratio_many_to_one": round(ratio, 2),
            "ok": many["failed_calls"] == 0 and one["failed_calls"] == 0}


def summary(report: dict[str, Any]) -> str:
    many, one = report["many_projects"], report["one_project"]
    return (f"sim_api: {many['projects']} projects x {many['servers_per_project']} servers: "
            f"create {many['creates']['server_cpu_ms_per_call']} ms CPU "
            f"({many['creates_with_user_data']['server_cpu_ms_per_call']} ms with "
            f"{many['user_data_bytes']} B user_data), listing of "
            f"{many['servers_per_listing'][1]} servers "
            f"{many['listings']['server_cpu_ms_per_call']} ms CPU "
            f"(one project alone: {one['listings']['server_cpu_ms_per_call']} ms), idle "
            f"{many['idle_cpu_share']:.1%} of a core, RSS {many['server_rss_mb']} MB; "
            f"ok={report['ok']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--listings", type=int, default=2000)
    parser.add_argument("--sample-creates", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sim_api.json")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_benchmark(parse_args, run, summary))
