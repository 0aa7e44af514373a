"""Backoff by cause for one space, held in memory by its cycle.  A restart starts afresh:
the cloud is asked once more, which is what an operator restarting the manager expects.

==========================  ========================  =====  ================  ==================
cause                       stops                     first  then              ends
==========================  ========================  =====  ================  ==================
credentials refused         every call to the cloud   60 s   doubling to 1 h   an accepted call
quota/capacity refusal      creates of that flavor    5 min  doubling to 30 m  a create of it
start failures (breaker)    every create in the space 10 min (one period)      the period's end
==========================  ========================  =====  ================  ==================

The breaker opens when more than 45 % of the last 20 starts failed (at least 10 seen), or
10 starts in a row failed; a start fails when the cloud puts the machine in ERROR or it
never leaves its starting state.  None of these is a VO's fault: none sets a machinetype's
fizzle backoff, and a refused Keystone password is not retried every cycle (account
lockout).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

AUTH_FIRST, AUTH_LIMIT = 60.0, 3600.0
FLAVOR_FIRST, FLAVOR_LIMIT = 300.0, 1800.0
BREAKER_SECONDS = 600.0
BREAKER_WINDOW, BREAKER_MIN, BREAKER_SHARE, BREAKER_RUN = 20, 10, 0.45, 10


@dataclass(slots=True)
class Exponential:
    """Waits ``first``, then twice as long after each further failure, at most ``limit``."""

    first: float
    limit: float
    failures: int = 0
    wait: float = 0.0
    until: float = 0.0

    def fail(self, tick: float) -> float:
        """Note a failure at ``tick`` (monotonic); returns the wait it starts."""
        self.wait = self.first if self.failures == 0 else min(self.limit, self.wait * 2)
        self.failures += 1
        self.until = tick + self.wait
        return self.wait

    def left(self, tick: float) -> float:
        return max(0.0, self.until - tick) if self.failures else 0.0


@dataclass(slots=True)
class Pressure:
    auth: Exponential = field(default_factory=lambda: Exponential(AUTH_FIRST, AUTH_LIMIT))
    flavors: dict[str, Exponential] = field(default_factory=dict)
    starts: collections.deque[bool] = field(
        default_factory=lambda: collections.deque(maxlen=BREAKER_WINDOW))
    failed_in_a_row: int = 0
    breaker_until: float = 0.0

    def auth_refused(self, tick: float) -> float:
        return self.auth.fail(tick)

    def auth_accepted(self) -> None:
        self.auth = Exponential(AUTH_FIRST, AUTH_LIMIT)

    def flavor_refused(self, flavor: str, tick: float) -> float:
        return self.flavors.setdefault(flavor, Exponential(FLAVOR_FIRST, FLAVOR_LIMIT)).fail(tick)

    def flavor_accepted(self, flavor: str) -> None:
        self.flavors.pop(flavor, None)

    def blocked_flavors(self, tick: float) -> dict[str, str]:
        """Flavor name -> why creates of it wait now."""
        return {name: f"cloud refused flavor {name} (quota or capacity): retry in "
                      f"{backoff.left(tick):.0f}s"
                for name, backoff in self.flavors.items() if backoff.left(tick) > 0}

    def note_starts(self, ok: int, failed: int, tick: float) -> str:
        """Record start outcomes; returns why the breaker opened now, else ""."""
        self.starts.extend([True] * ok + [False] * failed)
        self.failed_in_a_row = 0 if ok else self.failed_in_a_row + failed
        bad = self.starts.count(False)
        why = ""
        if self.failed_in_a_row >= BREAKER_RUN:
            why = f"{self.failed_in_a_row} starts in a row failed"
        elif len(self.starts) >= BREAKER_MIN and bad > BREAKER_SHARE * len(self.starts):
            why = f"{bad} of the last {len(self.starts)} starts failed"
        if not why or tick < self.breaker_until:
            return ""
        self.breaker_until = tick + BREAKER_SECONDS
        self.starts.clear()
        self.failed_in_a_row = 0
        return why

    def breaker(self, tick: float) -> str:
        """Why creations in the space are stopped now, or ""."""
        left = self.breaker_until - tick
        return f"circuit breaker open: starts keep failing; creations resume in {left:.0f}s" \
            if left > 0 else ""
