"""The web service, one ASGI application with two doors.

VM side (``vm.py``; per-VM token on every request, a VM reaches only its own paths):
``PUT /machines/{space}/{name}/joboutputs/{file}``, ``GET .../machinefeatures/{key}``,
``GET .../jobfeatures/{key}``, ``GET .../user_data``; public discovery:
``GET /heartbeatlists/{space}/{machinetype}``.  Operator side (``operator.py``):
``/healthz``, ``/metrics``, ``/status``.  Every path is a template of ``model/layout.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cloudvac.web import operator, vm
from cloudvac.web.context import WebContext
from cloudvac.web.files import UploadRejected


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    # Never echo inputs back: a header may hold a token.
    assert isinstance(exc, RequestValidationError)
    where = {".".join(str(p) for p in e["loc"]) for e in exc.errors()}
    return JSONResponse({"detail": f"invalid request: {', '.join(sorted(where))}"},
                        status_code=400)


async def _rejected(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UploadRejected)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


def create_app(ctx: WebContext) -> FastAPI:
    """The application serving ``ctx``; its lifespan runs the heartbeat flusher."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.heartbeats.start()
        try:
            yield
        finally:
            await ctx.heartbeats.stop()

    app = FastAPI(title="cloudvac", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(UploadRejected, _rejected)
    app.include_router(vm.vm)
    app.include_router(vm.public)
    app.include_router(operator.router)
    return app
