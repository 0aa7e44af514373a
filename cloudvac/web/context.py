"""What the web service's routes share: configuration, store, signer, files and caches."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.config.models import Machinetype, Space
from cloudvac.config.settings import Settings
from cloudvac.model.records import MachineRecord
from cloudvac.store import Store
from cloudvac.web.files import Joboutputs
from cloudvac.web.heartbeats import HeartbeatBuffer

Renderer = Callable[[Space, Machinetype, str, float], str]
"""``(space, machinetype, name, issued_at) -> user_data``, its token and deadline counted
from ``issued_at`` (the machine's creation)."""
MACHINE_CACHE_SECONDS = 5.0
MACHINE_CACHE_SIZE = 200_000


class WebMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploads = Counter("cloudvac_uploads", "VM uploads by kind and HTTP status",
                               ["kind", "status"], registry=registry)
        self.upload_bytes = Counter("cloudvac_upload_bytes", "Bytes accepted from VMs",
                                    registry=registry)
        self.disconnects = Counter("cloudvac_upload_disconnects", "Uploads whose client left "
                                   "before its body was complete", registry=registry)
        self.store_errors = Counter("cloudvac_web_store_errors", "Requests answered 503 "
                                    "because the store failed", registry=registry)


class MachineCache:
    """Machine lookups for at most ``seconds``, the ``size`` most recently used kept:
    uploads must not cost a database read each, and memory stays bounded."""

    def __init__(self, store: Store, seconds: float = MACHINE_CACHE_SECONDS,
                 size: int = MACHINE_CACHE_SIZE) -> None:
        self.store, self.seconds, self.size = store, seconds, size
        self._entries: OrderedDict[tuple[str, str], tuple[float, MachineRecord | None]] = \
            OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, space: str, name: str) -> MachineRecord | None:
        """The machine's record (None if unknown), at most ``seconds`` old."""
        key, now = (space, name), time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.seconds:
            self._entries.move_to_end(key)
            return hit[1]
        record = await asyncio.to_thread(self.store.machine, space, name)
        self._entries[key] = (now, record)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return record


@dataclass
class WebContext:
    settings: Settings
    store: Store
    signer: TokenSigner
    files: Joboutputs
    spaces: Callable[[], Mapping[str, Space]]
    """The configuration in force for every space (the daemon's, or re-read from files)."""
    registry: CollectorRegistry
    render: Renderer | None = None
    clock: Callable[[], float] = time.time
    wake: Callable[[str], None] | None = None
    """Told the space of each shutdown message (the daemon's ``wake``), if engine runs."""
    heartbeats: HeartbeatBuffer = field(init=False)
    metrics: WebMetrics = field(init=False)
    machines: MachineCache = field(init=False)
    heartbeat_lists: dict[tuple[str, str], tuple[float, str]] = field(init=False)
    """Per (space, machinetype): when read (monotonic) and the list's text."""

    def __post_init__(self) -> None:
        self.heartbeats = HeartbeatBuffer(self.store, self.files)
        self.metrics = WebMetrics(self.registry)
        self.machines = MachineCache(self.store)
        self.heartbeat_lists = {}


def context(request: Request) -> WebContext:
    """The application's context.  Routes call it rather than declaring it a FastAPI
    dependency: FastAPI runs a plain-function dependency in a worker thread, and that made
    a heartbeat cost about a fifth more CPU (benchmarks/results/reshape_before_after.json)."""
    ctx: WebContext = request.app.state.ctx
    return ctx
