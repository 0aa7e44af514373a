"""Fill the sim cloud's projects before the managers start (``ha_postgres --fill adopt``):
servers created through its Nova API, tagged for their space, machinetype and manager as
cloudvac tags its own, without user_data (their VMs do not report), so that each
instance's first cycle of a space adopts them from their tags instead of creating
them one by one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from benchmarks._haprocs import SIM_PASSWORD

CONCURRENCY = 16


async def _token(http: httpx.AsyncClient, url: str, project: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "cloudvac", "domain": {"name": "Default"}, "password": SIM_PASSWORD}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    answer = await http.post(f"{url}/v3/auth/tokens", json=body)
    answer.raise_for_status()
    return str(answer.headers["X-Subject-Token"])


async def _fill_project(http: httpx.AsyncClient, gate: asyncio.Semaphore, url: str,
                        project_space: tuple[str, str], machines: int) -> int:
    from cloudvac.clouds.simkeystone import image_id
    from cloudvac.model.cloud import TAG_CREATED, TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE
    from cloudvac.model.naming import machine_name

    project, space = project_space
    async with gate:
        token = await _token(http, url, project)
    failed = 0
    for _ in range(machines):
        server = {"name": machine_name(space, "pilot"), "flavorRef": "1",
                  "imageRef": image_id("cloudvac-sim-image"), "networks": "none",
                  "metadata": {TAG_SPACE: space, TAG_MACHINETYPE: "pilot",
                               TAG_MANAGER: "cloudvac", TAG_CREATED: f"{time.time():.0f}"}}
        async with gate:
            answer = await http.post(f"{url}/compute/v2.1/servers", json={"server": server},
                                     headers={"X-Auth-Token": token})
        failed += answer.status_code != 202
    return failed


async def _prefill(url: str, spaces: dict[str, str], machines: int) -> int:
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=300, trust_env=False) as http:
        done = await asyncio.gather(*(_fill_project(http, gate, url, pair, machines)
                                      for pair in spaces.items()))
    return sum(done)


def prefill(url: str, spaces: dict[str, str], machines: int) -> dict[str, Any]:
    """``machines`` tagged servers in each project (``spaces``: project -> space)."""
    t0 = time.monotonic()
    failed = asyncio.run(_prefill(url, spaces, machines))
    return {"servers": len(spaces) * machines - failed, "failed_creates": failed,
            "seconds": round(time.monotonic() - t0, 1)}
