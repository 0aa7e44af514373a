"""The lease keeper: which spaces this instance owns, spread evenly over live instances.

Every instance runs the same configuration and one keeper (``Daemon`` runs a round every
``cycle_seconds / ROUNDS_PER_CYCLE``).  A round (``LeaseKeeper.round``, synchronous, run
in a worker thread):

1. keeps the presence lock (PostgreSQL: ``store.leases.Presence``) and refreshes this
   instance's row in ``instances``;
2. renews every lease it holds; a lease the store no longer gives it is lost;
3. reads leases and instances: live ones were seen within ``TTL_CYCLES`` cycle periods
   and (PostgreSQL) hold their presence lock;
4. computes its quota from its rank among the sorted live ids (``store.leases.quota``:
   within one of every other's) and releases its extras, highest space names first, only
   those not in the middle of a cycle;
5. takes free, expired or dead-owner spaces up to its quota, in an order of its own
   (``store.leases.ordered``), one UPDATE each (``Store.acquire``).

Times are the database's; ``Tenure.valid`` is the one check on this process's own clock:
a lease is trusted until the monotonic time of the renewal's start plus the lease's
length minus ``MARGIN_CYCLES`` periods, so a process that was stopped (SIGSTOP) or cut off
stops acting before another instance may take over, even before a write tells it so.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloudvac.store import Store
from cloudvac.store.clock import StoreClock
from cloudvac.store.engine import sqlite_path
from cloudvac.store.leases import Fence, LeaseView, Presence, ordered, quota

log = logging.getLogger("cloudvac.engine.leases")
TTL_CYCLES = 2.0
"""A lease lasts this many cycle periods after its last renewal."""
ROUNDS_PER_CYCLE = 4
"""Keeper rounds per cycle period."""
MARGIN_CYCLES = 0.5
"""The owner stops trusting a lease this many periods before the database would let it
expire (by its own monotonic clock)."""
FORGET_CYCLES = 10.0
"""Rows of instances gone this many periods are deleted (status stops listing them)."""


def new_instance_id() -> str:
    """``HOST-PID-RANDOM``: unique per start, and readable in logs and status (a long
    random hex string would look like a token, and the log redaction would hide it)."""
    return f"{socket.gethostname().split('.')[0][:20]}-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class Tenure:
    """One held lease, as a cycle carries it: the fence its writes present, and the
    owner's own-clock check made before every cloud call that acts."""

    fence: Fence
    valid: Callable[[], bool]


@dataclass(frozen=True, slots=True)
class RoundResult:
    acquired: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()
    released: frozenset[str] = frozenset()
    live: int = 0


@dataclass(slots=True)
class _Held:
    fence: Fence
    trusted_until: float


@dataclass
class LeaseKeeper:
    """This instance's leases.  ``round`` runs in one worker thread at a time; ``begin``,
    ``end``, ``tenure`` and ``drop`` are called from the event loop: a lock keeps them
    apart, so a space is never released while a cycle of it runs."""

    store: Store
    cycle_seconds: Callable[[], float]
    monotonic: Callable[[], float]
    presence: Presence | None = None
    clock: StoreClock = field(default_factory=StoreClock)
    """Told the database's time at every round (``announce`` reads it anyway)."""
    instance: str = field(default_factory=new_instance_id)
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    _held: dict[str, _Held] = field(default_factory=dict)
    _busy: set[str] = field(default_factory=set)
    _leaving: set[str] = field(default_factory=set)
    """Extras that were mid-cycle when a round wanted to give them up: no new cycle starts,
    and ``end`` hands them to the next round to release (a space that cycles back to back
    under load would otherwise never be idle at a round)."""
    _to_release: list[Fence] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _left: bool = False

    def ttl(self) -> float:
        return TTL_CYCLES * self.cycle_seconds()

    def owned(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def begin(self, space: str) -> Tenure | None:
        """A cycle of ``space`` starts: its tenure (the space is busy until ``end``), or
        None when this instance does not own it (the cycle must not run)."""
        with self._lock:
            held = self._held.get(space)
            if held is None or space in self._leaving:
                return None
            self._busy.add(space)
            fence = held.fence
        return Tenure(fence, lambda: self._trusted(fence))

    def end(self, space: str) -> None:
        with self._lock:
            self._busy.discard(space)
            if space in self._leaving:
                self._leaving.discard(space)
                held = self._held.pop(space, None)
                if held is not None:
                    self._to_release.append(held.fence)

    def drop(self, space: str, fence: Fence) -> None:
        """A write found the lease lost: forget it (if it is still that one)."""
        with self._lock:
            held = self._held.get(space)
            if held is not None and held.fence == fence:
                del self._held[space]
                self._leaving.discard(space)

    def _trusted(self, fence: Fence) -> bool:
        with self._lock:
            held = self._held.get(fence.space)
            return held is not None and held.fence == fence and \
                self.monotonic() < held.trusted_until

    def round(self, spaces: Sequence[str]) -> RoundResult:
        """One keeper round over the configured ``spaces`` (see the module doc)."""
        ttl = self.ttl()
        if self._left:
            return RoundResult()
        key = self.presence.ensure() if self.presence is not None else 0
        before = time.time()
        at = self.store.announce(self.instance, self.hostname, self.pid, key,
                                 self.cycle_seconds())
        self.clock.observe(at, before, time.time())
        lost = self._renew(ttl)
        view = self.store.lease_view(self.instance)
        live = self._live(view)
        rank = live.index(self.instance) if self.instance in live else len(live)
        want = quota(rank, max(len(live), rank + 1), len(set(spaces)))
        released = self._release_extras(want)
        acquired = self._acquire(spaces, view, want, ttl)
        self.store.forget_instances(self.instance, FORGET_CYCLES * self.cycle_seconds())
        result = RoundResult(frozenset(acquired), frozenset(lost), frozenset(released),
                             len(live))
        self._log(result, want)
        return result

    def _renew(self, ttl: float) -> set[str]:
        started = self.monotonic()
        renewed = self.store.renew(self.instance, ttl)
        trusted_until = started + ttl - MARGIN_CYCLES * self.cycle_seconds()
        lost: set[str] = set()
        with self._lock:
            for space, held in list(self._held.items()):
                if renewed.get(space) == held.fence.generation:
                    held.trusted_until = trusted_until
                else:
                    lost.add(space)
                    del self._held[space]
        return lost

    def _live(self, view: LeaseView) -> list[str]:
        """Sorted ids of the live instances: seen within a lease's length (by the
        database's clock) and present."""
        return sorted(i.instance for i in view.instances
                      if i.present and i.seen_at > view.now - TTL_CYCLES * i.cycle_seconds)

    def _release_extras(self, want: int) -> list[str]:
        """Give up the spaces over ``want``: idle ones now, busy ones once their cycle
        ends (``_leaving``); also release those whose cycle ended since the last round."""
        with self._lock:
            fences, self._to_release = self._to_release, []
            extra = len(self._held) - len(self._leaving) - want
            idle = sorted((s for s in self._held if s not in self._busy), reverse=True)
            for space in idle[:max(0, extra)]:
                fences.append(self._held.pop(space).fence)
                extra -= 1
            busy = sorted((s for s in self._busy if s in self._held and s not in self._leaving),
                          reverse=True)
            self._leaving.update(busy[:max(0, extra)])
        for fence in fences:
            self.store.release(fence)
        return [fence.space for fence in fences]

    def _acquire(self, spaces: Sequence[str], view: LeaseView, want: int,
                 ttl: float) -> list[str]:
        present = view.present() | {self.instance}
        leases = {lease.space: lease for lease in view.leases}
        with self._lock:
            room = want - len(self._held)
            mine = set(self._held)
        acquired: list[str] = []
        for space in ordered(self.instance, set(spaces) - mine):
            if len(acquired) >= room:
                break
            lease = leases.get(space)
            if lease is not None and lease.owner is not None and \
                    lease.expires_at > view.now and lease.owner in present:
                continue  # held by a live owner: not worth a write
            started = self.monotonic()
            fence = self.store.acquire(space, self.instance, ttl,
                                       lease.generation if lease is not None else 0)
            if fence is None:
                continue
            with self._lock:
                left = self._left
                if not left:
                    self._held[space] = _Held(
                        fence, started + ttl - MARGIN_CYCLES * self.cycle_seconds())
            if left:  # stopped meanwhile: give it back at once
                self.store.release(fence)
                break
            acquired.append(space)
        return acquired

    def _log(self, result: RoundResult, want: int) -> None:
        for kind, names in (("acquired", result.acquired), ("lost", result.lost),
                            ("released", result.released)):
            for space in sorted(names):
                level = logging.WARNING if kind == "lost" else logging.INFO
                log.log(level, "space=%s machinetype=- machine=- lease %s by instance %s "
                        "(%d live instances, quota %d)", space, kind, self.instance,
                        result.live, want)

    @classmethod
    def for_store(cls, store: Store, url: str, cycle_seconds: Callable[[], float],
                  monotonic: Callable[[], float] = time.monotonic,
                  clock: StoreClock | None = None) -> LeaseKeeper:
        """A keeper with a new instance id for ``store`` (opened from ``url``): with a
        presence lock on PostgreSQL; on SQLite the store's flock stands for it."""
        presence = Presence(url) if sqlite_path(url) is None else None
        return cls(store, cycle_seconds, monotonic, presence, clock or StoreClock())

    def leave(self) -> int:
        """Graceful stop: release every lease, delete this instance's row, drop the
        presence lock; how many leases were released."""
        with self._lock:
            self._held.clear()
            self._leaving.clear()
            self._to_release.clear()
            self._left = True
        try:
            return self.store.leave(self.instance)
        finally:
            if self.presence is not None:
                self.presence.close()

