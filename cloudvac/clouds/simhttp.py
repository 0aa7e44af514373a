"""Simulated pilots that report the way real VMs do: HTTP PUTs with their own token.

Plugged into the sim cloud by ``cloudvac run`` and ``cloudvac demo`` so that heartbeats and
shutdown codes travel through the real VM-facing endpoints and authentication.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from cloudvac.engine.states import ShutdownMessage
from cloudvac.web.tokens import TokenSigner

log = logging.getLogger("cloudvac.clouds.simhttp")
TOKEN_SECONDS = 86400.0


def machinetype_of(name: str) -> str:
    """The machinetype encoded in a cloudvac machine name (``cloudvac-HASH-MT-RANDOM``)."""
    parts = name.split("-")
    return "-".join(parts[2:-1]) if len(parts) >= 4 else ""


class HttpPilotReporter:
    def __init__(self, base_url: str, signer: TokenSigner,
                 heartbeat_file: Callable[[str, str], str],
                 client: httpx.AsyncClient | None = None) -> None:
        """``heartbeat_file(space, machinetype)`` names the machinetype's heartbeat file."""
        self.base_url, self.signer, self.heartbeat_file = base_url, signer, heartbeat_file
        self.client = client or httpx.AsyncClient(timeout=10.0)

    async def _put(self, space: str, name: str, file: str, body: bytes) -> None:
        token = self.signer.token(space, name, time.time() + TOKEN_SECONDS)
        url = f"{self.base_url}/machines/{space}/{name}/joboutputs/{file}"
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

    async def heartbeat(self, space: str, name: str, at: float) -> None:
        file = self.heartbeat_file(space, machinetype_of(name))
        await self._put(space, name, file, f"{at:.0f} 0.00\n".encode())

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        await self._put(space, name, "shutdown_message", f"{message}\n".encode())

    async def close(self) -> None:
        await self.client.aclose()
