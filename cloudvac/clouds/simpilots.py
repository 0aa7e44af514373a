"""Where simulated pilots send what a real VM would upload.

``HttpPilots`` sends it the way real VMs do, over HTTP with each machine's own token to
the real VM-facing endpoints (``cloudvac run`` and ``cloudvac demo``); ``StorePilots``
writes it straight into the store where the web side would, from a worker thread (``cloudvac
run`` of a sim space without the web side); ``BatchPilots`` keeps it until its owner
flushes it into the store, on the caller's thread, the heartbeats in one transaction
(``cloudvac simulate``, whose clock is virtual: repeatable and fast); ``NullPilots`` drops
it (benchmarks of the engine alone).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.model.layout import CPU_TOTALS_FILE, PILOT_LOG_FILE, SHUTDOWN_FILE, joboutput_url
from cloudvac.model.naming import machinetype_of
from cloudvac.model.records import Recorded
from cloudvac.model.states import ShutdownMessage

if TYPE_CHECKING:  # httpx only where pilots report over HTTP (not `cloudvac simulate`)
    import httpx

log = logging.getLogger("cloudvac.clouds.simpilots")
TOKEN_SECONDS = 86400.0


class PilotReporter(Protocol):
    """Where simulated pilots send what a real VM would upload.  Calls arrive in timeline
    order; a reporter may be slow or raise (errors are logged and dropped)."""

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None: ...

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        ...


@dataclass(frozen=True, slots=True)
class PilotRun:
    """How a simulated pilot ran: from ``started_at`` to ``stopped_at`` on ``processors``,
    ending with ``message``."""

    started_at: float
    stopped_at: float
    processors: int
    message: ShutdownMessage


@runtime_checkable
class TotalsReporter(Protocol):
    """A reporter that also sends what a real VM's agent uploads at its end beside the
    shutdown message: ``cpu_totals`` and the pilot's log (``sim_totals`` makes them)."""

    async def totals(self, space: str, name: str, run: PilotRun) -> None: ...


def sim_totals(name: str, run: PilotRun) -> tuple[bytes, bytes]:
    """(``cpu_totals``, ``pilot.log``) of a simulated pilot: 80-95 % of its processors busy
    (user), 3 % system, the rest idle; a job every 10 s of its run (none for 300, no
    work), one in four a user job; all derived from the machine's name, so repeatable."""
    started_at, stopped_at = run.started_at, run.stopped_at
    wall = max(stopped_at - started_at, 0.0) * run.processors
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    user, system = wall * (0.80 + 0.15 * (seed % 1000) / 1000), wall * 0.03
    cpu = f"{user:.2f} {system:.2f} {max(wall - user - system, 0.0):.2f}\n".encode()
    jobs = 0 if run.message.code == 300 else max(1, int((stopped_at - started_at) // 10))
    log_lines = [f"{started_at + 10 * i:.0f} WorkloadManagement/JobAgent INFO: Received "
                 f"JobID={seed % 100000 * 100 + i}, JobType="
                 f"{'User' if (seed + i) % 4 == 0 else 'MCSimulation'}\n" for i in range(jobs)]
    return cpu, "".join(log_lines).encode()


class NullPilots:
    """A reporter that drops everything."""

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        """Drop it."""

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        """Drop it."""


class ReportSink(Protocol):
    """What ``StorePilots`` writes to (the store's VM-side methods)."""

    def record_heartbeat(self, space: str, name: str, at: float) -> bool: ...

    def record_shutdown(self, space: str, name: str, message: ShutdownMessage,
                        at: float) -> Recorded: ...


class StorePilots:
    """Writes the two facts the web side would (heartbeat, shutdown message) to the same
    store methods, with the pilots' (simulated) times, from a worker thread."""

    def __init__(self, sink: ReportSink) -> None:
        self.sink = sink

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        if not await asyncio.to_thread(self.sink.record_heartbeat, space, name, at):
            log.debug("space=%s machinetype=%s machine=%s heartbeat for unknown machine",
                      space, machinetype_of(name), name)

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        recorded = await asyncio.to_thread(self.sink.record_shutdown, space, name, message, at)
        _log_shutdown(space, name, message, recorded)


def _log_shutdown(space: str, name: str, message: ShutdownMessage, recorded: Recorded) -> None:
    if recorded is not Recorded.UNKNOWN:
        log.info("space=%s machinetype=%s machine=%s shutdown_message: %s", space,
                 machinetype_of(name), name, message)
    else:
        log.warning("space=%s machinetype=%s machine=%s shutdown_message for unknown "
                    "machine: %s", space, machinetype_of(name), name, message)


class BatchSink(Protocol):
    """What ``BatchPilots`` writes to (the store's VM-side methods, heartbeats batched)."""

    def record_heartbeats(self, beats: Mapping[tuple[str, str], float]) -> int: ...

    def record_shutdown(self, space: str, name: str, message: ShutdownMessage,
                        at: float) -> Recorded: ...


class BatchPilots:
    """Keeps what the pilots report until ``flush``, which writes it to the store on the
    caller's thread: every heartbeat kept (the latest per machine) in one transaction,
    then each shutdown message in the order reported.  For a virtual clock, whose owner
    flushes before the manager reads the store: nothing races the cycle, and a simulated
    hour costs a few transactions instead of one per heartbeat."""

    def __init__(self, sink: BatchSink) -> None:
        self.sink = sink
        self._beats: dict[tuple[str, str], float] = {}
        self._shutdowns: list[tuple[str, str, ShutdownMessage, float]] = []

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        key = (space, name)
        self._beats[key] = max(at, self._beats.get(key, at))

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        self._shutdowns.append((space, name, message, at))

    def flush(self) -> int:
        """Write what was kept; how many reports that was."""
        beats, self._beats = self._beats, {}
        shutdowns, self._shutdowns = self._shutdowns, []
        if beats:
            self.sink.record_heartbeats(beats)
        for space, name, message, at in shutdowns:
            _log_shutdown(space, name, message,
                          self.sink.record_shutdown(space, name, message, at))
        return len(beats) + len(shutdowns)


class HttpPilots:
    """PUTs to ``base_url`` with each machine's own token, as the in-VM agent does."""

    def __init__(self, base_url: str, signer: TokenSigner,
                 client: httpx.AsyncClient | None = None) -> None:
        import httpx

        self.base_url, self.signer = base_url, signer
        self.client = client or httpx.AsyncClient(timeout=10.0)

    async def _put(self, space: str, name: str, file: str, body: bytes) -> None:
        import httpx

        token = self.signer.token(space, name, time.time() + TOKEN_SECONDS)
        url = joboutput_url(self.base_url, space, name, file)
        try:
            response = await self.client.put(url, content=body,
                                             headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            log.warning("space=%s machinetype=%s machine=%s upload of %s failed: %s", space,
                        machinetype_of(name), name, file, type(exc).__name__)
            return
        if response.status_code != 204:
            log.warning("space=%s machinetype=%s machine=%s upload of %s answered %d", space,
                        machinetype_of(name), name, file, response.status_code)

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None:
        await self._put(space, name, file, f"{at:.0f} 0.00\n".encode())

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        await self._put(space, name, SHUTDOWN_FILE, f"{message}\n".encode())

    async def totals(self, space: str, name: str, run: PilotRun) -> None:
        cpu, pilot_log = sim_totals(name, run)
        await self._put(space, name, CPU_TOTALS_FILE, cpu)
        await self._put(space, name, PILOT_LOG_FILE, pilot_log)

    async def close(self) -> None:
        await self.client.aclose()
