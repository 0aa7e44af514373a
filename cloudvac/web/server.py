"""Serving the web application with uvicorn: TLS rules and start-up checks.

Plain HTTP is allowed only when binding a loopback address (the demo, tests, or behind a
local TLS proxy); anything else needs ``web_tls_cert`` and ``web_tls_key``, and both are
loaded once before serving so a missing or unreadable key is a clear start-up error, not
a failed handshake later.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from cloudvac.config.models import Settings

log = logging.getLogger("cloudvac.web.server")


class WebConfigError(RuntimeError):
    """The web service cannot start as configured; ``str()`` says what to fix."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


def listen_address(settings: Settings) -> Listen:
    host, _, port = settings.web_listen.rpartition(":")
    return Listen(host, int(port))


def check_tls(settings: Settings) -> None:
    """Raise WebConfigError unless the TLS configuration can serve as configured."""
    listen = listen_address(settings)
    cert, key = settings.web_tls_cert, settings.web_tls_key
    if (cert is None) != (key is None):
        raise WebConfigError("set both web_tls_cert and web_tls_key (or neither, on loopback)")
    if cert is None or key is None:
        if not _is_loopback(listen.host):
            raise WebConfigError(f"web_listen {settings.web_listen} is not a loopback address: "
                                 "plain HTTP is only allowed on loopback; set web_tls_cert "
                                 "and web_tls_key")
        return
    for what, path in (("web_tls_cert", cert), ("web_tls_key", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise WebConfigError(f"{what} {path}: {exc.strerror}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise WebConfigError(f"web_tls_cert/web_tls_key do not form a usable pair: "
                             f"{exc.reason or exc}") from None


def listen_socket(settings: Settings) -> socket.socket:
    """A socket bound to web_listen (port 0: any free port), after the TLS checks, so the
    port is known before anything that tells VMs the URL is built."""
    check_tls(settings)
    listen = listen_address(settings)
    host = listen.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, listen.port))
    except OSError as exc:
        sock.close()
        raise WebConfigError(f"cannot listen on {settings.web_listen}: {exc.strerror}") from None
    return sock


def socket_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def make_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    """A uvicorn server for ``app`` on web_listen (port 0: any free port); give
    ``serve()`` a socket from ``listen_socket`` to choose the port beforehand."""
    check_tls(settings)
    listen = listen_address(settings)
    config = uvicorn.Config(
        app, host=listen.host, port=listen.port,
        ssl_certfile=str(settings.web_tls_cert) if settings.web_tls_cert else None,
        ssl_keyfile=str(settings.web_tls_key) if settings.web_tls_key else None,
        log_config=None, access_log=False, lifespan="on", server_header=False,
        timeout_graceful_shutdown=5)
    return _Server(config)


class _Server(uvicorn.Server):
    """Leaves signals to cloudvac: one handler stops the engine and the web together."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")
