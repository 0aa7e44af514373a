"""Serving the web application with uvicorn: TLS rules and start-up checks.

Plain HTTP is allowed only when binding a loopback address (the demo, tests, or behind a
local TLS proxy); anything else needs ``web_tls_cert`` and ``web_tls_key``, and both are
loaded once before serving so a missing or unreadable key is a clear start-up error, not
a failed handshake later.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from fastapi import FastAPI

from cloudvac.config.settings import Settings
from cloudvac.web.guard import WebLimits, raise_open_file_limit
from cloudvac.web.listen import (
    Door,
    WebConfigError,
    bind,
    check_door_tls,
    is_loopback,
    parse_listen,
)
from cloudvac.web.protocols import HttpImpl, guarded_server

log = logging.getLogger("cloudvac.web.server")


def vm_door(settings: Settings) -> Door:
    """The VMs' door as configured."""
    return Door(parse_listen(settings.web_listen), settings.web_tls_cert, settings.web_tls_key)


def check_tls(settings: Settings) -> None:
    """Raise WebConfigError unless the TLS configuration can serve as configured."""
    door = vm_door(settings)
    if (door.cert is None) != (door.key is None):
        raise WebConfigError("set both web_tls_cert and web_tls_key (or neither, on loopback)")
    if door.cert is None and not is_loopback(door.listen.host):
        raise WebConfigError(f"web_listen {settings.web_listen} is not a loopback address: "
                             "plain HTTP is only allowed on loopback; set web_tls_cert "
                             "and web_tls_key")
    check_door_tls(door, "web")


def listen_socket(settings: Settings) -> socket.socket:
    """A socket bound to web_listen (port 0: any free port), after the TLS checks, so the
    port is known before anything that tells VMs the URL is built."""
    check_tls(settings)
    return bind(vm_door(settings).listen, "web_listen")


def socket_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def make_server(app: FastAPI, settings: Settings, *, limits: WebLimits | None = None,
                http: HttpImpl = "auto") -> uvicorn.Server:
    """A uvicorn server for ``app`` on web_listen (port 0: any free port), with the
    protections of ``guard.py`` (``limits``: default from the settings); give ``serve()``
    a socket from ``listen_socket`` to choose the port beforehand."""
    check_tls(settings)
    listen = vm_door(settings).listen
    raise_open_file_limit()
    return guarded_server(
        app, limits or WebLimits.from_settings(settings), name="vm", http=http,
        host=listen.host, port=listen.port,
        ssl_certfile=str(settings.web_tls_cert) if settings.web_tls_cert else None,
        ssl_keyfile=str(settings.web_tls_key) if settings.web_tls_key else None,
        lifespan="on")


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")
