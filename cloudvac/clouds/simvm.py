"""Simulated VMs of the sim cloud process that report to the manager over HTTP, as the
in-VM agent does (``cloudvac/context/agent.py``, ``vmupload.py``).

At create, the server's user_data is read the way cloud-init and the agent read it: the
cloud-config's ``write_files`` entry ``/etc/cloudvac/agent.json`` (base64 or gzip+base64)
holds the agent's JSON config, whose ``joboutputs_url``, ``token`` and ``heartbeat_file``
are all a VM needs to report.  A server without one (an operator's own template, no
user_data) runs its timeline silently, like a VM whose agent never started.

The server's timeline is the simulator's (``SimProject``: boot, heartbeats, the pilot's
end and shutdown code); its reports come here (``VmPilots`` is the project's reporter) and
go out as the agent sends them: ``PUT {joboutputs_url}/{file}`` with ``Authorization:
Bearer {token}``; 2xx is stored, 408/429/5xx and connection errors are retried with
exponential backoff and jitter (0.5 s doubling to 30 s, x0.5-1.5) until a deadline, any
other answer is final.  A heartbeat (``"<unix time> 0.00\\n"``) is retried until the next
one is due, and a newer one replaces a pending one; at the pilot's end the shutdown
message, then ``cpu_totals`` and ``pilot.log`` (``simpilots.sim_totals``, with its JobID
lines) share ``final_upload_seconds``, and only then does the server power off: Nova shows
it ACTIVE until its final uploads are over (``NovaView.holding``).  A deleted server stops
reporting at once.

Doors: with ``doors`` (``--vm-door``) each upload picks one of them at random (DNS
round-robin) in place of the scheme, host and port of ``joboutputs_url``, and tries the
next on a connection error.  Requests in flight are bounded (``concurrency``) and share one
httpx client, on the server's event loop.  The token is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from cloudvac.clouds.sim import SimProject
from cloudvac.clouds.simpilots import PilotRun, sim_totals
from cloudvac.model.layout import (
    CPU_TOTALS_FILE,
    FILE_NAME,
    HEARTBEAT_FILE,
    PILOT_LOG_FILE,
    SHUTDOWN_FILE,
)
from cloudvac.model.naming import machinetype_of
from cloudvac.model.states import MachineState, ShutdownMessage

log = logging.getLogger("cloudvac.clouds.simvm")
AGENT_JSON = "/etc/cloudvac/agent.json"
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0  # the agent's (vmupload.py)
FINAL_UPLOAD_SECONDS = 300.0
REQUEST_SECONDS = 20.0
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What a simulated VM takes from its agent's config."""

    joboutputs_url: str
    token: str = field(repr=False)
    heartbeat_file: str = HEARTBEAT_FILE


def _decode(entry: dict[str, Any]) -> bytes:
    content = entry.get("content", "")
    encoding = str(entry.get("encoding", "text")).lower()
    if not isinstance(content, str):
        raise ValueError("content is not text")
    if encoding in ("b64", "base64"):
        return base64.b64decode(content, validate=True)
    if encoding in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(content, validate=True))
    return content.encode()


def agent_config(user_data: str) -> AgentConfig | None:
    """The agent's config in ``user_data`` (a cloud-config), None if it has none usable."""
    if AGENT_JSON not in user_data:
        return None
    try:
        doc = yaml.load(user_data, Loader=_Loader)
        entries = [e for e in doc.get("write_files") or [] if isinstance(e, dict)
                   and e.get("path") == AGENT_JSON]
        raw = json.loads(_decode(entries[0])) if entries else None
    except (yaml.YAMLError, AttributeError, ValueError, binascii.Error, OSError, EOFError):
        return None
    if not isinstance(raw, dict):
        return None
    url, token = raw.get("joboutputs_url"), raw.get("token")
    file = raw.get("heartbeat_file") or HEARTBEAT_FILE
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or \
            not isinstance(token, str) or not token or any(c.isspace() for c in token) or \
            not isinstance(file, str) or not FILE_NAME.fullmatch(file):
        return None
    return AgentConfig(url.rstrip("/"), token, file)


@dataclass(eq=False, slots=True)
class SimVm:
    """One server's agent and what it sent (``/_sim/state``)."""

    server_id: str
    name: str
    space: str
    agent: AgentConfig | None
    sent: int = 0  # HTTP requests
    acked: int = 0  # 2xx answers
    heartbeats_acked: int = 0
    shutdown_status: int | None = None  # the final answer to the shutdown message
    powered_off: bool = False
    pending: bytes | None = None  # the newest heartbeat not sent yet
    pending_until: float = 0.0
    beating: bool = False
    run: PilotRun | None = None

    @property
    def shutdown_acked(self) -> bool:
        return self.shutdown_status is not None and 200 <= self.shutdown_status < 300

    def state(self) -> dict[str, Any]:
        return {"agent": self.agent is not None, "reports_sent": self.sent,
                "reports_acked": self.acked, "heartbeats_acked": self.heartbeats_acked,
                "shutdown_status": self.shutdown_status, "shutdown_acked": self.shutdown_acked,
                "powered_off": self.powered_off}


Alive = Callable[[], bool]


class VmSender:
    """The HTTP side of every simulated VM of the process (see the module docstring)."""

    def __init__(self, doors: Sequence[str] = (), concurrency: int = 100,
                 clock: Callable[[], float] = time.time,
                 final_upload_seconds: float = FINAL_UPLOAD_SECONDS,
                 seed: int | None = None) -> None:
        self.doors = tuple(d.rstrip("/") for d in doors)
        self.clock, self.final_upload_seconds = clock, final_upload_seconds
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self._client: httpx.AsyncClient | None = None
        self._gate: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _start(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def heartbeat(self, vm: SimVm, at: float, until: float, alive: Alive) -> None:
        """Queue ``vm``'s heartbeat made at ``at``, worth retrying until ``until``."""
        vm.pending, vm.pending_until = f"{int(at)} 0.00\n".encode(), until
        if not vm.beating:
            vm.beating = True
            self._start(self._beat(vm, alive))

    async def _beat(self, vm: SimVm, alive: Alive) -> None:
        assert vm.agent is not None
        try:
            while vm.pending is not None and alive():
                body, vm.pending = vm.pending, None
                status = await self.put(vm, vm.agent.heartbeat_file, body, vm.pending_until,
                                        alive)
                if status is not None and 200 <= status < 300:
                    vm.heartbeats_acked += 1
        finally:
            vm.beating = False

    def final(self, vm: SimVm, message: ShutdownMessage, alive: Alive,
              powered_off: Callable[[], None]) -> None:
        """Send ``vm``'s shutdown message, cpu_totals and pilot.log, then ``powered_off()``."""
        self._start(self._final(vm, message, alive, powered_off))

    async def _final(self, vm: SimVm, message: ShutdownMessage, alive: Alive,
                     powered_off: Callable[[], None]) -> None:
        deadline = self.clock() + self.final_upload_seconds
        try:
            vm.shutdown_status = await self.put(vm, SHUTDOWN_FILE, str(message).encode(),
                                                deadline, alive)
            if vm.run is not None:
                cpu, pilot_log = sim_totals(vm.name, vm.run)
                await self.put(vm, CPU_TOTALS_FILE, cpu, deadline, alive)
                await self.put(vm, PILOT_LOG_FILE, pilot_log, deadline, alive)
            log.info("space=%s machinetype=%s machine=%s shutdown_message %s: %s", vm.space,
                     _machinetype(vm), vm.name, message, vm.shutdown_status or "no answer")
        finally:
            vm.powered_off = True
            powered_off()

    async def put(self, vm: SimVm, file: str, body: bytes, deadline: float,
                  alive: Alive) -> int | None:
        """Upload until stored, refused for good, past ``deadline`` or no longer alive:
        the last HTTP status (None: no answer)."""
        attempt, status = 0, None
        while alive():
            status = await self._once(vm, file, body)
            if status is not None and (200 <= status < 300 or (
                    status < 500 and status not in (408, 429))):
                return status
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** attempt)
            delay *= self.rng.uniform(0.5, 1.5)
            attempt += 1
            if self.clock() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        if status is None or status >= 300:
            log.debug("space=%s machinetype=%s machine=%s PUT %s gave up after %d tries: %s",
                      vm.space, _machinetype(vm), vm.name, file, attempt, status)
        return status

    def _urls(self, vm: SimVm, file: str) -> list[str]:
        assert vm.agent is not None
        url = f"{vm.agent.joboutputs_url}/{file}"
        if not self.doors:
            return [url]
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        doors = list(self.doors)
        self.rng.shuffle(doors)
        return [door + path for door in doors]

    async def _once(self, vm: SimVm, file: str, body: bytes) -> int | None:
        """One upload: the doors in random order until one answers."""
        assert vm.agent is not None
        if self._client is None or self._gate is None:
            self._client = httpx.AsyncClient(
                timeout=REQUEST_SECONDS, trust_env=False, follow_redirects=False,
                limits=httpx.Limits(max_connections=self.concurrency,
                                    max_keepalive_connections=self.concurrency))
            self._gate = asyncio.Semaphore(self.concurrency)
        headers = {"Authorization": f"Bearer {vm.agent.token}",
                   "Content-Type": "application/octet-stream"}
        for url in self._urls(vm, file):
            async with self._gate:
                vm.sent += 1
                try:
                    response = await self._client.put(url, content=body, headers=headers)
                except httpx.ConnectError:
                    continue  # this door is down: the next one
                except httpx.HTTPError:
                    return None
            if 200 <= response.status_code < 300:
                vm.acked += 1
            return response.status_code
        return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


def _machinetype(vm: SimVm) -> str:
    return machinetype_of(vm.name) or "-"


class VmPilots:
    """The reporter of one project's pilots (``SimProject.register``): each server's
    ``SimVm``, by name, and the power-offs its final uploads hold back."""

    def __init__(self, project: SimProject, sender: VmSender, heartbeat_seconds: float,
                 powered_off: Callable[[str], None]) -> None:
        self.project, self.sender = project, sender
        self.heartbeat_seconds, self._powered_off = heartbeat_seconds, powered_off
        self.vms: dict[str, SimVm] = {}
        self.by_id: dict[str, SimVm] = {}

    def boot(self, server_id: str, name: str, space: str, user_data: str) -> SimVm:
        """A server was created with ``user_data``: its VM's agent, if any."""
        vm = SimVm(server_id, name, space, agent_config(user_data))
        self.vms[name] = self.by_id[server_id] = vm
        srv = self.project.servers[server_id]
        if srv.owner is not None:
            self.project.register(srv.owner, self)
        if vm.agent is not None:
            srv.heartbeat_file = vm.agent.heartbeat_file
        return vm

    def forget(self, server_id: str) -> None:
        vm = self.by_id.pop(server_id, None)
        if vm is not None and self.vms.get(vm.name) is vm:
            del self.vms[vm.name]

    def _alive(self, vm: SimVm, *states: MachineState) -> Alive:
        servers = self.project.servers

        def alive() -> bool:
            srv = servers.get(vm.server_id)
            return srv is not None and srv.state in states

        return alive

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        vm = self.vms.get(name)
        if vm is not None and vm.agent is not None:
            self.sender.heartbeat(vm, at, at + self.heartbeat_seconds,
                                  self._alive(vm, MachineState.RUNNING))

    async def totals(self, space: str, name: str, run: PilotRun) -> None:
        vm = self.vms.get(name)
        if vm is not None:
            vm.run = run

    def holds(self, server_id: str) -> bool:
        """Whether the server's power-off waits for its final uploads."""
        vm = self.by_id.get(server_id)
        return vm is not None and vm.agent is not None and vm.run is not None and \
            not vm.powered_off

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        vm = self.vms.get(name)
        if vm is None or vm.agent is None:
            return
        if vm.run is None:  # the project always sends totals first; be safe
            vm.run = PilotRun(at, at, 1, message)
        server_id = vm.server_id
        self.sender.final(vm, message, self._alive(vm, MachineState.STOPPED),
                          lambda: self._powered_off(server_id))
