"""The operator's door: health, metrics, status and the VM door's OpenAPI document, on a
listener of its own (``operator_listen``, loopback by default), never on the VMs' port.

Access: on loopback, whoever can reach the port (the host's own users); elsewhere
``operator_access`` refuses to start unless TLS is configured and either a bearer token
(``operator_token_file``, compared in constant time on every request) or a client
certificate signed by ``operator_tls_client_ca`` (checked in the TLS handshake) is
required.  Nothing here answers anything a VM needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloudvac.config.secrets import read_secret
from cloudvac.config.settings import Settings
from cloudvac.status import read_view, status_rows
from cloudvac.web.context import context
from cloudvac.web.guard import WebLimits
from cloudvac.web.listen import (
    Door,
    WebConfigError,
    check_door_tls,
    is_loopback,
    parse_listen,
)
from cloudvac.web.protocols import guarded_server

OPERATOR_CONNECTIONS = 64  # operators and their scrapers, not thousands of VMs


@dataclass(frozen=True, slots=True)
class OperatorAccess:
    """How the operator's door is reached and who may use it."""

    door: Door
    token: bytes | None
    """Every request must carry ``Authorization: Bearer <token>`` when set."""


def operator_access(settings: Settings) -> OperatorAccess:
    """The operator door as configured.  Raises WebConfigError (``str()`` says what to set)
    when a non-loopback door would be open to anyone or speak plain HTTP, or its TLS files
    cannot be used; SecretError (never holding the token) when the token file cannot."""
    listen = parse_listen(settings.operator_listen)
    cert, key, ca = (settings.operator_tls_cert, settings.operator_tls_key,
                     settings.operator_tls_client_ca)
    token_file = settings.operator_token_file
    if (cert is None) != (key is None):
        raise WebConfigError("set both operator_tls_cert and operator_tls_key (or neither)")
    if ca is not None and cert is None:
        raise WebConfigError("operator_tls_client_ca needs operator_tls_cert and operator_tls_key")
    if not is_loopback(listen.host):
        if cert is None:
            raise WebConfigError(f"operator_listen {settings.operator_listen} is not a loopback "
                             "address: set operator_tls_cert and operator_tls_key")
        if token_file is None and ca is None:
            raise WebConfigError(f"operator_listen {settings.operator_listen} is not a loopback "
                             "address: set operator_token_file or operator_tls_client_ca")
    token = None
    if token_file is not None:
        token = read_secret(token_file, None, "operator_token_file").encode()
    door = Door(listen, cert, key, ca)
    check_door_tls(door, "operator")
    return OperatorAccess(door, token)


def operator_server(app: FastAPI, door: Door, limits: WebLimits) -> uvicorn.Server:
    """The operator's listener on ``door`` (checked by ``operator_access``; serve it a
    socket from ``listen.bind``), with the VM door's protections but a small connection
    bound and no rate limit (``OPERATOR_CONNECTIONS``)."""
    return guarded_server(
        app, dataclasses.replace(limits, max_connections=min(limits.max_connections,
                                                             OPERATOR_CONNECTIONS), rate=0),
        name="operator", host=door.listen.host, port=door.listen.port,
        ssl_certfile=str(door.cert) if door.cert else None,
        ssl_keyfile=str(door.key) if door.key else None,
        ssl_ca_certs=str(door.client_ca) if door.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if door.client_ca else ssl.CERT_NONE,
        lifespan="off")


def _require_token(token: bytes | None) -> Callable[..., Any]:
    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token):
            raise HTTPException(401, "operator token required",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


def create_operator_app(vm_app: FastAPI, access: OperatorAccess) -> FastAPI:
    """The operator's application; its context is the VM application's."""
    app = FastAPI(title="cloudvac operator", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_require_token(access.token))])
    app.state.ctx = vm_app.state.ctx
    app.include_router(router)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The VM door's API (what VMs may call), for clients and schema-driven tests."""
        return JSONResponse(vm_app.openapi())

    return app


router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, str]:
    await asyncio.to_thread(context(request).store.events, None, 1)
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(context(request).registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/status")
async def status(request: Request) -> list[dict[str, object]]:
    ctx = context(request)

    def rows() -> list[dict[str, object]]:
        view = read_view(ctx.store, events=200)
        return [r.as_dict() for r in status_rows(ctx.spaces(), view, ctx.clock())]

    return await asyncio.to_thread(rows)

