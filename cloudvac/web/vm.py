"""The VM-facing door: every route needs a machine's own token (``Authorization: Bearer``),
and a VM reaches only its own paths (the heartbeat list: its own space's).

A token works while its machine lives, and no longer than the machine:

============================  ===========  ====================================  =========
route                         alive        ended (stopped, failed, delete asked)  unknown
============================  ===========  ====================================  =========
PUT heartbeat file            204 (or 413) 410                                    404
PUT shutdown_message, logs    204          204 for ``ended_upload_grace_seconds``  404
                                           after the end, then 410
GET machine/job features      200 / 404    410                                    404
GET user_data                 200 once     410                                    404
                              (or always
                              from the
                              machine's own
                              address), 409
============================  ===========  ====================================  =========

Contract for uploads: a request is either fully accepted (file replaced and the machine's
row updated in one store transaction) or refused with a 4xx and a JSON ``detail``, nothing
written, no 5xx for any input; a failing store is a 503 with Retry-After.  The VM's
first shutdown_message is kept: the same one again is 204, a different one 409.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.requests import ClientDisconnect

from cloudvac.auth.vmtokens import TokenError
from cloudvac.config.models import Machinetype, Space
from cloudvac.model import layout
from cloudvac.model.naming import MACHINE_NAME, SPACE_NAME
from cloudvac.model.records import MachineRecord, Recorded
from cloudvac.model.states import ShutdownMessage, ShutdownMessageError
from cloudvac.web.context import WebContext, context
from cloudvac.web.files import FILE_RE, UploadRejected
from cloudvac.web.mjf import job_features, machine_features

log = logging.getLogger("cloudvac.web.vm")
SpaceName = Annotated[str, Path(pattern=SPACE_NAME.pattern, max_length=63)]
MachineName = Annotated[str, Path(pattern=MACHINE_NAME.pattern, max_length=63)]
FileName = Annotated[str, Path(pattern=FILE_RE.pattern, max_length=64)]
Authorization = Annotated[str | None, Header()]
HEARTBEATLIST_SECONDS = 5.0  # a heartbeat list is read at most this often per machinetype


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token


def _refused(exc: TokenError) -> HTTPException:
    return HTTPException(exc.status, str(exc), headers={"WWW-Authenticate": "Bearer"})


async def authorize(request: Request, space: SpaceName, name: MachineName,
                    authorization: Authorization = None) -> None:
    ctx = context(request)
    try:
        ctx.signer.verify(_bearer(authorization), space, name, ctx.clock())
    except TokenError as exc:
        raise _refused(exc) from None


async def authorize_space(request: Request, space: SpaceName,
                          authorization: Authorization = None) -> None:
    """Any machine of ``space`` may read the space's heartbeat lists."""
    ctx = context(request)
    try:
        owner, _ = ctx.signer.subject(_bearer(authorization), ctx.clock())
    except TokenError as exc:
        raise _refused(exc) from None
    if owner != space:
        raise HTTPException(403, "token belongs to another space")


_ANSWERS: dict[int | str, dict[str, object]] = {
    code: {"description": text, "model": None} for code, text in {
        400: "malformed request", 401: "no valid token", 403: "another machine's token",
        404: "no such machine or value", 429: "too many requests"}.items()}
vm = APIRouter(dependencies=[Depends(authorize)], responses=_ANSWERS)
space_router = APIRouter(dependencies=[Depends(authorize_space)], responses=_ANSWERS)


class Use(enum.Enum):
    """What a request does, for the machine-life rules of the table above."""

    BEAT = "heartbeat"
    FINAL = "final upload"
    READ = "read"


def admit(record: MachineRecord, use: Use, now: float, grace: float) -> None:
    """Refuse (410) what an ended machine may no longer do."""
    ended = record.ended_at
    if ended is None or (use is Use.FINAL and now - ended <= grace):
        return
    raise UploadRejected(410, "machine has ended")


async def known_machine(ctx: WebContext, space: str, name: str, use: Use, fresh: bool = False
                        ) -> tuple[MachineRecord, Space, Machinetype | None]:
    """The machine, its space and machinetype; 404 if unknown, 410 as ``admit`` says.
    ``fresh``: from the store, not the few-seconds cache."""
    if fresh:
        record = await asyncio.to_thread(ctx.store.machine, space, name)
    else:
        record = await ctx.machines.get(space, name)
    config = ctx.spaces().get(space)
    if record is None or config is None:
        raise HTTPException(404, "no such machine")
    admit(record, use, ctx.clock(), ctx.settings.ended_upload_grace_seconds)
    return record, config, config.machinetypes.get(record.machinetype)


def kind_of(file: str, mt: Machinetype | None) -> str:
    """What an upload of ``file`` is: "shutdown_message", "heartbeat" or "log"."""
    if file == layout.SHUTDOWN_FILE:
        return "shutdown_message"
    return "heartbeat" if file == ((mt.heartbeat_file if mt else None)
                                   or layout.HEARTBEAT_FILE) else "log"


@vm.put(layout.JOBOUTPUT, status_code=204, responses={
    409: {"description": "another shutdown_message is recorded", "model": None},
    410: {"description": "machine has ended", "model": None},
    413: {"description": "too large", "model": None}},
    openapi_extra={"requestBody": {  # read raw (any Content-Type), so FastAPI cannot see it
        "description": "the file's new content, at most upload_max_file_bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                           "format": "binary"}},
                    "text/plain": {"schema": {"type": "string"}}}}})
async def upload(request: Request, space: SpaceName, name: MachineName,
                 file: FileName) -> Response:
    ctx, kind = context(request), "unknown"
    try:
        data = await _read_limited(request, ctx.settings.upload_max_file_bytes)
        record, _, mt = await known_machine(ctx, space, name, Use.FINAL)
        kind = kind_of(file, mt)
        if kind == "shutdown_message":
            await _shutdown_message(ctx, space, name, data)
        elif kind == "heartbeat":
            note_beat(ctx, record, file, data)
        else:
            await asyncio.to_thread(ctx.files.write, space, name, file, data)
    except ClientDisconnect:
        ctx.metrics.disconnects.inc()
        log.debug("space=%s machinetype=- machine=%s client left during its upload",
                  space, name)
        return Response(status_code=400)
    except (UploadRejected, HTTPException) as exc:
        status = exc.status if isinstance(exc, UploadRejected) else exc.status_code
        ctx.metrics.uploads.labels(kind, str(status)).inc()
        raise
    ctx.metrics.uploads.labels(kind, "204").inc()
    ctx.metrics.upload_bytes.inc(len(data))
    return Response(status_code=204)


def note_beat(ctx: WebContext, record: MachineRecord, file: str, data: bytes) -> None:
    """A heartbeat of ``record``'s machine: refused (410 ended, 413 over the machine's
    quota as far as this instance knows) or noted; the flusher writes time and body to
    the store within a second (``heartbeats.py``).  Also the fast path's (``beats.py``)."""
    admit(record, Use.BEAT, ctx.clock(), 0.0)
    if not ctx.files.fits(record.space, record.name, file, len(data)):
        raise UploadRejected(413, f"machine's uploads would exceed "
                             f"{ctx.settings.upload_max_machine_bytes} bytes")
    ctx.heartbeats.note(record.space, record.name, ctx.clock(), file, data)


async def _shutdown_message(ctx: WebContext, space: str, name: str, data: bytes) -> None:
    """Record the message and write its file, together or not at all."""
    try:
        message = ShutdownMessage.parse(data)
    except ShutdownMessageError as exc:
        raise UploadRejected(400, f"malformed shutdown_message: {exc}") from None
    now = ctx.clock()

    recorded = await asyncio.to_thread(ctx.files.record_shutdown, space, name, message, data,
                                       now)
    if recorded is Recorded.UNKNOWN:
        raise UploadRejected(404, "no such machine")
    if recorded is Recorded.CONFLICT:
        raise UploadRejected(409, "another shutdown_message is already recorded")
    if recorded is Recorded.RECORDED and ctx.wake is not None:
        ctx.wake(space)  # a slot is about to free: refill it soon


async def _features(ctx: WebContext, space: str, name: str, key: str,
                    job: bool) -> PlainTextResponse:
    record, config, mt = await known_machine(ctx, space, name, Use.READ)
    drain_at = await asyncio.to_thread(ctx.store.drain_deadline, space, record.machinetype)
    values = (job_features if job else machine_features)(config, mt, record, drain_at)
    if key not in values:
        raise HTTPException(404, f"no {key} for this machine")
    return PlainTextResponse(values[key] + "\n")


@vm.get(layout.MACHINEFEATURE, response_class=PlainTextResponse,
        responses={410: {"description": "machine has ended", "model": None}})
async def machinefeatures(request: Request, space: SpaceName, name: MachineName,
                          key: FileName) -> PlainTextResponse:
    return await _features(context(request), space, name, key, job=False)


@vm.get(layout.JOBFEATURE, response_class=PlainTextResponse,
        responses={410: {"description": "machine has ended", "model": None}})
async def jobfeatures(request: Request, space: SpaceName, name: MachineName,
                      key: FileName) -> PlainTextResponse:
    return await _features(context(request), space, name, key, job=True)


@vm.get(layout.USER_DATA, response_class=PlainTextResponse, responses={
    409: {"description": "already served", "model": None},
    410: {"description": "machine has ended", "model": None}})
async def user_data(request: Request, space: SpaceName, name: MachineName) -> PlainTextResponse:
    """The machine's user_data, with the token and deadline it got at its creation (never a
    fresh one): served once, or any number of times to the machine's own address."""
    ctx = context(request)
    record, config, mt = await known_machine(ctx, space, name, Use.READ, fresh=True)
    if mt is None or ctx.render is None:
        raise HTTPException(404, "no user_data for this machine")
    client = request.client.host if request.client is not None else ""
    if not (record.address and client == record.address) and not await asyncio.to_thread(
            ctx.store.claim_user_data, space, name, ctx.clock()):
        raise HTTPException(409, "user_data was served already")
    issued = record.created_at or record.adopted_at or ctx.clock()
    return PlainTextResponse(ctx.render(config, mt, name, issued))


@space_router.get(layout.HEARTBEATLIST, response_class=PlainTextResponse)
async def heartbeatlist(request: Request, space: SpaceName,
                        machinetype: MachineName) -> PlainTextResponse:
    """``<unix time> <name> <address>`` per running VM of the machinetype that heartbeated
    within its ``heartbeat_list_horizon``, newest first (VCycle's heartbeat list); read
    from the store at most every HEARTBEATLIST_SECONDS."""
    ctx = context(request)
    config = ctx.spaces().get(space)
    mt = config.machinetypes.get(machinetype) if config else None
    if mt is None:
        raise HTTPException(404, "no such machinetype")
    key, now = (space, machinetype), time.monotonic()
    cached = ctx.heartbeat_lists.get(key)
    if cached is None or now - cached[0] >= HEARTBEATLIST_SECONDS:
        since = ctx.clock() - mt.heartbeat_list_horizon
        alive = await asyncio.to_thread(ctx.store.heartbeating, space, machinetype, since)
        cached = (now, "".join(f"{int(b.heartbeat_at)} {b.name} {b.address or '-'}\n"
                               for b in alive))
        ctx.heartbeat_lists[key] = cached
    return PlainTextResponse(cached[1])


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) before reading past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and \
            len(declared) < 20 and int(declared) > limit:
        raise UploadRejected(413, f"file larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadRejected(413, f"file larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
