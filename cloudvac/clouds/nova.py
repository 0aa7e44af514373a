"""Nova wire formats: the fast typed decoding of listings and the error translation.

The per-cycle listing is decoded with msgspec into small structs holding only the fields
the engine needs (DESIGN.md: SDK resource objects cost ~2.5 ms per server; this ~2 µs).
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec

from cloudvac.model.errors import (
    AuthFailed,
    CloudError,
    Gone,
    Misconfigured,
    QuotaExceeded,
    Retryable,
)
from cloudvac.model.redact import redact
from cloudvac.model.states import MachineState

S = MachineState
MICROVERSION = "2.47"  # flavor details (vcpus) embedded in each server record
MESSAGE_CHARS = 300
"""The cloud's own message is kept to this length, after redaction."""
ERROR_CHARS = 500
"""An error's whole text (what failed, the cloud's message) is kept to this length."""


class Flavor(msgspec.Struct):
    vcpus: int = 1
    ram: int = 0
    original_name: str = ""


class Fault(msgspec.Struct):
    message: str = ""
    code: int = 0


class Address(msgspec.Struct):
    addr: str = ""


class Server(msgspec.Struct):
    id: str
    name: str
    status: str = "UNKNOWN"
    metadata: dict[str, str] = {}
    created: str | None = None
    updated: str | None = None
    flavor: Flavor = msgspec.field(default_factory=Flavor)
    fault: Fault | None = None
    addresses: dict[str, list[Address]] = {}
    task_state: str | None = msgspec.field(name="OS-EXT-STS:task_state", default=None)
    launched_at: str | None = msgspec.field(name="OS-SRV-USG:launched_at", default=None)


class Link(msgspec.Struct):
    rel: str = ""
    href: str = ""


class ServerPage(msgspec.Struct):
    servers: list[Server] = []
    servers_links: list[Link] = []


class Absolute(msgspec.Struct):
    maxTotalCores: int = -1
    totalCoresUsed: int = 0
    maxTotalInstances: int = -1
    totalInstancesUsed: int = 0
    maxTotalRAMSize: int = -1
    totalRAMUsed: int = 0


class LimitsBody(msgspec.Struct):
    absolute: Absolute = msgspec.field(default_factory=Absolute)


class LimitsDoc(msgspec.Struct):
    limits: LimitsBody = msgspec.field(default_factory=LimitsBody)


PAGE = msgspec.json.Decoder(ServerPage)
LIMITS = msgspec.json.Decoder(LimitsDoc)

_STATES = {"BUILD": S.STARTING, "ACTIVE": S.RUNNING, "SHUTOFF": S.STOPPED, "ERROR": S.FAILED,
           "DELETED": S.DELETING, "SOFT_DELETED": S.DELETING,
           # transient operator actions on a live VM: its payload keeps running
           "REBOOT": S.RUNNING, "HARD_REBOOT": S.RUNNING, "MIGRATING": S.RUNNING,
           "RESIZE": S.RUNNING, "VERIFY_RESIZE": S.RUNNING, "REVERT_RESIZE": S.RUNNING,
           "PASSWORD": S.RUNNING, "REBUILD": S.RUNNING}


def state_of(server: Server) -> MachineState:
    """Nova status and task state to a cloudvac state (task states are lower case)."""
    if (server.task_state or "").lower() == "deleting":
        return S.DELETING
    return _STATES.get(server.status.upper(), S.UNKNOWN)


def timestamp(text: str | None) -> float | None:
    """Nova's ISO times ('...Z' for created, naive UTC for launched_at) to unix seconds."""
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def first_address(server: Server) -> str:
    for network in sorted(server.addresses):
        for address in server.addresses[network]:
            if address.addr:
                return address.addr
    return ""


def error_message(body: bytes | str | None) -> str:
    """The message inside Nova's ``{"<name>": {"code": N, "message": "..."}}`` wrapping (or
    the body itself when it is not JSON), redacted and at most ``MESSAGE_CHARS`` long: an
    error body may quote the request, user_data and tokens included."""
    if not body:
        return ""
    try:
        doc: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return redact(text.strip(), MESSAGE_CHARS)
    if isinstance(doc, dict):
        for value in doc.values():
            if isinstance(value, dict) and "message" in value:
                return redact(str(value["message"]), MESSAGE_CHARS)
    return ""


def translate(status: int, message: str, what: str) -> CloudError:
    """An HTTP status from Nova (or Keystone) to the adapter error taxonomy.  The error's
    text is redacted and at most ``ERROR_CHARS`` long (``message`` may be any library's
    rendering of the answer)."""
    text = redact(f"{what}: {message}" if message else f"{what}: HTTP {status}", ERROR_CHARS)
    if status == 401:
        return AuthFailed(f"{text} (credentials refused after re-authentication)")
    if status == 413 or (status == 403 and "quota" in message.lower()):
        return QuotaExceeded(text)
    if status == 404:
        return Gone(text)
    if status in (400, 403, 406):
        return Misconfigured(text)
    return Retryable(text)
