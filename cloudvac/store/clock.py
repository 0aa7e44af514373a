"""The store's clock: the one timeline every time written goes on.

Several managers share one store, and what one writes another compares: a heartbeat
stamped by the instance whose VM door took it is checked against the owner's clock, a VM
token signed by one instance is verified by another.  Their wall clocks may disagree (a
host whose NTP broke); the database's clock is the one they all see.

Contract:

* ``StoreClock.now()`` is this host's wall clock plus the offset last measured to the
  database (``observe``); before any measurement it is the wall clock.  The offset is
  measured at start (``measure``) and by every lease keeper round, which reads the
  database's time anyway; the midpoint of the local times around the read is taken, so a
  slow round trip costs at most half of it.
* An offset over ``WARN_SECONDS`` is logged at warning once, then again when it moves by
  more than that: the host's clock is wrong, and cloudvac works around it.
* On SQLite the database's clock is this host's: the offset is a few microseconds.
* Delays and deadlines never use it: they are on the monotonic clock (``CycleTools``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("cloudvac.store.clock")
WARN_SECONDS = 2.0


class DatabaseTime(Protocol):
    def db_time(self) -> float:
        """The database's clock now, in unix seconds."""


class StoreClock:
    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self._offset = 0.0
        self._warned: float | None = None
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        """Database time minus this host's wall time, as last measured (seconds)."""
        return self._offset

    def now(self) -> float:
        return self._local() + self._offset

    def measure(self, store: DatabaseTime) -> float:
        """Read the database's time and observe it; the offset."""
        before = self._local()
        at = store.db_time()
        return self.observe(at, before, self._local())

    def observe(self, db_time: float, before: float, after: float) -> float:
        """The database said ``db_time`` between local times ``before`` and ``after``."""
        offset = db_time - (before + after) / 2
        with self._lock:
            self._offset = offset
            warn = abs(offset) > WARN_SECONDS and (
                self._warned is None or abs(offset - self._warned) > WARN_SECONDS)
            if warn:
                self._warned = offset
        if warn:
            log.warning("space=- machinetype=- machine=- this host's clock is %+.1f s off the "
                        "database's: every time cloudvac writes is on the database's clock; "
                        "fix the host's time synchronisation", -offset)
        return offset
