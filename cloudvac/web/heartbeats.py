"""Heartbeats are batched: the request only notes time and body; a flusher, once a second,
commits all times and all heartbeat files' bodies to the store in one transaction (one
executemany update of the times, one executemany upsert of the bodies:
``Store.record_heartbeat_bodies``).

At 60,000 VMs beating once a minute that is 1,000 requests a second; a database commit
each would be the bottleneck (benchmarks/web_heartbeats: ~400/s), while one commit per
second in a worker thread costs little.  A crash loses at most one flush period of
heartbeats, which the next minute's beats repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cloudvac.model.layout import HEARTBEAT_FILE
from cloudvac.store import Store
from cloudvac.store.joboutputs import Beat
from cloudvac.web.files import Joboutputs

log = logging.getLogger("cloudvac.web.heartbeats")


class HeartbeatBuffer:
    """Without ``files``, only the times are recorded (tests and benchmarks of the store)."""

    def __init__(self, store: Store, files: Joboutputs | None = None,
                 flush_seconds: float = 1.0) -> None:
        self.store, self.files, self.flush_seconds = store, files, flush_seconds
        self._pending: dict[tuple[str, str], Beat] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._before: list[Callable[[], None]] = []

    def counting(self, publish: Callable[[], None]) -> None:
        """Call ``publish`` at the start of every flush and at every ``publish_counts``,
        on the event loop: what counts heartbeats in memory (``beats.py``) adds its counts
        to the metrics there, so that a scrape sees every heartbeat answered before it,
        and the metrics never lag what the store holds."""
        self._before.append(publish)

    def publish_counts(self) -> None:
        for publish in self._before:
            publish()

    def note(self, space: str, name: str, at: float, file: str = HEARTBEAT_FILE,
             body: bytes = b"") -> None:
        key = (space, name)
        old = self._pending.get(key)
        if old is None or old.at <= at:
            self._pending[key] = Beat(at, file, body)

    def _write(self, batch: dict[tuple[str, str], Beat]) -> int:
        if self.files is not None:
            return self.files.heartbeats(batch)
        return self.store.record_heartbeats({key: beat.at for key, beat in batch.items()})

    async def flush(self) -> int:
        self.publish_counts()
        batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            return await asyncio.to_thread(self._write, batch)
        except Exception:
            # Keep them for the next try rather than lose every beat of the period.
            log.exception("space=- machinetype=- machine=- heartbeat flush failed; retrying")
            for (space, name), beat in batch.items():
                self.note(space, name, beat.at, beat.file, beat.body)
            return 0

    async def _run(self) -> None:
        # Never cancelled mid-flush: a cancelled await leaves its worker thread writing
        # while a later flush writes beside it, and older bodies could land last.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.flush_seconds)
            await self.flush()

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="heartbeat-flush")

    async def stop(self) -> None:
        """Let the flush in progress finish, then write what is still pending: every
        machine's file ends with the newest body it sent."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        await self.flush()
