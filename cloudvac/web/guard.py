"""Connection-level protections of a web listener: limits, counting, bounded logging.

Each listener (a ``uvicorn.Server``) has one ``Guard``: its ``WebLimits``, the number of
its open connections, the connections a new one may push out (those still sending their
headers, or idle between requests, for a while), a per-client token bucket, and its
metrics.  The HTTP protocol classes of ``protocols.py`` call it; ``GuardMiddleware``
applies the request rate and hides a client's disappearance from the application.
``protocols.guarded_server`` puts both on any listener.

Logging is bounded whatever clients do: an event that a client can cause (a timeout, a
refused connection, a rate-limited request, a failing ``accept()``) gives at most one line
per ``LOG_EVERY_SECONDS`` and kind, with the count since the last line.  No header value
is ever logged (they carry bearer tokens); only the client's address is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from cloudvac.config.settings import Settings

log = logging.getLogger("cloudvac.web.guard")
LOG_EVERY_SECONDS = 10.0
AUTO_CONNECTIONS_SHARE = 0.75   # of the open-file limit, when web_max_connections is 0
AUTO_CONNECTIONS_CAP = 4096
EVICT_AFTER_SECONDS = 1.0       # a connection this long without a request may be pushed out
RATE_CLIENTS = 10_000           # client addresses whose buckets are kept (least recent go)
REFUSE_LINGER_SECONDS = 0.25    # a refused connection is closed after its first data or this


@dataclass(frozen=True, slots=True)
class WebLimits:
    """The protections of one listener (``from_settings``: those of the VM listener)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive: int = 5
    max_connections: int = AUTO_CONNECTIONS_CAP
    rate: float = 200.0
    """Requests per second per client address; 0: no limit."""
    burst: int = 2000

    @classmethod
    def from_settings(cls, settings: Settings) -> WebLimits:
        """The settings' limits; web_max_connections at most 75 % of the open-file limit
        (more would fail accept() before the bound applies)."""
        most = max(1, int(open_file_limit() * AUTO_CONNECTIONS_SHARE))
        connections = min(settings.web_max_connections, most) or auto_max_connections()
        if connections < settings.web_max_connections:
            log.warning("space=- machinetype=- machine=- web_max_connections %d is over 75 %% "
                        "of the open-file limit (%d): using %d; raise the limit (LimitNOFILE) "
                        "for more", settings.web_max_connections, open_file_limit(), most)
        return cls(settings.web_header_timeout_seconds, settings.web_body_timeout_seconds,
                   settings.web_keepalive_seconds, connections,
                   settings.web_rate_per_client, settings.web_rate_burst)

    def describe(self) -> str:
        rate = f"{self.rate:g}/s (burst {self.burst}) per client" if self.rate else "no"
        return (f"header timeout {self.header_timeout:g} s, body {self.body_timeout:g} s, "
                f"keep-alive {self.keepalive} s, at most {self.max_connections} connections, "
                f"{rate} rate limit")


def open_file_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def auto_max_connections() -> int:
    """75 % of the open-file limit, at most 4096: the rest for the store, files, logs."""
    return max(1, min(AUTO_CONNECTIONS_CAP, int(open_file_limit() * AUTO_CONNECTIONS_SHARE)))


_raised: list[int] = []


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, once per process (logged); returns
    the soft limit now in force."""
    if _raised:
        return open_file_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = soft if soft == infinite else hard if hard != infinite else max(soft, 1 << 20)
    if soft != infinite and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("space=- machinetype=- machine=- cannot raise the open-file limit "
                        "from %d to %d: %s", soft, target, exc)
            target = soft
    _raised.append(target)

    def shown(value: int) -> str:
        return "unlimited" if value == infinite else str(value)

    log.info("space=- machinetype=- machine=- open-file limit %s (was %s, hard limit %s)",
             shown(target), shown(soft), shown(hard))
    return open_file_limit()


class LogThrottle:
    """At most one line per ``every`` seconds for one kind of event, with the count of
    events since the previous line; ``flush`` writes what is still counted."""

    def __init__(self, text: str, every: float = LOG_EVERY_SECONDS,
                 level: int = logging.WARNING) -> None:
        self.text, self.every, self.level = text, every, level
        self.count, self.next_at, self.client = 0, 0.0, ""
        self.pending: asyncio.TimerHandle | None = None

    def hit(self, client: str | None = None) -> str | None:
        """Count one event; the line to write now, if one is due."""
        self.count += 1
        self.client = client or self.client
        now = time.monotonic()
        return self.line(now) if now >= self.next_at else None

    def line(self, now: float) -> str:
        last = f", the last from {self.client}" if self.client else ""
        line = (f"space=- machinetype=- machine=- {self.text}: {self.count} since the "
                f"previous such line (one per {self.every:g} s at most){last}")
        self.count, self.next_at = 0, now + self.every
        return line

    def note(self, client: str | None) -> None:
        """``hit`` from the event loop: a line now, or one at the end of the quiet period."""
        line = self.hit(client)
        if line is not None:
            log.log(self.level, line)
        elif self.pending is None:
            self.pending = asyncio.get_running_loop().call_later(
                max(0.0, self.next_at - time.monotonic()), self.flush)

    def flush(self) -> None:
        self.pending = None
        if self.count:
            log.log(self.level, self.line(time.monotonic()))


_FLOODS = {
    "accept": ("asyncio", "socket.accept() out of system resource", "accept() failed"),
    # asyncio's selector loop retries accept() once per failure of a burst: after the
    # listener closed, each retry fails again
    "retry": ("asyncio", "Exception in callback BaseSelectorEventLoop._start_serving",
              "accept() retries failed"),
    "invalid": ("uvicorn.error", "Invalid HTTP request received", "invalid HTTP requests"),
}


class FloodFilter(logging.Filter):
    """On a library's logger: one of its one-record-per-client-event messages (``accept()``
    failing for want of file descriptors, an invalid request) at most once per
    ``LOG_EVERY_SECONDS``, as one line with a count and no traceback."""

    def __init__(self, prefix: str, text: str) -> None:
        super().__init__()
        self.prefix, self.throttle = prefix, LogThrottle(text)
        self.counters: weakref.WeakSet[Any] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        for counter in list(self.counters):
            counter.inc()
        exc = record.exc_info[1] if record.exc_info else None
        reason = f": {exc.strerror or exc}" if isinstance(exc, OSError) else \
            f": {type(exc).__name__}" if exc else ""
        line = self.throttle.hit()
        if line is None:
            return False
        record.msg, record.args, record.exc_info, record.exc_text = \
            line + reason, None, None, None
        return True


def flood_filters() -> dict[str, FloodFilter]:
    """The process's FloodFilters by kind, installed on their loggers on first use."""
    found: dict[str, FloodFilter] = {}
    for kind, (name, prefix, text) in _FLOODS.items():
        logger = logging.getLogger(name)
        mine = [f for f in logger.filters if isinstance(f, FloodFilter) and f.prefix == prefix]
        if not mine:
            mine = [FloodFilter(prefix, text)]
            logger.addFilter(mine[0])
        found[kind] = mine[0]
    return found


class GuardMetrics:
    """The guard's metrics in one registry, labelled by listener (``for_registry``)."""

    _made: weakref.WeakKeyDictionary[CollectorRegistry, GuardMetrics] = \
        weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.timeouts = Counter("cloudvac_web_timeouts", "Connections closed for sending "
                                "their headers or body too slowly", ["listener", "kind"],
                                registry=registry)
        self.refused = Counter("cloudvac_web_connections_refused", "New connections "
                               "answered 503 at the connection limit", ["listener"],
                               registry=registry)
        self.evicted = Counter("cloudvac_web_connections_evicted", "Slow or idle connections "
                               "closed to admit a new one", ["listener"], registry=registry)
        self.rate_limited = Counter("cloudvac_web_rate_limited", "Requests answered 429",
                                    ["listener"], registry=registry)
        self.open = Gauge("cloudvac_web_open_connections", "Open connections",
                          ["listener"], registry=registry)
        self.accept_errors = Counter("cloudvac_web_accept_errors", "accept() failures "
                                     "(no file descriptor left) seen by the event loop",
                                     registry=registry)
        flood_filters()["accept"].counters.add(self.accept_errors)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> GuardMetrics:
        made = cls._made.get(registry)
        if made is None:
            made = cls._made[registry] = cls(registry)
        return made


class RateLimiter:
    """A token bucket per client address (``rate`` per second, ``burst`` deep), for the
    ``size`` most recently seen addresses (a forgotten one starts with a full bucket)."""

    def __init__(self, rate: float, burst: int, size: int = RATE_CLIENTS) -> None:
        self.rate, self.burst, self.size = rate, float(burst), size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float) -> float:
        """0 if ``client`` may make a request now, else the seconds until it may."""
        tokens, then = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0 if not wait else tokens, now)
        if len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return wait


class Guard:
    """One listener's accounting: open connections, who may be pushed out, the rate."""

    def __init__(self, name: str, limits: WebLimits, registry: CollectorRegistry) -> None:
        self.name, self.limits = name, limits
        metrics = GuardMetrics.for_registry(registry)
        self.timeouts = {kind: metrics.timeouts.labels(name, kind)
                         for kind in ("header", "body")}
        self.refused = metrics.refused.labels(name)
        self.evicted = metrics.evicted.labels(name)
        self.rate_limited = metrics.rate_limited.labels(name)
        self.open = 0
        metrics.open.labels(name).set_function(lambda: self.open)
        self.lingering = 0
        self.waiting: dict[Any, float] = {}
        """Connections without a request in progress (since when), oldest first."""
        self.limiter = RateLimiter(limits.rate, limits.burst) if limits.rate > 0 else None
        self.logs = {
            "header": LogThrottle(f"web {name}: closed connections that sent no complete "
                                  f"request headers within {limits.header_timeout:g} s (408)"),
            "body": LogThrottle(f"web {name}: closed connections that sent no complete "
                                f"request body within {limits.body_timeout:g} s (408)"),
            "refused": LogThrottle(f"web {name}: refused new connections at the limit of "
                                   f"{limits.max_connections} (503)"),
            "evicted": LogThrottle(f"web {name}: closed slow or idle connections to admit "
                                   "new ones at the connection limit", level=logging.INFO),
            "rate": LogThrottle(f"web {name}: answered 429 to clients over "
                                f"{limits.rate:g} requests/s", level=logging.INFO),
        }

    def victim(self) -> Any | None:
        """At the limit: the connection to push out for a new one, the one that has been
        waiting for a request longest if long enough (None: refuse the new one)."""
        for conn, since in self.waiting.items():
            if time.monotonic() - since >= min(EVICT_AFTER_SECONDS,
                                               self.limits.header_timeout / 2):
                return conn
            break
        return None

    def flush_logs(self) -> None:
        for throttle in self.logs.values():
            if throttle.pending is not None:
                throttle.pending.cancel()
            throttle.flush()

    def event(self, kind: str, client: str | None) -> None:
        """Count and (boundedly) log a ``kind`` event caused by ``client``."""
        if kind in self.timeouts:
            self.timeouts[kind].inc()
        else:
            {"refused": self.refused, "evicted": self.evicted,
             "rate": self.rate_limited}[kind].inc()
        self.logs[kind].note(client)


_TOO_MANY = b"too many requests\n"


class GuardMiddleware:
    """Outermost ASGI layer of a listener: the per-client request rate (429 with
    Retry-After), and a client that vanished (or was timed out) mid-request ends the
    request quietly instead of as a logged server error."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limiter = self.guard.limiter
        if limiter is not None:
            client = scope.get("client")
            host = str(client[0]) if client else "-"
            wait = limiter.take(host, time.monotonic())
            if wait:
                self.guard.event("rate", host)
                await send({"type": "http.response.start", "status": 429, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_TOO_MANY)).encode()),
                    (b"retry-after", str(math.ceil(wait)).encode())]})
                await send({"type": "http.response.body", "body": _TOO_MANY})
                return
        with contextlib.suppress(ClientDisconnect):  # nobody to answer
            await self.app(scope, receive, send)
