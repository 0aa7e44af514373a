"""The yardstick of ``scale``: the CPU of a typed msgspec decode of the same servers.

The machine's speed varies by about 2x from day to day, so ``scale`` also measures, in
the same process and the same run, what the floor of a cycle costs: decoding every
server of every space from Nova's JSON (``GET /servers/detail`` at the microversion
cloudvac asks for, each server as the sim cloud's Nova shows it: ``simnova.server_view``)
into the structs the OpenStack adapter decodes (``cloudvac.clouds.nova.Server``), one
page of at most 1,000 servers at a time, as Nova pages them.  The encoding of the pages
is not timed; the decode is, on this thread's CPU clock, each page ``repeats`` times
(best and median of the sums).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping
from typing import Any

PAGE = 1000  # Nova's default max_limit


def _pages(projects: Mapping[str, Any]) -> Iterator[bytes]:
    import msgspec

    from cloudvac.clouds import nova
    from cloudvac.clouds.simnova import NovaView, Row, server_view

    version = tuple(int(p) for p in nova.MICROVERSION.split("."))
    base = "http://127.0.0.1:8774"
    for index, project in enumerate(projects.values()):
        view = NovaView(project, image_id="0" * 32, project_id=f"{index:032x}")
        docs: list[dict[str, Any]] = []
        for srv in list(project.servers.values()):
            stamp = int(srv.created_at)
            row = Row(srv.id, srv.name, stamp, stamp, "f" * 32, "0" * 32, srv.flavor)
            docs.append(server_view(view, row, base, (version[0], version[1])))
            if len(docs) == PAGE:
                yield msgspec.json.encode(docs)
                docs = []
        if docs:
            yield msgspec.json.encode(docs)


def decode_baseline(projects: Mapping[str, Any], repeats: int = 3) -> dict[str, Any]:
    """Decode every server of ``projects`` (``SimProject``s) ``repeats`` times."""
    import msgspec

    from cloudvac.clouds import nova

    decoder = msgspec.json.Decoder(list[nova.Server])
    runs = [0.0] * repeats
    servers = size = pages = 0
    for page in _pages(projects):  # one page in memory at a time
        pages, size, count = pages + 1, size + len(page), 0
        for k in range(repeats):
            begun = time.thread_time()
            decoded = decoder.decode(page)
            runs[k] += time.thread_time() - begun
            count = len(decoded)
            del decoded
        servers += count
    best, median = min(runs), statistics.median(runs)
    return {
        "how": "msgspec.json.Decoder(list[cloudvac.clouds.nova.Server]) over the Nova JSON of "
               f"every listed server (simnova.server_view, microversion {nova.MICROVERSION}), "
               f"pages of {PAGE}; thread CPU, {repeats} repeats",
        "servers": servers, "pages": pages, "json_bytes": size,
        "bytes_per_server": round(size / max(servers, 1)),
        "cpu_seconds_best": round(best, 4), "cpu_seconds_median": round(median, 4),
        "us_per_server_median": round(median / max(servers, 1) * 1e6, 3),
    }
