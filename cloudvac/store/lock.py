"""One daemon per store: an exclusive OS lock on a file next to the SQLite database.

Why: two ``cloudvac run`` on one store each believe they own every machine in it; the
second one's cloud listing (its own simulator, or another project's credentials) misses
the first one's machines and marks them gone.  Readers (``status``, ``web``, ``validate``,
``render``) never take the lock.

Contract:

* ``StoreLock.acquire`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``<database>.lock`` (created
  if needed, never removed: removing it would let a third process lock a new file while a
  second still holds the old one) and writes the holder into it: host, pid, start time.
  The lock lives as long as the open file, so it goes with the process however the
  process ends; nothing stale is ever left to clean up.
* When another process holds it: ``StoreLocked``, whose message names the store and the
  holder.  Nothing else is touched.
* PostgreSQL stores have no file to lock: ``StoreLock.for_url`` returns None (leases are
  the HA work's).
* ``flock`` is advisory and per host; on a network file system it is only as good as the
  file system's lock support (SQLite on NFS is unsafe anyway).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudvac.store.engine import sqlite_path

LOCK_SUFFIX = ".lock"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a store: written into the lock file by the holder itself."""

    host: str
    pid: int
    since: float
    command: str = "cloudvac run"

    def __str__(self) -> str:
        started = datetime.datetime.fromtimestamp(self.since, datetime.UTC)
        return (f"{self.command} (pid {self.pid} on {self.host} since "
                f"{started.strftime('%Y-%m-%d %H:%M:%S')} UTC)")

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder recorded in a lock file; None if it is empty or unreadable (the
        holder may be between taking the lock and writing its name)."""
        try:
            data: Any = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), float(data["since"]),
                       str(data.get("command", "cloudvac run")))
        except (ValueError, TypeError, KeyError):
            return None


class StoreLocked(Exception):
    """Another process holds the store; ``str()`` names the store and the holder."""

    def __init__(self, store: Path, holder: Holder | None) -> None:
        who = str(holder) if holder is not None else "another cloudvac run (not yet recorded)"
        super().__init__(f"the store {store} is in use by {who}; one daemon per store")
        self.store, self.holder = store, holder


class StoreLock:
    """The lock of one SQLite store, held from ``acquire`` until ``release``."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + LOCK_SUFFIX)
        self._fd: int | None = None

    @classmethod
    def for_url(cls, url: str) -> StoreLock | None:
        """The lock of the SQLite store at ``url``; None for PostgreSQL."""
        database = sqlite_path(url)
        return cls(database) if database is not None else None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, command: str = "cloudvac run") -> Holder:
        """Take the lock without waiting and record this process as its holder.

        StoreLocked if another process holds it; OSError if the lock file cannot be
        created (the caller reports it like a store that cannot be opened).
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this process")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise StoreLocked(self.database, holder) from None
        except BaseException:
            os.close(fd)
            raise
        me = Holder(socket.gethostname(), os.getpid(), time.time(), command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": me.host, "pid": me.pid, "since": me.since,
                                  "command": me.command}).encode() + b"\n", 0)
        self._fd = fd
        return me

    def release(self) -> None:
        """Forget the holder and unlock.  Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
