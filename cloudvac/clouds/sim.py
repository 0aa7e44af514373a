"""The embedded simulated cloud: a Nova-like project whose VMs run simulated DIRAC pilots.

``SimProject`` is the project (servers, quota, flavors, seeded randomness, injectable clock);
``SimCloud`` is one space's ``Cloud`` adapter on it.  Several clouds may share a project and
a project outlives its clouds, so tests can restart a manager against the same "cloud".

Time is lazy.  A server's whole life (boot time, ERROR or not, pilot outcome and duration)
is drawn when it is created; ``advance(now)``, run at the start of every API call, moves
servers along their timelines and queues what their pilots would upload (heartbeats, the
shutdown message).  Outcomes are thus a pure function of the seed and of the calls and clock
readings.  Due transitions sit in a heap: an advance costs O(due events x log n).

Like Nova: create is asynchronous (BUILD, then ACTIVE, or ERROR with fault "No valid host was
found..."); an ended pilot powers its VM off (SHUTOFF); delete returns at once, the server
shows ``<status>/deleting`` (status plus task_state) and keeps its quota for
``delete_seconds`` (default 1 s), then vanishes at the first advance at or after that time
(at the next call if 0); deleting an unknown server succeeds; duplicate names are allowed.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cloudvac.clouds.simpilots import NullPilots, PilotReporter, PilotRun, TotalsReporter
from cloudvac.clouds.simserver import (
    APP_ERROR,
    DELETE_SECONDS,
    EARLY_END_CAP_SECONDS,
    ENV_ERROR,
    NO_VALID_HOST,
    NO_WORK,
    SUCCESS,
    USER_DATA_MAX,
    Owner,
    SimServer,
    _Report,
    parse_flavors,
)
from cloudvac.config.models import SimMachinetype, SimSpace
from cloudvac.model.cloud import (
    FLAVOR_CACHE_SECONDS,
    TAG_MANAGER,
    TAG_SPACE,
    Flavor,
    Limits,
    MachineSpec,
    ObservedMachine,
    metadata_problem,
)
from cloudvac.model.errors import Misconfigured, QuotaExceeded, Retryable
from cloudvac.model.layout import HEARTBEAT_FILE
from cloudvac.model.states import MachineState

log = logging.getLogger("cloudvac.clouds.sim")


@dataclass(eq=False)
class SimProject:
    """A simulated OpenStack project.  ``options`` gives quota, flavors, boot time and failure
    rate (replaceable with ``configure``; the seed is used only here, at construction);
    ``machinetypes`` gives pilot behaviour per machinetype name (default ``SimMachinetype()``),
    read when a server is created.  Quota counts every server until it is gone, foreign
    ones included.  ``calls`` counts API calls per kind."""

    options: SimSpace = field(default_factory=SimSpace)
    machinetypes: dict[str, SimMachinetype] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    delete_seconds: float = DELETE_SECONDS
    servers: dict[str, SimServer] = field(default_factory=dict, init=False, repr=False)
    calls: collections.Counter[str] = field(default_factory=collections.Counter, init=False)

    def __post_init__(self) -> None:
        self.flavors = parse_flavors(self.options.flavors)
        self.machinetypes = dict(self.machinetypes)
        self.rng = random.Random(self.options.seed)
        # Ids come from their own stream so that foreign servers do not shift outcomes.
        self._ids = random.Random(self.rng.getrandbits(64))
        self._heap: list[tuple[float, int, SimServer]] = []
        self._seq = self._addresses = 0
        self._owned: dict[Owner, dict[str, SimServer]] = {}
        self._owner_processors: collections.Counter[Owner | None] = collections.Counter()
        self.used_processors = self.used_instances = self.used_ram_mb = 0
        self.peak_processors = 0
        """The most processors the project ever held at once (quota checks in the demo)."""
        self._reporters: dict[Owner, PilotReporter] = {}
        self._outbox: collections.deque[_Report] = collections.deque()

    @property
    def quota_processors(self) -> int | None:
        return self.options.quota_processors

    @property
    def quota_instances(self) -> int | None:
        return self.options.quota_instances

    def configure(self, options: SimSpace,
                  machinetypes: Mapping[str, SimMachinetype] | None = None) -> None:
        """Apply a re-read config (all or nothing).  Existing servers keep their flavor and
        timeline; machinetypes are merged, since spaces may share one project."""
        flavors = parse_flavors(options.flavors)
        self.options, self.flavors = options, flavors
        if machinetypes:
            self.machinetypes.update(machinetypes)

    def register(self, owner: Owner, reporter: PilotReporter) -> None:
        """Route reports of servers tagged with ``owner`` to ``reporter`` (latest wins, as
        when a restarted manager takes over).  Reports with no reporter are dropped."""
        self._reporters[owner] = reporter

    def owned(self, owner: Owner) -> Iterable[SimServer]:
        return self._owned.get(owner, {}).values()

    def add_foreign(self, name: str, processors: int,
                    metadata: Mapping[str, str] | None = None) -> str:
        """Add an ACTIVE server not created by cloudvac: it uses quota, runs no pilot, and is
        listed only if ``metadata`` carries a manager's space and manager tags."""
        now = self.clock()
        srv = self._add(name, dict(metadata or {}), Flavor(f"foreign-{processors}", processors),
                        now)
        srv.move(MachineState.RUNNING)
        srv.started_at = now
        return srv.id

    def create(self, spec: MachineSpec, heartbeat_file: str = HEARTBEAT_FILE) -> str:
        """Nova's create: validate (name, user_data size, metadata keys and values as
        Nova's schema), check quota, start BUILD; returns the new id.  The server keeps
        ``spec.metadata`` as given, provenance included, as Nova does.  The
        pilot uploads its heartbeats as ``heartbeat_file`` (a real VM learns the name from
        its user_data)."""
        flavor = self.flavors.get(spec.flavor.name)
        if flavor is None:
            raise Misconfigured(f"Flavor {spec.flavor.name} could not be found.")
        if not spec.name:
            raise Misconfigured("Invalid input for field/attribute name: should be non-empty")
        if (problem := metadata_problem(spec.metadata)) is not None:
            raise Misconfigured(f"Invalid input for field/attribute metadata: {problem}")
        if (encoded := 4 * math.ceil(len(spec.user_data.encode()) / 3)) > USER_DATA_MAX:
            raise Misconfigured(f"User data too large. User data must be no larger than "
                                f"{USER_DATA_MAX} bytes once base64 encoded. Your data is "
                                f"{encoded} bytes")
        self._check_quota(flavor.processors, spec)
        now = self.clock()
        srv = self._add(spec.name, dict(spec.metadata), flavor, now)
        srv.heartbeat_file = heartbeat_file
        self._draw(srv, self.machinetypes.get(srv.machinetype) or SimMachinetype(), now)
        self._schedule(srv, srv.boot_at)
        self._log(logging.INFO, srv, "created, flavor %s", flavor.name)
        return srv.id

    def delete(self, cloud_id: str) -> None:
        """Nova's delete: asynchronous and idempotent.  The pilot dies without a report."""
        srv = self.servers.get(cloud_id)
        if srv is None or srv.state is MachineState.DELETING:
            return
        srv.delete_at = self.clock() + self.delete_seconds
        srv.move(MachineState.DELETING, f"{srv.status}/deleting")
        self._schedule(srv, srv.delete_at)
        self._log(logging.INFO, srv, "deleting")

    def limits(self, owner: Owner) -> Limits:
        qp, qi = self.quota_processors, self.quota_instances
        return Limits(
            free_processors=None if qp is None else max(0, qp - self.used_processors),
            free_instances=None if qi is None else max(0, qi - self.used_instances),
            free_ram_mb=None,  # SimSpace has no RAM quota
            foreign_processors=self.used_processors - self._owner_processors[owner])

    def pick_flavor(self, names: Sequence[str], min_processors: int,
                    max_processors: int | None) -> Flavor:
        for name in names:
            flavor = self.flavors.get(name)
            if flavor is not None and flavor.processors >= min_processors and (
                    max_processors is None or flavor.processors <= max_processors):
                return flavor
        top = "any" if max_processors is None else str(max_processors)
        raise Misconfigured(f"no flavor among {list(names)} has {min_processors}-{top} vCPUs; "
                            f"the project offers {sorted(self.flavors)}")

    def advance(self, now: float | None = None) -> None:
        """Move every server whose next transition is due (by ``now``, default the clock)
        along its timeline, and queue its pilot's reports.  Never awaits, never raises."""
        now = self.clock() if now is None else now
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, srv = heapq.heappop(heap)
            if srv.seq != seq:
                continue  # superseded (deleted, or rescheduled by a delete)
            srv.seq = -1
            due = self._step(srv, now)
            if due is not None:
                self._schedule(srv, due)

    async def deliver(self) -> None:
        """Send queued reports in order.  An event is taken off the queue before it is sent,
        so concurrent calls never send one twice, and a cancelled call leaves the rest for
        the next one.  Reporter errors are logged and dropped, as a failed upload would be."""
        outbox = self._outbox
        while outbox:
            report = outbox.popleft()
            reporter = self._reporters.get(report.owner)
            if reporter is None or isinstance(reporter, NullPilots):
                continue
            space, name, at, message = report.owner[0], report.name, report.at, report.message
            try:
                if message is not None and isinstance(reporter, TotalsReporter):
                    await reporter.totals(space, name, PilotRun(report.started_at, at,
                                                                report.processors, message))
                await (reporter.heartbeat(space, name, at, report.file) if message is None
                       else reporter.shutdown(space, name, message, at))
            except Exception as exc:  # a reporter must never break a cloud call
                log.warning("space=%s machinetype=%s machine=%s: %s report failed: %r", space,
                            report.machinetype, name,
                            "heartbeat" if message is None else "shutdown", exc)

    # -- internals ------------------------------------------------------------------------

    def _add(self, name: str, metadata: dict[str, str], flavor: Flavor, now: float) -> SimServer:
        space, manager = metadata.get(TAG_SPACE), metadata.get(TAG_MANAGER)
        owner = (space, manager) if space is not None and manager is not None else None
        srv_id = str(uuid.UUID(int=self._ids.getrandbits(128), version=4))
        srv = self.servers[srv_id] = SimServer(srv_id, name, metadata, flavor, owner, now)
        if owner is not None:
            self._owned.setdefault(owner, {})[srv_id] = srv
        self._count(srv, 1)
        return srv

    def _remove(self, srv: SimServer) -> None:
        del self.servers[srv.id]
        if srv.owner is not None:
            del self._owned[srv.owner][srv.id]
        self._count(srv, -1)
        srv.seq = -1

    def _count(self, srv: SimServer, sign: int) -> None:
        # Usage is kept as running totals so that quota checks and limits() are O(1).
        self._owner_processors[srv.owner] += sign * srv.flavor.processors
        self.used_processors += sign * srv.flavor.processors
        self.peak_processors = max(self.peak_processors, self.used_processors)
        self.used_instances += sign
        self.used_ram_mb += sign * srv.flavor.ram_mb

    def _check_quota(self, processors: int, spec: MachineSpec) -> None:
        over = [(what, want, used, quota) for what, want, used, quota in (
            ("cores", processors, self.used_processors, self.quota_processors),
            ("instances", 1, self.used_instances, self.quota_instances),
        ) if quota is not None and used + want > quota]
        if over:  # Nova's own wording, e.g. "... for cores: Requested 8, but already ..."
            what, want, used, quota = (", ".join(str(o[i]) for o in over) for i in range(4))
            message = (f"Quota exceeded for {what}: Requested {want}, but already used {used} "
                       f"of {quota} {what}")
            log.info("space=%s machinetype=%s machine=%s: create refused: %s", spec.space,
                     spec.machinetype, spec.name, message)
            raise QuotaExceeded(message)

    def _draw(self, srv: SimServer, mt: SimMachinetype, now: float) -> None:
        # Always five draws per server, whatever the branch, so one server's options never
        # shift the outcomes of the servers created after it.
        r = self.rng.random
        boot, fail, outcome, length, pick = r(), r(), r(), r(), r()
        srv.boot_at = now + self.options.boot_seconds * (0.5 + boot)
        srv.fails = fail < self.options.failure_rate or \
            srv.flavor.name in self.options.unschedulable_flavors
        early = min(0.05 * mt.job_seconds, EARLY_END_CAP_SECONDS) * (0.5 + length)
        if outcome < mt.no_work_probability:
            srv.message, run = NO_WORK, early
        elif outcome < mt.no_work_probability + mt.error_probability:
            if pick < 0.5:  # proxy problems show at once, payload failures after some work
                srv.message, run = ENV_ERROR, early
            else:
                srv.message, run = APP_ERROR, mt.job_seconds * (0.1 + 0.9 * length)
        else:
            srv.message, run = SUCCESS, mt.job_seconds * (0.5 + length)
        srv.end_at = srv.boot_at + run
        srv.heartbeat_period = mt.heartbeat_period_seconds

    def _schedule(self, srv: SimServer, due: float) -> None:
        self._seq += 1
        srv.seq = self._seq
        heapq.heappush(self._heap, (due, self._seq, srv))

    def _step(self, srv: SimServer, now: float) -> float | None:
        """Apply srv's transitions due by ``now``; return its next due time, if any."""
        while True:
            state = srv.state
            if state is MachineState.STARTING:
                if now < srv.boot_at:
                    return srv.boot_at
                if srv.fails:
                    srv.fault = NO_VALID_HOST
                    srv.move(MachineState.FAILED)
                    self._log(logging.INFO, srv, "failed: %s", NO_VALID_HOST)
                    return None
                srv.move(MachineState.RUNNING)
                srv.started_at = srv.next_heartbeat = srv.boot_at
                self._addresses += 1
                n = self._addresses
                srv.address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
                self._log(logging.INFO, srv, "running")
            elif state is MachineState.RUNNING:
                horizon = min(now, srv.end_at)
                if srv.next_heartbeat <= horizon:
                    # Only the latest due heartbeat: a late advance must not flood.  Move on
                    # even when nobody listens (untagged), or the heap would spin on it.
                    hb, start = srv.heartbeat_period, srv.boot_at  # boot_at == started_at
                    at = max(srv.next_heartbeat, start + hb * math.floor((horizon - start) / hb))
                    srv.next_heartbeat = at + hb
                    if srv.owner is not None:
                        self._outbox.append(_Report(srv.owner, srv.name, srv.machinetype, at,
                                                    None, srv.heartbeat_file))
                        self._log(logging.DEBUG, srv, "heartbeat at %.1f", at)
                if now < srv.end_at:
                    return min(srv.next_heartbeat, srv.end_at)
                if srv.owner is not None:
                    self._outbox.append(_Report(srv.owner, srv.name, srv.machinetype,
                                                srv.end_at, srv.message, started_at=srv.boot_at,
                                                processors=srv.flavor.processors))
                srv.stopped_at = srv.end_at
                srv.move(MachineState.STOPPED)
                self._log(logging.INFO, srv, "stopped: %s", srv.message)
                return None
            elif state is MachineState.DELETING:
                if srv.delete_at is not None and now < srv.delete_at:
                    return srv.delete_at
                self._remove(srv)
                self._log(logging.INFO, srv, "gone")
                return None
            else:
                return None

    @staticmethod
    def _log(level: int, srv: SimServer, what: str, *args: object) -> None:
        if log.isEnabledFor(level):
            space = srv.metadata.get(TAG_SPACE, "-")
            log.log(level, f"space=%s machinetype=%s machine=%s id=%s: {what}", space,
                    srv.machinetype or "-", srv.name, srv.id, *args)


class SimCloud:
    """The ``Cloud`` adapter of one space on a ``SimProject``.  Every call counts itself in
    ``project.calls``, sleeps ``api_latency_seconds`` (if non-zero), advances the project
    to the clock and delivers the pilots' reports, then raises ``Retryable`` if
    ``fail_api`` (the pilots keep reporting during an API outage, as real VMs would).
    Options given here (or to ``reconfigure``) also set the project's quota, flavors, boot
    time and failure rate (not its seed): the last configuration read wins."""

    def __init__(self, project: SimProject, owner: Owner,
                 reporter: PilotReporter | None = None, options: SimSpace | None = None) -> None:
        """``owner`` is (space, manager id): the tags of the servers this adapter lists."""
        self.project = project
        self.space, self.manager_id = owner
        self._owner: Owner = owner
        self._options = options
        self._files: dict[str, str] = {}
        self._flavors_at: float | None = None
        if options is not None:
            project.configure(options)
        project.register(self._owner, reporter if reporter is not None else NullPilots())

    @property
    def options(self) -> SimSpace:
        return self._options if self._options is not None else self.project.options

    def reconfigure(self, options: SimSpace, machinetypes: Mapping[str, SimMachinetype],
                    heartbeat_files: Mapping[str, str] | None = None) -> None:
        """Apply a re-read config; affects calls from now on and servers created from now on.
        ``heartbeat_files``: the file each machinetype's pilots upload their heartbeats as."""
        self.project.configure(options, machinetypes)
        self._options = options
        self._files = dict(heartbeat_files or {})
        self._flavors_at = None

    async def _call(self, kind: str) -> None:
        project = self.project
        project.calls[kind] += 1
        if self.options.api_latency_seconds > 0:
            await asyncio.sleep(self.options.api_latency_seconds)
        project.advance()
        await project.deliver()
        if self.options.fail_api:
            log.debug("space=%s: %s refused: simulated API outage", self.space, kind)
            raise Retryable("simulated API outage")

    async def list_machines(self) -> Sequence[ObservedMachine]:
        """Servers tagged with this space and manager, in creation order."""
        await self._call("list")
        return [srv.observe() for srv in self.project.owned(self._owner)]

    async def create_machine(self, spec: MachineSpec) -> str:
        await self._call("create")
        return self.project.create(spec, self._files.get(spec.machinetype, HEARTBEAT_FILE))

    async def find_machine(self, name: str) -> ObservedMachine | None:
        await self._call("lookup")
        return next((srv.observe() for srv in self.project.owned(self._owner)
                     if srv.name == name), None)

    async def delete_machine(self, cloud_id: str) -> None:
        await self._call("delete")
        self.project.delete(cloud_id)

    async def limits(self) -> Limits:
        await self._call("limits")
        return self.project.limits(self._owner)

    async def flavor(self, names: Sequence[str], min_processors: int,
                     max_processors: int | None) -> Flavor:
        """Like the OpenStack adapter, lists the flavors (one ``flavor`` call) at most every
        FLAVOR_CACHE_SECONDS and after a reconfiguration, and picks from that list."""
        listed = self._flavors_at
        if listed is None or self.project.clock() - listed >= FLAVOR_CACHE_SECONDS:
            await self._call("flavor")
            self._flavors_at = self.project.clock()
        return self.project.pick_flavor(names, min_processors, max_processors)

    async def close(self) -> None:
        """Nothing to release; the project lives on."""
        return None
