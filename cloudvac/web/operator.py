"""The operator's door: health, metrics and status.  Answers nothing about one VM."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloudvac.status import read_view, status_rows
from cloudvac.web.context import context

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
