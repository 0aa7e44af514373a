"""Heartbeats are batched: the request only notes the time; a flusher commits once a second.

At 60,000 VMs beating once a minute that is 1,000 requests a second; one database commit
each would be the bottleneck (SQLite fsync), while one commit per second is nothing.  A
crash loses at most one flush period of heartbeats, which the next minute's beats repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cloudvac.store import Store

log = logging.getLogger("cloudvac.web.heartbeats")


class HeartbeatBuffer:
    def __init__(self, store: Store, flush_seconds: float = 1.0) -> None:
        self.store, self.flush_seconds = store, flush_seconds
        self._pending: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, space: str, name: str, at: float) -> None:
        key = (space, name)
        if self._pending.get(key, 0.0) < at:
            self._pending[key] = at

    async def flush(self) -> int:
        batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            return await asyncio.to_thread(self.store.record_heartbeats, batch)
        except Exception:
            # Keep them for the next try rather than lose every beat of the period.
            log.exception("space=- machinetype=- machine=- heartbeat flush failed; retrying")
            for key, at in batch.items():
                self.note(key[0], key[1], at)
            return 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="heartbeat-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
