"""The VM door's ASGI application (``vm.py``: what VMs call, each with its own token) and
the assembly of the operator's (``operator.py``), which listens elsewhere.

Every refusal is a 4xx with a JSON ``detail`` and never echoes the input (a header may hold
a token); a failing store is a 503 the VM retries; the OpenAPI document lists exactly the
answers the routes give (no 422: validation failures are 400).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from cloudvac.store.engine import StoreUnavailable
from cloudvac.web import vm
from cloudvac.web.beats import HeartbeatFastPath
from cloudvac.web.context import WebContext, context
from cloudvac.web.files import UploadRejected

log = logging.getLogger("cloudvac.web.app")
STORE_ERROR_LOG_SECONDS = 60.0
RETRY_AFTER_SECONDS = 30


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    where = {".".join(str(p) for p in e["loc"]) for e in exc.errors()}
    return JSONResponse({"detail": f"invalid request: {', '.join(sorted(where))}"},
                        status_code=400)


async def _rejected(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UploadRejected)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


class _StoreFailures:
    """Answers 503 when the store fails, logging one line a minute (with a count)."""

    def __init__(self) -> None:
        self.since_logged, self.logged_at = 0, -1e9

    async def __call__(self, request: Request, exc: Exception) -> JSONResponse:
        context(request).metrics.store_errors.inc()
        self.since_logged += 1
        now = time.monotonic()
        if now - self.logged_at >= STORE_ERROR_LOG_SECONDS:
            log.error("space=- machinetype=- machine=- store failed while serving VMs: %s "
                      "(%d requests answered 503 since the last such line)",
                      type(exc).__name__, self.since_logged)
            self.logged_at, self.since_logged = now, 0
        return JSONResponse({"detail": "the server cannot reach its store now; retry"},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


_ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}},
                 "required": ["detail"], "title": "Error"}
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "required": True, "schema": {"type": "integer"}}}
# What the routes do not declare themselves: the answers of the listener (``guard.py``,
# ``protocols.py``: slow client, rate limit, connection limit) and of a failing store
# (``_StoreFailures``), on every route.
_LISTENER_ANSWERS: dict[str, dict[str, Any]] = {
    "408": {"description": "the request's headers or body did not arrive in time",
            "content": _TEXT},
    "429": {"description": "too many requests from this address (retry)", "content": _TEXT,
            "headers": _RETRY_AFTER},
    "503": {"description": "the store is unavailable (JSON), or the server has too many "
                           "connections (text); retry",
            "content": {**_JSON_ERROR, **_TEXT}, "headers": _RETRY_AFTER},
}


def _document(status: str, answer: dict[str, Any]) -> None:
    """Give a refusal the body (and headers) it really has: a JSON ``detail``; a 400 is
    plain text when the listener cannot even parse the request; every 401 asks for a
    bearer token."""
    if status in _LISTENER_ANSWERS:
        answer.update(copy.deepcopy(_LISTENER_ANSWERS[status]))
    elif status.startswith(("4", "5")):
        answer["content"] = copy.deepcopy({**_JSON_ERROR, **_TEXT} if status == "400"
                                          else _JSON_ERROR)
    if status == "401":
        answer["headers"] = {"WWW-Authenticate": {
            "description": "the scheme to use: Bearer", "required": True,
            "schema": {"type": "string"}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document made to say what the server answers: no 422 (validation failures
    are 400; see ``_invalid``), the listener's own answers (``_LISTENER_ANSWERS``), the
    body of every refusal, and the machine's token as a bearer security scheme rather than
    an optional ``authorization`` header."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation["parameters"] = [
                    p for p in operation.get("parameters", [])
                    if not (p["in"] == "header" and p["name"].lower() == "authorization")]
                answers = operation.setdefault("responses", {})
                answers.pop("422", None)
                answers.update({s: {} for s in _LISTENER_ANSWERS if s not in answers})
                for status, answer in answers.items():
                    _document(status, answer)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["Error"] = copy.deepcopy(_ERROR_SCHEMA)
        components["securitySchemes"] = {"machineToken": {
            "type": "http", "scheme": "bearer",
            "description": "the machine's own token, from its user_data"}}
        schema["security"] = [{"machineToken": []}]
        app.openapi_schema = schema
    return app.openapi_schema


class VmDoor(FastAPI):
    """The VM door's application: heartbeat PUTs it can answer go to the fast path
    (``beats.py``), before FastAPI and its middleware; everything else to FastAPI."""

    def __init__(self, ctx: WebContext, **options: Any) -> None:
        super().__init__(**options)
        self.fast = HeartbeatFastPath(self._framework, ctx)

    async def _framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fast(scope, receive, send)


def create_app(ctx: WebContext) -> FastAPI:
    """The VM door serving ``ctx``; its lifespan runs the heartbeat flusher."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.heartbeats.start()
        try:
            yield
        finally:
            await ctx.heartbeats.stop()

    app = VmDoor(ctx, title="cloudvac", lifespan=lifespan, docs_url=None, redoc_url=None,
                 openapi_url=None)
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(UploadRejected, _rejected)
    failures = _StoreFailures()
    app.add_exception_handler(SQLAlchemyError, failures)
    app.add_exception_handler(StoreUnavailable, failures)
    app.include_router(vm.vm)
    app.include_router(vm.space_router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """For load balancers in front of the VM door: the process serves."""
        return {"status": "ok"}

    return app
