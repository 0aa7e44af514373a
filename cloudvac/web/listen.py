"""Where a door of the web service listens and how it speaks TLS: parsing ``HOST:PORT``,
the loopback rule, and a bound socket known before serving (port 0: any free port)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path


class WebConfigError(RuntimeError):
    """The web service cannot start as configured; ``str()`` says what to fix."""


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Door:
    """One listener: its address and TLS material (``client_ca``: client certificates
    signed by it are required)."""

    listen: Listen
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None


def parse_listen(value: str) -> Listen:
    host, _, port = value.rpartition(":")
    return Listen(host, int(port))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_door_tls(door: Door, what: str) -> None:
    """Raise WebConfigError unless the door's TLS files load and form a usable pair."""
    files = [(f"{what}_tls_cert", door.cert), (f"{what}_tls_key", door.key),
             (f"{what}_tls_client_ca", door.client_ca)]
    for option, path in files:
        if path is None:
            continue
        try:
            path.read_bytes()
        except OSError as exc:
            raise WebConfigError(f"{option} {path}: {exc.strerror}") from None
    if door.cert is None or door.key is None:
        return
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(door.cert, door.key)
        if door.client_ca is not None:
            context.load_verify_locations(door.client_ca)
    except ssl.SSLError as exc:
        raise WebConfigError(f"{what}_tls_cert/{what}_tls_key do not form a usable pair "
                             f"(or {what}_tls_client_ca is no CA bundle): "
                             f"{exc.reason or exc}") from None


def bind(listen: Listen, option: str) -> socket.socket:
    """A socket bound to ``listen`` (port 0: any free port); WebConfigError naming
    ``option`` when the address cannot be bound."""
    host = listen.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, listen.port))
    except OSError as exc:
        sock.close()
        raise WebConfigError(f"cannot listen on {option} {listen.host}:{listen.port}: "
                             f"{exc.strerror}") from None
    return sock
