"""Blocking calls (openstacksdk, keystoneauth) that stop when their cycle is cancelled.

Why: a cancelled coroutine cannot stop the thread running a blocking SDK call, and
keystoneauth retries connection failures and 5xx inside that thread; a thread pool then
kept the process alive long after SIGTERM (82 s with ``space_timeout_seconds = 30``).

Contract: ``run_cancellable(fn, timeout)`` runs ``fn`` in a daemon thread of its own and
returns its result or raises its exception.  When the awaiting coroutine is cancelled or
``timeout`` passes, the call is marked cancelled: every HTTP request the thread would make
from then on (a keystoneauth retry, the SDK's next call) raises ``CallCancelled`` through a
``CancellableHTTP`` session instead of being sent, and nobody waits for the thread — being
a daemon thread, it never delays the process's exit.  A request already on the wire ends
by its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import requests

T = TypeVar("T")
_local = threading.local()


class CallCancelled(Exception):
    """The cycle that made this call was cancelled or timed out: no more requests."""


class CancellableHTTP(requests.Session):
    """The HTTP session for keystoneauth: refuses to send once its call is cancelled."""

    def request(self, method: str, url: str | bytes,
                *args: Any, **kwargs: Any) -> requests.Response:
        flag: threading.Event | None = getattr(_local, "cancelled", None)
        if flag is not None and flag.is_set():
            raise CallCancelled(f"{method!r} not sent: its cycle was cancelled")
        return super().request(method, url, *args, **kwargs)


async def run_cancellable(fn: Callable[[], T], timeout: float, name: str = "cloud-call") -> T:
    """``fn()`` in a daemon thread; TimeoutError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    flag = threading.Event()

    def deliver(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        _local.cancelled = flag
        try:
            result = fn()
        except BaseException as exc:
            error = exc
            _post(loop, lambda: deliver(lambda: future.set_exception(error)))
        else:
            _post(loop, lambda: deliver(lambda: future.set_result(result)))

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        flag.set()  # done, cancelled or timed out: this call sends nothing more


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(callback)
