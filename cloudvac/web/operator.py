"""The operator's door: health, metrics and status.  Answers nothing about one VM."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloudvac.status import read_view, status_rows
from cloudvac.web.context import Ctx

router = APIRouter()


@router.get("/healthz")
async def healthz(ctx: Ctx) -> dict[str, str]:
    await asyncio.to_thread(ctx.store.events, None, 1)
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/status")
async def status(ctx: Ctx) -> list[dict[str, object]]:
    def rows() -> list[dict[str, object]]:
        view = read_view(ctx.store, events=200)
        return [r.as_dict() for r in status_rows(ctx.spaces(), view, ctx.clock())]

    return await asyncio.to_thread(rows)
