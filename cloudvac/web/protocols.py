"""uvicorn servers with the connection-level protections of ``guard.py``.

uvicorn times out nothing while a request arrives: a client that sends half a request line,
or trickles a body, holds its connection (and a file descriptor) forever.  The HTTP
protocol classes here are uvicorn's own (httptools when installed, else h11) with one timer
per connection: from connecting, or from a request's first byte on a kept-alive
connection, to the end of its headers (``header_timeout``); from there to the end of its
body (``body_timeout``, not counted while the application leaves the body unread).  On
expiry the client gets 408 (unless its answer was already begun) and the connection is
closed.  Each connection is counted against ``max_connections``: at the limit the one that
has waited longest without a request in progress is pushed out, or else the new one gets
a 503 at once and is closed unread.

``guarded_server`` builds a uvicorn server this way for any listener; the log line that
says it serves names the event loop and HTTP implementation really in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol, cast

import h11
import uvicorn
from prometheus_client import CollectorRegistry
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloudvac.web.guard import REFUSE_LINGER_SECONDS, Guard, GuardMiddleware, WebLimits

log = logging.getLogger("cloudvac.web.guard")
HttpImpl = Literal["auto", "httptools", "h11"]
RECHECK_SECONDS = 1.0  # a timer that expired while the application held things up


def _response(status: bytes, text: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-type: text/plain; charset=utf-8",
            b"content-length: %d" % len(text), *extra, b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + text


TIMEOUT_408 = _response(b"408 Request Timeout", b"request timeout\n")
BUSY_503 = _response(b"503 Service Unavailable", b"too many connections\n", b"retry-after: 5")


class Phase(enum.Enum):
    HEADERS = "waiting for a request's headers"
    BODY = "waiting for a request's body"
    BUSY = "the application has the request"
    IDLE = "kept alive between requests"


class _Cycle(Protocol):
    response_started: bool
    response_complete: bool
    disconnected: bool
    waiting_for_100_continue: bool
    message_event: asyncio.Event


class _Guarded(asyncio.Protocol, metaclass=ABCMeta):
    """Mixed in before a uvicorn HTTP protocol class; ``guard`` is set per listener."""

    guard: ClassVar[Guard]
    impl: ClassVar[str]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    client: tuple[str, int] | None
    _on = Phase.BUSY
    _timer: asyncio.TimerHandle | None = None
    _refused = _lingering = _lost = False

    @abstractmethod
    def _current(self) -> _Cycle | None:
        """The request cycle in progress, if any (each uvicorn protocol keeps its own)."""

    @abstractmethod
    def _phase(self) -> Phase:
        """Where the connection is between requests (each uvicorn protocol says it its way)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        if guard.open >= guard.limits.max_connections:
            victim = guard.victim()
            if victim is None:
                self._refuse(transport)
                return
            victim.push_out()
        guard.open += 1
        super().connection_made(transport)
        self._sync()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self.transport.close()
            return
        super().data_received(data)
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._refused:
            self.guard.lingering -= self._lingering
            return
        self._lost = True
        self.guard.open -= 1
        self.guard.waiting.pop(self, None)
        super().connection_lost(exc)

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """Over the limit: 503, then closed after the first data (which the client sent
        already, most likely: closing with it unread would reset the connection and lose
        the answer) or a moment, whichever comes first."""
        self._refused, self.transport, guard = True, cast(asyncio.Transport, transport), \
            self.guard
        peer = transport.get_extra_info("peername")
        guard.event("refused", str(peer[0]) if peer else None)
        self.transport.write(BUSY_503)
        if guard.lingering < max(16, guard.limits.max_connections // 8):
            self._lingering = True
            guard.lingering += 1
            self._timer = self.loop.call_later(REFUSE_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _sync(self) -> None:
        """Start or stop the timer for the phase the connection is in now."""
        phase = Phase.BUSY if self._lost or self.transport.is_closing() else self._phase()
        if phase is self._on:
            return
        guard, self._on = self.guard, phase
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        guard.waiting.pop(self, None)
        cycle = self._current()
        if phase is Phase.IDLE or (phase is Phase.HEADERS and (
                cycle is None or cycle.response_complete)):  # (not behind a pipelined one)
            guard.waiting[self] = time.monotonic()
        if phase is Phase.HEADERS:
            self._timer = self.loop.call_later(guard.limits.header_timeout, self._expire)
        elif phase is Phase.BODY:
            self._timer = self.loop.call_later(guard.limits.body_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._lost or self.transport.is_closing():
            return
        phase, cycle = self._on, self._current()
        busy = cycle is not None and not cycle.response_complete
        unread = self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue)
        if (phase is Phase.BODY and unread) or (phase is Phase.HEADERS and busy):
            # the application has not asked for the body (or more of it), or not answered
            # a pipelined request yet: not the client's doing
            self._timer = self.loop.call_later(RECHECK_SECONDS, self._expire)
            return
        self._close(answer=phase is Phase.HEADERS
                    or (cycle is not None and not cycle.response_started))
        self.guard.event("header" if phase is Phase.HEADERS else "body", self._host())

    def push_out(self) -> None:
        """Close this connection (it has no request in progress) to admit another."""
        self._close(answer=self._on is Phase.HEADERS)
        self.guard.event("evicted", self._host())

    def _close(self, answer: bool) -> None:
        cycle = self._current()
        if self._on is Phase.BODY and cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's receive() ends, its answer is lost
            cycle.message_event.set()
        if answer:
            self.transport.write(TIMEOUT_408)
        self.transport.close()
        self._sync()

    def _host(self) -> str | None:
        return self.client[0] if self.client else None


class GuardedHttpTools(_Guarded):
    """Set up by ``protocol_class`` on uvicorn's httptools protocol."""

    _parsing = Phase.HEADERS


def _httptools_class() -> type[_Guarded] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return None

    class HttpTools(GuardedHttpTools, HttpToolsProtocol):
        impl = "httptools"

        def _current(self) -> _Cycle | None:
            return self.cycle

        def _phase(self) -> Phase:
            parsing = self._parsing
            if parsing is Phase.BUSY and self.cycle.response_complete and not self.pipeline:
                return Phase.IDLE
            return parsing

        def on_message_begin(self) -> None:
            self._parsing = Phase.HEADERS
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._parsing = Phase.BODY
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._parsing = Phase.BUSY
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._sync()

    return HttpTools


class GuardedH11(_Guarded, H11Protocol):
    impl = "h11"

    def _current(self) -> _Cycle | None:
        return self.cycle

    def _phase(self) -> Phase:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return Phase.BODY
        if state is h11.IDLE:
            fresh = self.cycle is None or self.conn.trailing_data[0]
            return Phase.HEADERS if fresh else Phase.IDLE
        return Phase.BUSY

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync()


_HTTPTOOLS = _httptools_class()


def protocol_class(guard: Guard, http: HttpImpl = "auto") -> type[_Guarded]:
    """uvicorn's HTTP protocol (``http``; auto: httptools if installed) guarded by
    ``guard``."""
    base: type[_Guarded] | None = GuardedH11 if http == "h11" else _HTTPTOOLS
    if base is None:
        if http == "httptools":
            raise RuntimeError("httptools is not installed")
        base = GuardedH11
    return type(f"{base.__name__}For{guard.name.title()}", (base,), {"guard": guard})


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (None: asyncio's own)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    kind = type(loop)
    return f"{kind.__module__}.{kind.__qualname__}"


class GuardedServer(uvicorn.Server):
    """A listener's uvicorn server: leaves signals to cloudvac (one handler stops the
    engine and every listener together) and says how it serves once it listens."""

    def __init__(self, config: uvicorn.Config, guard: Guard, impl: str) -> None:
        super().__init__(config)
        self.guard, self.impl = guard, impl

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        where = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}"
                          for srv in self.servers for s in srv.sockets)
        log.info("space=- machinetype=- machine=- web %s listening on %s: event loop %s, "
                 "HTTP %s; %s", self.guard.name, where, loop_name(asyncio.get_running_loop()),
                 self.impl, self.guard.limits.describe())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        self.guard.flush_logs()  # what the last quiet period counted


def guarded_server(app: Any, limits: WebLimits, *, name: str = "vm",
                   registry: CollectorRegistry | None = None, http: HttpImpl = "auto",
                   **config: Any) -> GuardedServer:
    """A uvicorn server for ``app`` with ``limits``; ``config``: uvicorn.Config's other
    arguments (host, port, TLS files, lifespan...).  Metrics go to ``registry`` (default:
    the registry of the app's context, ``app.state.ctx.registry``), labelled ``name``."""
    if registry is None:
        ctx = getattr(getattr(app, "state", None), "ctx", None)
        registry = getattr(ctx, "registry", None) or CollectorRegistry()
    guard = Guard(name, limits, registry)
    protocol = protocol_class(guard, http)
    settings: dict[str, Any] = {"log_config": None, "access_log": False,
                                "server_header": False, "timeout_graceful_shutdown": 5,
                                **config}
    return GuardedServer(uvicorn.Config(GuardMiddleware(app, guard), http=protocol,
                                        timeout_keep_alive=limits.keepalive, **settings),
                         guard, protocol.impl)
