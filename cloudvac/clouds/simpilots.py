"""Where simulated pilots send what a real VM would upload.

``HttpPilots`` sends it the way real VMs do, over HTTP with each machine's own token to
the real VM-facing endpoints (``cloudvac run`` and ``cloudvac demo``); ``StorePilots``
writes it straight into the store where the web side would (``cloudvac simulate``, whose
clock is virtual); ``NullPilots`` drops it (benchmarks of the engine alone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import httpx

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.model.layout import SHUTDOWN_FILE, joboutput_url
from cloudvac.model.naming import machinetype_of
from cloudvac.model.records import Recorded
from cloudvac.model.states import ShutdownMessage

log = logging.getLogger("cloudvac.clouds.simpilots")
TOKEN_SECONDS = 86400.0


class PilotReporter(Protocol):
    """Where simulated pilots send what a real VM would upload.  Calls arrive in timeline
    order; a reporter may be slow or raise (errors are logged and dropped)."""

    async def heartbeat(self, space: str, name: str, at: float, file: str) -> None: ...

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        ...


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
        if recorded is not Recorded.UNKNOWN:
            log.info("space=%s machinetype=%s machine=%s shutdown_message: %s", space,
                     machinetype_of(name), name, message)
        else:
            log.warning("space=%s machinetype=%s machine=%s shutdown_message for unknown "
                        "machine: %s", space, machinetype_of(name), name, message)


class HttpPilots:
    """PUTs to ``base_url`` with each machine's own token, as the in-VM agent does."""

    def __init__(self, base_url: str, signer: TokenSigner,
                 client: httpx.AsyncClient | None = None) -> None:
        self.base_url, self.signer = base_url, signer
        self.client = client or httpx.AsyncClient(timeout=10.0)

    async def _put(self, space: str, name: str, file: str, body: bytes) -> None:
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

    async def close(self) -> None:
        await self.client.aclose()
