"""The yardstick of ``benchmarks/web_heartbeats``: the smallest ASGI application on the
server stack cloudvac serves on (uvicorn, uvloop, httptools), answering 204 to every PUT.

    .venv/bin/python -m benchmarks._asgi_floor --port PORT [--host 127.0.0.1]

It reads each request's body to its end, as cloudvac does, and answers PUTs ``204`` with
no body and no header of its own (the answer cloudvac gives a heartbeat), and GETs
(``/healthz`` for the harness) ``200 ok``.  No store, no token check, no routing: what
the same load generator gets from it in the same run is the most this machine can serve
today through this stack, and cloudvac's throughput is reported as a fraction of it, a
figure that does not move with the machine's speed from one day to the next.

uvicorn's own options are cloudvac's: no access log, no ``server`` header, keep-alive
5 s.  SIGTERM stops it (uvicorn's own handler).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from starlette.types import Receive, Scope, Send

_OK = b"ok\n"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = bool(message.get("more_body", False))
    if scope["method"] == "PUT":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(_OK))]})
    await send({"type": "http.response.body", "body": _OK})


def config(host: str, port: int) -> dict[str, Any]:
    """uvicorn.Config's arguments: cloudvac's stack and options."""
    return {"host": host, "port": port, "loop": "uvloop", "http": "httptools",
            "lifespan": "off", "access_log": False, "server_header": False,
            "timeout_keep_alive": 5, "log_config": None, "log_level": "warning"}


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m benchmarks._asgi_floor")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.Server(uvicorn.Config(app, **config(args.host, args.port))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
