"""The VM-facing door: every route but the public heartbeat lists needs the machine's own
token (``Authorization: Bearer``), and a VM reaches only its own paths.

Contract for uploads: a request is either fully accepted (file replaced atomically and the
store updated) or refused with a 4xx and a JSON ``detail``, nothing written, no 5xx for
any input.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response
from fastapi.responses import PlainTextResponse

from cloudvac.auth.vmtokens import TokenError
from cloudvac.config.models import Machinetype, Space
from cloudvac.model import layout
from cloudvac.model.naming import MACHINE_NAME, SPACE_NAME
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState, ShutdownMessage, ShutdownMessageError
from cloudvac.web.context import WebContext, context
from cloudvac.web.files import FILE_RE, UploadRejected
from cloudvac.web.mjf import job_features, machine_features

SpaceName = Annotated[str, Path(pattern=SPACE_NAME.pattern, max_length=63)]
MachineName = Annotated[str, Path(pattern=MACHINE_NAME.pattern, max_length=63)]
FileName = Annotated[str, Path(pattern=FILE_RE.pattern, max_length=64)]


async def authorize(request: Request, space: SpaceName, name: MachineName,
                    authorization: Annotated[str | None, Header()] = None) -> None:
    ctx = context(request)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        ctx.signer.verify(token.strip(), space, name, ctx.clock())
    except TokenError as exc:
        raise HTTPException(exc.status, str(exc),
                            headers={"WWW-Authenticate": "Bearer"}) from None


vm = APIRouter(dependencies=[Depends(authorize)])
public = APIRouter()


async def known_machine(ctx: WebContext, space: str,
                        name: str) -> tuple[MachineRecord, Space, Machinetype | None]:
    record = await ctx.machines.get(space, name)
    config = ctx.spaces().get(space)
    if record is None or config is None:
        raise HTTPException(404, "no such machine")
    return record, config, config.machinetypes.get(record.machinetype)


@vm.put(layout.JOBOUTPUT, status_code=204,
        responses={400: {}, 401: {}, 403: {}, 404: {}, 413: {}})
async def upload(request: Request, space: SpaceName, name: MachineName,
                 file: FileName) -> Response:
    ctx, kind = context(request), "log"
    try:
        data = await _read_limited(request, ctx.settings.upload_max_file_bytes)
        record, _, mt = await known_machine(ctx, space, name)
        now = ctx.clock()
        if file == layout.SHUTDOWN_FILE:
            kind = "shutdown_message"
            await _shutdown_message(ctx, space, name, data, now)
        elif file == ((mt.heartbeat_file if mt else None) or layout.HEARTBEAT_FILE):
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


async def _shutdown_message(ctx: WebContext, space: str, name: str, data: bytes,
                            now: float) -> None:
    try:
        message = ShutdownMessage.parse(data)
    except ShutdownMessageError as exc:
        raise UploadRejected(400, f"malformed shutdown_message: {exc}") from None
    await asyncio.to_thread(ctx.files.write, space, name, layout.SHUTDOWN_FILE, data, True)
    await asyncio.to_thread(ctx.store.record_shutdown, space, name, message, now)
    if ctx.wake is not None:  # a slot is about to free: refill it soon
        ctx.wake(space)


async def _features(ctx: WebContext, space: str, name: str, key: str,
                    job: bool) -> PlainTextResponse:
    record, config, mt = await known_machine(ctx, space, name)
    drained = await asyncio.to_thread(ctx.store.drained, space)
    drain_at = ctx.clock() if {"*", record.machinetype} & drained else None
    values = (job_features if job else machine_features)(config, mt, record, drain_at)
    if key not in values:
        raise HTTPException(404, f"no {key} for this machine")
    return PlainTextResponse(values[key] + "\n")


@vm.get(layout.MACHINEFEATURE, response_class=PlainTextResponse)
async def machinefeatures(request: Request, space: SpaceName, name: MachineName,
                          key: FileName) -> PlainTextResponse:
    return await _features(context(request), space, name, key, job=False)


@vm.get(layout.JOBFEATURE, response_class=PlainTextResponse)
async def jobfeatures(request: Request, space: SpaceName, name: MachineName,
                      key: FileName) -> PlainTextResponse:
    return await _features(context(request), space, name, key, job=True)


@vm.get(layout.USER_DATA, response_class=PlainTextResponse)
async def user_data(request: Request, space: SpaceName, name: MachineName) -> PlainTextResponse:
    ctx = context(request)
    _, config, mt = await known_machine(ctx, space, name)
    if mt is None or ctx.render is None:
        raise HTTPException(404, "no user_data for this machine")
    return PlainTextResponse(ctx.render(config, mt, name))


@public.get(layout.HEARTBEATLIST, response_class=PlainTextResponse)
async def heartbeatlist(request: Request, space: SpaceName,
                        machinetype: MachineName) -> PlainTextResponse:
    """``<unix time> <name> <address>`` per running VM of the machinetype that heartbeated
    within its ``heartbeat_list_horizon``, newest first (VCycle's heartbeat list)."""
    ctx = context(request)
    config = ctx.spaces().get(space)
    mt = config.machinetypes.get(machinetype) if config else None
    if mt is None:
        raise HTTPException(404, "no such machinetype")
    since = ctx.clock() - mt.heartbeat_list_horizon
    alive = await asyncio.to_thread(ctx.store.heartbeating, space, machinetype, since)
    return PlainTextResponse("".join(f"{int(r.heartbeat_at or 0)} {r.name} {r.address or '-'}\n"
                                     for r in alive))


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
