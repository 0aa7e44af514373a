"""What the web service's routes share: configuration, store, signer, files and caches."""

from __future__ import annotations

import asyncio
import logging
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
from cloudvac.store.uploads import Named
from cloudvac.web.files import Joboutputs
from cloudvac.web.heartbeats import HeartbeatBuffer

Renderer = Callable[[Space, Machinetype, str, float], str]
"""``(space, machinetype, name, issued_at) -> user_data``, its token and deadline counted
from ``issued_at`` (the machine's creation)."""
MACHINE_CACHE_SECONDS = 5.0
MACHINE_CACHE_SIZE = 200_000
ALIVE_SECONDS = 600.0  # a lookup of a live machine, while its space's ends are read
ENDS_SECONDS = 1.0  # how often a space's ended machines are read, while VMs call
ENDS_TRUSTED_SECONDS = 5.0  # since the last good read of ends, else trust no older lookup
ENDED_KEPT_SECONDS = 60.0
log = logging.getLogger("cloudvac.web.context")


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


@dataclass(slots=True)
class _Watch:
    """What this instance knows of the machines of one space that ended (``MachineCache``)."""

    rev: int
    """The space's revision its ends are known up to."""
    base: float
    """Lookups made since (monotonic) may be trusted beyond ``seconds`` while alive."""
    ok_at: float
    """When the last successful read of ends began (monotonic)."""
    due_at: float = 0.0


class MachineCache:
    """Machine lookups for at most ``seconds``, the ``size`` most recently used kept:
    uploads must not cost a database read each, and memory stays bounded.

    The lookups missing here are read from the store together: one read in a worker
    thread at a time, for every machine asked for while the previous one ran.

    ``alive`` keeps a machine that was alive for up to ``ALIVE_SECONDS`` instead: at
    60,000 VMs beating once a minute every heartbeat misses a few-seconds cache, and a
    read per heartbeat costs more than the rest of it.  What could make such an entry
    wrong is the machine ending, and every write of a machine row bumps its space's
    revision (``store/history.py``): once a second (``ENDS_SECONDS``) the machines of the
    space that ended since the revision last seen are read (one index range per space,
    every space due in one store read: ``Store.ended_since``) and dropped.  An end is
    noticed within about a second, sooner than the few seconds of a plain lookup; when no
    such read succeeded for ``ENDS_TRUSTED_SECONDS``, ``alive`` trusts nothing older
    than ``seconds`` again, and a revision that went backwards (a restored database)
    distrusts every lookup made before."""

    def __init__(self, store: Store, seconds: float = MACHINE_CACHE_SECONDS,
                 size: int = MACHINE_CACHE_SIZE) -> None:
        self.store, self.seconds, self.size = store, seconds, size
        self._entries: OrderedDict[tuple[str, str], tuple[float, MachineRecord | None]] = \
            OrderedDict()
        self._wanted: dict[tuple[str, str], asyncio.Future[MachineRecord | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ends_reader: asyncio.Task[None] | None = None
        self._watches: dict[str, _Watch] = {}
        self._ended: dict[tuple[str, str], float] = {}
        """Machines seen ending: when that read came back (monotonic)."""
        self.reads = 0
        """Store reads of machines so far (each for one or more): for tests and benchmarks."""

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, space: str, name: str) -> tuple[bool, MachineRecord | None]:
        """(True, the record or None if unknown) when a lookup at most ``seconds`` old
        is kept, else (False, None): no store read."""
        key = (space, name)
        hit = self._entries.get(key)
        if hit is None or time.monotonic() - hit[0] >= self.seconds:
            return False, None
        self._entries.move_to_end(key)
        return True, hit[1]

    def alive(self, space: str, name: str) -> MachineRecord | None:
        """The machine's record if it was alive at a lookup at most ``ALIVE_SECONDS`` old
        and has not been seen ending since (see above); else None: ``get`` it."""
        key, now = (space, name), time.monotonic()
        hit = self._entries.get(key)
        watch = self._watches.get(space)
        if watch is None or hit is None:
            return None
        if now >= watch.due_at and self._ends_reader is None:
            self._ends_reader = asyncio.get_running_loop().create_task(
                self._read_ends(), name="machine-ends")
        at, record = hit
        if record is None or record.ended_at is not None or now - at >= ALIVE_SECONDS:
            return None
        trusted = at >= watch.base and now - watch.ok_at < ENDS_TRUSTED_SECONDS
        if not trusted and now - at >= self.seconds:
            return None
        self._entries.move_to_end(key)
        return record

    async def _read_ends(self) -> None:
        """Read the ends of every space due, in one store read, until none is due."""
        try:
            while due := {space: w for space, w in self._watches.items()
                          if w.due_at <= time.monotonic()}:
                started = time.monotonic()
                try:
                    found = await asyncio.to_thread(
                        self.store.ended_since, {space: w.rev for space, w in due.items()})
                except Exception:  # the store fails: alive() trusts less after a while
                    log.debug("space=- machinetype=- machine=- reading ended machines failed",
                              exc_info=True)
                    found = {}
                done = time.monotonic()
                for space, watch in due.items():
                    watch.due_at = done + ENDS_SECONDS
                    if space in found:
                        self._ends_read(space, watch, found[space], (started, done))
                for key in [k for k, at in self._ended.items()
                            if done - at > ENDED_KEPT_SECONDS]:
                    del self._ended[key]
                await asyncio.sleep(0)
        finally:
            self._ends_reader = None

    def _ends_read(self, space: str, watch: _Watch, found: tuple[int, list[str]],
                   when: tuple[float, float]) -> None:
        """A read of the space's ends that began and came back ``when``: drop the ended."""
        (rev, names), (started, done) = found, when
        if rev < watch.rev:  # a restored database: what was looked up before may be wrong
            watch.base = done
        watch.rev, watch.ok_at = rev, started
        for name in names:
            self._entries.pop((space, name), None)
            self._ended[(space, name)] = done

    async def get(self, space: str, name: str) -> MachineRecord | None:
        """The machine's record (None if unknown), at most ``seconds`` old; the store's
        error if the read fails."""
        found, record = self.peek(space, name)
        if found:
            return record
        key = (space, name)
        future = self._wanted.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._wanted[key] = loop.create_future()
            future.add_done_callback(_retrieved)
            if self._reader is None:
                self._reader = loop.create_task(self._read(), name="machine-lookups")
        return await asyncio.shield(future)  # a waiter cancelled leaves the others theirs

    async def _read(self) -> None:
        try:
            while self._wanted:
                batch, self._wanted = self._wanted, {}
                started = time.monotonic()
                self.reads += 1
                try:
                    named = await asyncio.to_thread(self.store.machines_named, list(batch))
                except Exception as exc:  # each waiter raises it (503)
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._found(batch, named, started)
        finally:
            self._reader = None

    def _found(self, batch: dict[tuple[str, str], asyncio.Future[MachineRecord | None]],
               named: Named, started: float) -> None:
        """Keep what a read found (unless seen ending since it began) and tell its waiters."""
        for space, rev in named.revisions.items():
            if space not in self._watches:  # its ends are read from this revision on
                self._watches[space] = _Watch(rev, started, started)
        for key, future in batch.items():
            record = named.records.get(key)
            if self._ended.get(key, -1.0) < started:
                self._entries[key] = (started, record)
                self._entries.move_to_end(key)
            if not future.done():
                future.set_result(record)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _retrieved(future: asyncio.Future[MachineRecord | None]) -> None:
    """Mark a failed lookup's error seen, in case its every waiter went."""
    if not future.cancelled():
        future.exception()


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
    fast_beats: int = field(init=False, default=0)
    """Heartbeats answered by the fast path (``beats.py``): for tests and benchmarks."""

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
