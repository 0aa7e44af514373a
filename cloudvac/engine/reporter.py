"""A PilotReporter that writes simulated pilots' reports straight into the store.

It stands where the VM-facing web service will stand: the same two facts (heartbeat,
shutdown message) arrive at the same store methods.
"""

from __future__ import annotations

import asyncio
import logging

from cloudvac.engine.states import ShutdownMessage
from cloudvac.store import Store

log = logging.getLogger("cloudvac.engine.reporter")


class StoreReporter:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def heartbeat(self, space: str, name: str, at: float) -> None:
        if not await asyncio.to_thread(self.store.record_heartbeat, space, name, at):
            log.debug("space=%s machinetype=- machine=%s heartbeat for unknown machine",
                      space, name)

    async def shutdown(self, space: str, name: str, message: ShutdownMessage, at: float) -> None:
        if await asyncio.to_thread(self.store.record_shutdown, space, name, message, at):
            log.info("space=%s machinetype=- machine=%s shutdown_message: %s", space, name,
                     message)
        else:
            log.warning("space=%s machinetype=- machine=%s shutdown_message for unknown "
                        "machine: %s", space, name, message)
