"""Wakes across processes: a VM's shutdown message brings its space's next cycle forward in
whichever instance runs that space, wherever the message arrived.

Issue 13's wake reached the daemon only through the web door of its own process.  In
production the VMs' door may be another process (``cloudvac web``, its own systemd unit)
or another instance (several ``cloudvac run`` on one PostgreSQL: every instance serves
the VMs, one owns each space).  So:

* ``ShutdownWaker`` is what the VMs' door calls once it recorded a shutdown message: in
  the instance that owns the space, the daemon's own ``wake`` (at once, no write);
  anywhere else, the store's wake board (``store/wakes.py``: one upsert, in a worker
  thread, the request is not held up by it).
* ``WakeWatcher`` runs in every ``cloudvac run``: it reads the board every
  ``WAKE_POLL_SECONDS`` (one query, at most one short row per space) and wakes the spaces
  it owns whose row changed, timed from the message's own time: the early cycle comes
  ``wake_seconds`` after the message, as if it had arrived here.

Neither adds a cycle or a listing: a wake only brings forward the next cycle of the space
(the daemon's slot rule, ``engine/daemon.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.engine.wakes")
WAKE_POLL_SECONDS = 1.0
"""How often each ``cloudvac run`` reads the wake board."""


class WakeBoard(Protocol):
    """The store's wake board (``store/wakes.py:WakeStore``)."""

    def post_wake(self, space: str, at: float) -> None: ...

    def wakes(self) -> dict[str, float]: ...


def _log_failure(space: str, future: asyncio.Future[None]) -> None:
    exc = None if future.cancelled() else future.exception()
    if exc is not None:  # only the early cycle is lost: the space cycles on schedule
        log.warning("space=%s machinetype=- machine=- wake not posted: %s: %s", space,
                    type(exc).__name__, redact(str(exc)))


@dataclass(frozen=True)
class ShutdownWaker:
    """Called by the VMs' door (on the event loop) for each shutdown message it recorded."""

    board: WakeBoard
    clock: Callable[[], float]
    """The time written to the board: the database's (``store/clock.py``)."""
    local: Callable[[str], None] | None = None
    """This process's daemon's ``wake`` (``cloudvac run``); None for ``cloudvac web``."""
    owned: Callable[[], frozenset[str]] | None = None
    """The spaces this instance holds (its lease keeper); None: all of them."""

    def __call__(self, space: str) -> None:
        if self.local is not None and (self.owned is None or space in self.owned()):
            self.local(space)
            return
        future = asyncio.get_running_loop().run_in_executor(
            None, self.board.post_wake, space, self.clock())
        future.add_done_callback(lambda done: _log_failure(space, done))


@dataclass
class WakeWatcher:
    """Reads the board every ``WAKE_POLL_SECONDS`` and calls ``wake(space, at)`` for each
    space this instance owns whose row changed since the last read (the first read only
    learns the board)."""

    board: WakeBoard
    wake: Callable[[str, float], None]
    owned: Callable[[], frozenset[str]]
    every: float = WAKE_POLL_SECONDS
    _seen: dict[str, float] | None = field(default=None, init=False)

    def poll(self, board: dict[str, float]) -> list[tuple[str, float]]:
        """The changed rows of ``board`` that concern this instance, remembered as seen."""
        seen, self._seen = self._seen, board
        if seen is None:
            return []
        owned = self.owned()
        return sorted((space, at) for space, at in board.items()
                      if seen.get(space) != at and space in owned)

    async def watch(self, stop: asyncio.Event) -> None:
        """Until ``stop``; a failed read is logged once per outage and retried."""
        failing = False
        while not stop.is_set():
            try:
                board = await asyncio.to_thread(self.board.wakes)
            except Exception as exc:  # the database is away: cycles run on schedule
                if not failing:
                    log.warning("space=- machinetype=- machine=- wake board not readable: "
                                "%s: %s", type(exc).__name__, redact(str(exc)))
                failing = True
            else:
                failing = False
                for space, at in self.poll(board):
                    self.wake(space, at)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
