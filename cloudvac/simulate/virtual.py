"""What makes a simulation a pure function of its scenario and seed.

- ``Clock``: the virtual clock; only the runner moves it, one cycle at a time.
- ``InlineExecutor``: the event loop's default executor during a simulation.  The engine
  hands its store calls to ``asyncio.to_thread``; here they run at once, on the loop's own
  thread, so no worker thread races another task (a create's intent write finishing before
  or after another's decided which server drew which fate), and no thread hop costs time.
- ``seeded_namer``: machine names from a seeded generator instead of ``secrets``.
- ``space_seed``: one run seed spread over the spaces, each its own stream.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from cloudvac.model.naming import SUFFIX_LENGTH, name_prefix

P = ParamSpec("P")
T = TypeVar("T")
_ALPHABET = string.ascii_lowercase + string.digits


class Clock:
    """The virtual clock: every time the engine writes or compares comes from here."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class InlineExecutor(ThreadPoolExecutor):
    """Runs each submitted call at once, in the submitting thread (the event loop's), and
    returns its finished future.  ``asyncio.to_thread`` still yields once to the loop, so
    tasks interleave as before, but in one fixed order: the loop's FIFO."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the awaiting task, as a worker thread would
            future.set_exception(exc)
        return future


def seeded_namer(seed: str) -> Callable[[str, str], str]:
    """``model.naming.machine_name``'s shape, the suffix drawn from ``random.Random(seed)``
    (names only need to be unique within one run's throwaway store)."""
    rng = random.Random(f"cloudvac-simulate-names:{seed}")

    def namer(space: str, machinetype: str) -> str:
        suffix = "".join(rng.choice(_ALPHABET) for _ in range(SUFFIX_LENGTH))
        return f"{name_prefix(space)}{machinetype}-{suffix}"

    return namer


def space_seed(seed: int, space: str) -> int:
    """The sim seed of ``space`` in a run with seed ``seed``: spaces sharing a run seed
    draw from unrelated streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{space}".encode()).digest()[:8], "big")
