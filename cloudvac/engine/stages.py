"""CPU seconds per stage of one space's cycle, so that a regression shows where it is.

Each stage is timed with the CPU clock of the thread that runs it (``time.thread_time``):
the store's calls inside their worker thread, the pure steps on the event loop.  A stage
that awaits is timed around the await on the loop's thread, which is exact while the call
does not suspend (the sim cloud's listing never does; an OpenStack listing decodes its
pages in worker threads, which this does not see).  What no stage holds (the event loop,
thread hand-offs, metrics, the garbage collector) is the process's CPU minus their sum
(``benchmarks/scale.py`` reports it as ``other``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
Stage = Literal["listing", "store_read", "reconcile", "plan", "store_write"]


@dataclass(frozen=True, slots=True)
class StageTimes:
    """CPU seconds one cycle spent in each stage."""

    listing: float = 0.0
    """The cloud's listing, flavors and limits as the adapter returns them (decoded)."""
    store_read: float = 0.0
    """The store's history of the space."""
    reconcile: float = 0.0
    plan: float = 0.0
    """The planner and the changes to record (``decide`` after ``reconcile``)."""
    store_write: float = 0.0
    """The cycle's writes: decisions, intents, events, accounting, the project's room."""

    def since(self, earlier: StageTimes) -> StageTimes:
        return StageTimes(*(now - then for now, then in zip(
            (self.listing, self.store_read, self.reconcile, self.plan, self.store_write),
            (earlier.listing, earlier.store_read, earlier.reconcile, earlier.plan,
             earlier.store_write), strict=True)))


@dataclass(slots=True)
class Stopwatch:
    """Adds up the stages of one space's cycles (one per ``SpaceCycle``; a cycle's own
    share is ``times()`` at its end ``since`` its start).  Thread-safe: the creates of a
    cycle write their intents from several worker threads at once."""

    listing: float = 0.0
    store_read: float = 0.0
    reconcile: float = 0.0
    plan: float = 0.0
    store_write: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def stage(self, name: Stage) -> Iterator[None]:
        """Time the block on this thread's CPU clock into stage ``name``."""
        begun = time.thread_time()
        try:
            yield
        finally:
            self._add(name, time.thread_time() - begun)

    def call(self, name: Stage, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` timed into stage ``name`` (run it in the worker thread)."""
        with self.stage(name):
            return fn(*args, **kwargs)

    def _add(self, name: Stage, seconds: float) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + seconds)

    def times(self) -> StageTimes:
        return StageTimes(self.listing, self.store_read, self.reconcile, self.plan,
                          self.store_write)
