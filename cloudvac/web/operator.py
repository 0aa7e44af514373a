"""The operator's door: ``/healthz`` (``health.py``), ``/metrics``, ``/api/status`` (also
``/status``), the dashboard (``/`` and ``/dashboard``, ``dashboard.py``) and the VM
door's OpenAPI document, on a listener of its own (``operator_listen``, loopback by
default), never on the VMs' port.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from cloudvac.config.secrets import read_secret
from cloudvac.config.settings import Settings
from cloudvac.status import Alarm, StatusRow, alarms, read_view, status_rows
from cloudvac.web.context import WebContext, context
from cloudvac.web.dashboard import CSP, REFRESH_SECONDS, Dashboard, page
from cloudvac.web.guard import WebLimits
from cloudvac.web.health import Cycling, Health, Level, Problem, check
from cloudvac.web.listen import (
    Door,
    WebConfigError,
    check_door_tls,
    is_loopback,
    parse_listen,
)
from cloudvac.web.protocols import guarded_server

OPERATOR_CONNECTIONS = 64  # operators and their scrapers, not thousands of VMs
DASHBOARD_EVENTS = 1000  # the newest events the dashboard reads for its errors


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


@router.get("/healthz", response_class=PlainTextResponse,
            responses={503: {"description": "WARNING or CRITICAL: a space stalled, a "
                             "credential expires within a day, or the store fails"}})
async def healthz(request: Request) -> PlainTextResponse:
    """Nagios-usable: the first line starts with OK, WARNING or CRITICAL; 503 unless OK."""
    ctx = context(request)
    try:
        health = await asyncio.to_thread(_health, ctx)
    except Exception as exc:  # the store: its error class only, never its text (a URL)
        health = Health((Problem(Level.CRITICAL, f"store unreadable: {type(exc).__name__}"),))
    return PlainTextResponse(health.text(), status_code=health.status_code)


def _health(ctx: WebContext) -> Health:
    spaces = ctx.spaces()
    return check(spaces, Cycling.read(ctx.registry, spaces), ctx.store.credentials(),
                 ctx.clock(), ctx.settings.cycle_seconds)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """The engine's and the web's metrics, and what the store says now: backoffs in force
    and credential expiry (``status_metrics``).  No machine is read: a scrape costs the
    same at 100 or 100,000 machines."""
    ctx = context(request)
    ctx.heartbeats.publish_counts()
    own = generate_latest(ctx.registry)
    try:
        rows = await asyncio.to_thread(_alarms, ctx)
    except Exception:  # the store failed: the process's own metrics still serve
        return Response(own, media_type=CONTENT_TYPE_LATEST)
    return Response(own + status_metrics(rows), media_type=CONTENT_TYPE_LATEST)


def _alarms(ctx: WebContext) -> list[Alarm]:
    return alarms(ctx.spaces(), ctx.store.last_aborts(), ctx.store.credentials(), ctx.clock())


def status_metrics(rows: Sequence[Alarm]) -> bytes:
    """Gauges from the machinetypes' alarms, in a registry made for this scrape only."""
    registry = CollectorRegistry()
    left = Gauge("cloudvac_backoff_seconds_left", "Seconds before the machinetype may "
                 "create again after an abort (0: no backoff)", ["space", "machinetype"],
                 registry=registry)
    active = Gauge("cloudvac_backoffs_active", "Machinetypes in backoff now", registry=registry)
    expiry = Gauge("cloudvac_credential_expiry_seconds", "Seconds until the space's "
                   "earliest-expiring credential expires (as last recorded in the store)",
                   ["space"], registry=registry)
    for r in rows:
        left.labels(r.space, r.machinetype).set(r.backoff_seconds_left)
        if r.credential_expires_in is not None:
            expiry.labels(r.space).set(r.credential_expires_in)
    active.set(sum(r.backoff_seconds_left > 0 for r in rows))
    return generate_latest(registry)


def _rows(ctx: WebContext) -> list[StatusRow]:
    view = read_view(ctx.store, events=200)
    return status_rows(ctx.spaces(), view, ctx.clock())


@router.get("/status")
@router.get("/api/status")
async def status(request: Request) -> list[dict[str, object]]:
    """One row per space and machinetype: the rows of ``cloudvac status --json``."""
    rows = await asyncio.to_thread(_rows, context(request))
    return [r.as_dict() for r in rows]


@router.get("/", include_in_schema=False)
@router.get("/dashboard", include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    """The operator's dashboard (``dashboard.py``)."""
    ctx = context(request)
    html = await asyncio.to_thread(_dashboard, ctx)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP,
                                       "Cache-Control": "no-store"})


def _dashboard(ctx: WebContext) -> str:
    spaces, now = ctx.spaces(), ctx.clock()
    view = read_view(ctx.store, events=DASHBOARD_EVENTS)
    data = Dashboard(spaces, status_rows(spaces, view, now),
                     ctx.store.machines(include_gone=True), view.events, view.credentials,
                     check(spaces, Cycling.read(ctx.registry, spaces), view.credentials, now,
                           ctx.settings.cycle_seconds), now)
    return page(data, refresh=max(REFRESH_SECONDS, int(ctx.settings.cycle_seconds)))
