"""The VM-facing and operator web service, one ASGI application.

VM side (``Authorization: Bearer <per-VM token>`` on every request; a VM reaches only its
own paths): ``PUT /machines/{space}/{name}/joboutputs/{file}``, ``GET .../machinefeatures/
{key}``, ``GET .../jobfeatures/{key}``, ``GET .../user_data``.  Public discovery:
``GET /heartbeatlists/{space}/{machinetype}``.  Operator side: ``/healthz``, ``/metrics``,
``/status``.

Contract for uploads: a request is either fully accepted (file replaced atomically and the
store updated) or refused with a 4xx and a JSON ``detail`` — nothing written, no 5xx for
any input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from cloudvac.config.models import Machinetype, Settings, Space
from cloudvac.engine.records import MachineRecord
from cloudvac.engine.states import MachineState, ShutdownMessage, ShutdownMessageError
from cloudvac.engine.status import status_rows
from cloudvac.store import Store
from cloudvac.web.files import FILE_RE, MACHINE_RE, SPACE_RE, JoboutputsDir, UploadRejected
from cloudvac.web.heartbeats import HeartbeatBuffer
from cloudvac.web.mjf import job_features, machine_features
from cloudvac.web.tokens import TokenError, TokenSigner

Renderer = Callable[[Space, Machinetype, str], str]
SpaceName = Annotated[str, Path(pattern=SPACE_RE.pattern, max_length=63)]
MachineName = Annotated[str, Path(pattern=MACHINE_RE.pattern, max_length=63)]
FileName = Annotated[str, Path(pattern=FILE_RE.pattern, max_length=64)]
SHUTDOWN_FILE = "shutdown_message"
MACHINE_CACHE_SECONDS = 5.0
MACHINE_CACHE_SIZE = 200_000


class WebMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploads = Counter("cloudvac_uploads", "VM uploads by kind and HTTP status",
                               ["kind", "status"], registry=registry)
        self.upload_bytes = Counter("cloudvac_upload_bytes", "Bytes accepted from VMs",
                                    registry=registry)


@dataclass
class WebContext:
    settings: Settings
    store: Store
    signer: TokenSigner
    files: JoboutputsDir
    spaces: Callable[[], Mapping[str, Space]]
    registry: CollectorRegistry
    render: Renderer | None = None
    clock: Callable[[], float] = time.time
    heartbeats: HeartbeatBuffer = field(init=False)
    metrics: WebMetrics = field(init=False)

    machines: dict[tuple[str, str], tuple[float, MachineRecord | None]] = field(
        default_factory=dict)
    """Short-lived cache of machine lookups: uploads must not cost a database read each."""

    def __post_init__(self) -> None:
        self.heartbeats = HeartbeatBuffer(self.store, self.files)
        self.metrics = WebMetrics(self.registry)

    async def machine(self, space: str, name: str) -> MachineRecord | None:
        """The machine's record, at most MACHINE_CACHE_SECONDS old."""
        now = time.monotonic()
        hit = self.machines.get((space, name))
        if hit is not None and now - hit[0] < MACHINE_CACHE_SECONDS:
            return hit[1]
        record = await asyncio.to_thread(self.store.machine, space, name)
        if len(self.machines) > MACHINE_CACHE_SIZE:
            self.machines.clear()
        self.machines[(space, name)] = (now, record)
        return record


def create_app(ctx: WebContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.heartbeats.start()
        try:
            yield
        finally:
            await ctx.heartbeats.stop()

    app = FastAPI(title="cloudvac", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ctx = ctx

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo inputs back: a header may hold a token.
        where = {".".join(str(p) for p in e["loc"]) for e in exc.errors()}
        return JSONResponse({"detail": f"invalid request: {', '.join(sorted(where))}"},
                            status_code=400)

    @app.exception_handler(UploadRejected)
    async def _rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def authorize(space: SpaceName, name: MachineName,
                        authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            ctx.signer.verify(token.strip(), space, name, ctx.clock())
        except TokenError as exc:
            raise HTTPException(exc.status, str(exc),
                                headers={"WWW-Authenticate": "Bearer"}) from None

    vm = [Depends(authorize)]

    async def known_machine(space: str, name: str) -> tuple[MachineRecord, Space]:
        record = await ctx.machine(space, name)
        config = ctx.spaces().get(space)
        if record is None or config is None:
            raise HTTPException(404, "no such machine")
        return record, config

    @app.put("/machines/{space}/{name}/joboutputs/{file}", status_code=204,
             responses={400: {}, 401: {}, 403: {}, 404: {}, 413: {}}, dependencies=vm)
    async def upload(space: SpaceName, name: MachineName, file: FileName,
                     request: Request) -> Response:
        kind = "log"
        try:
            data = await _read_limited(request, ctx.settings.upload_max_file_bytes)
            record, config = await known_machine(space, name)
            mt = config.machinetypes.get(record.machinetype)
            now = ctx.clock()
            if file == SHUTDOWN_FILE:
                kind = "shutdown_message"
                try:
                    message = ShutdownMessage.parse(data)
                except ShutdownMessageError as exc:
                    raise UploadRejected(400, f"malformed shutdown_message: {exc}") from None
                await asyncio.to_thread(ctx.files.write, space, name, file, data, True)
                await asyncio.to_thread(ctx.store.record_shutdown, space, name, message, now)
            elif file == ((mt.heartbeat_file if mt else None) or "heartbeat"):
                kind = "heartbeat"
                if record.state is MachineState.GONE:
                    raise UploadRejected(404, "machine has ended")
                # Time and body are kept; the flusher writes both within a second.
                ctx.heartbeats.note(space, name, now, file, data)
            else:
                await asyncio.to_thread(ctx.files.write, space, name, file, data, True)
        except (UploadRejected, HTTPException) as exc:
            status = exc.status if isinstance(exc, UploadRejected) else exc.status_code
            ctx.metrics.uploads.labels(kind, str(status)).inc()
            raise
        ctx.metrics.uploads.labels(kind, "204").inc()
        ctx.metrics.upload_bytes.inc(len(data))
        return Response(status_code=204)

    async def features(space: str, name: str, key: str, job: bool) -> PlainTextResponse:
        record, config = await known_machine(space, name)
        mt = config.machinetypes.get(record.machinetype)
        drained = await asyncio.to_thread(ctx.store.history, space)
        drain_at = ctx.clock() if {"*", record.machinetype} & drained.drained else None
        values = (job_features if job else machine_features)(config, mt, record, drain_at)
        if key not in values:
            raise HTTPException(404, f"no {key} for this machine")
        return PlainTextResponse(values[key] + "\n")

    @app.get("/machines/{space}/{name}/machinefeatures/{key}", response_class=PlainTextResponse,
             dependencies=vm)
    async def machinefeatures(space: SpaceName, name: MachineName,
                              key: FileName) -> PlainTextResponse:
        return await features(space, name, key, job=False)

    @app.get("/machines/{space}/{name}/jobfeatures/{key}", response_class=PlainTextResponse,
             dependencies=vm)
    async def jobfeatures(space: SpaceName, name: MachineName,
                          key: FileName) -> PlainTextResponse:
        return await features(space, name, key, job=True)

    @app.get("/machines/{space}/{name}/user_data", response_class=PlainTextResponse,
             dependencies=vm)
    async def user_data(space: SpaceName, name: MachineName) -> PlainTextResponse:
        record, config = await known_machine(space, name)
        mt = config.machinetypes.get(record.machinetype)
        if mt is None or ctx.render is None:
            raise HTTPException(404, "no user_data for this machine")
        return PlainTextResponse(ctx.render(config, mt, name))

    @app.get("/heartbeatlists/{space}/{machinetype}", response_class=PlainTextResponse)
    async def heartbeatlist(space: SpaceName, machinetype: MachineName) -> PlainTextResponse:
        config = ctx.spaces().get(space)
        mt = config.machinetypes.get(machinetype) if config else None
        if mt is None:
            raise HTTPException(404, "no such machinetype")
        records = await asyncio.to_thread(ctx.store.machines, space)
        horizon = ctx.clock() - (mt.heartbeat_seconds or 3600)
        alive = sorted(((r.heartbeat_at, r.name, r.address) for r in records
                        if r.machinetype == machinetype and r.state is MachineState.RUNNING
                        and r.heartbeat_at is not None and r.heartbeat_at >= horizon),
                       reverse=True)
        return PlainTextResponse("".join(f"{int(t)} {n} {a or '-'}\n" for t, n, a in alive))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        await asyncio.to_thread(ctx.store.events, None, 1)
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    async def status() -> list[dict[str, object]]:
        def rows() -> list[dict[str, object]]:
            store = ctx.store
            return [r.as_dict() for r in status_rows(ctx.spaces(), store.machines(),
                                                     store.last_aborts(),
                                                     store.events(limit=200), ctx.clock(),
                                                     store.credentials())]
        return await asyncio.to_thread(rows)

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) before reading past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadRejected(413, f"file larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadRejected(413, f"file larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
