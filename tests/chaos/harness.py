"""What the chaos tests run and watch (``tests/chaos/test_chaos.py``).

* ``Fleet``: ``cloudvac run`` processes in *slots*.  A slot keeps its configuration
  directory, state directory (the shared server secret copied in), VM door port, sim user
  (``--user``: the sim's audit says which slot asked each create and delete) and database
  URL (a slot may reach the database through a ``Proxy``) across restarts; each start is a
  new process (``tests/instances.py``'s ``RunningInstance``) logging to its own file.
* ``Proxy``: a TCP proxy on 127.0.0.1 (asyncio, in a thread of its own) between one slot and
  PostgreSQL; ``cut(seconds)`` drops every connection and refuses new ones that long: a
  network partition between that instance and the database.
* ``restart_postgres``: the private test server stopped (fast) and started again on its port.
* ``Watch``: a thread that samples, every ``SAMPLE_SECONDS``, the sim's usage per project
  (limit violations), the lease table (owner per space over time, for the audit), and every
  instance's ``/metrics`` (successful cycles per space, kept per process: a killed process's
  last sample stays counted).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cloudvac.auth.vmtokens import SECRET_FILE, load_or_create_secret
from cloudvac.store import Store
from tests.instances import START_SECONDS, RunningInstance, free_port, until
from tests.postgres import PostgresServer

SAMPLE_SECONDS = 0.2
METRICS_EVERY = 5
"""Metrics are read every this many samples (a second): cycles are counted from them."""
HTTP_SECONDS = 5.0
AUDIT_BEFORE = 1.5
"""An act may reach the sim this long after the last lease sample showing its owner
(the intent is written under the fence, then the call goes out; samples are 0.2 s apart)."""
AUDIT_AFTER = 0.5


# -- the database side -----------------------------------------------------------------------


def restart_postgres(server: PostgresServer) -> float:
    """Stop the server (``pg_ctl stop -m fast``: every connection is cut) and start it again
    on the same port; seconds it was away."""
    began = time.monotonic()
    server._halt()
    with open(server.log, "ab") as log:
        server._proc = server._spawn(log)
    why = server._await_ready()
    assert why is None, f"PostgreSQL did not come back: {why}"
    return time.monotonic() - began


class Proxy:
    """127.0.0.1:port -> 127.0.0.1:target, byte for byte, until ``cut``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cuts = 0
        self._blocked_until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chaos-proxy")
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self.port = future.result(timeout=60)
        return self.port

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._blocked_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()

    def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        def now() -> None:
            self._blocked_until = time.monotonic() + seconds
            for writer in list(self._writers):
                writer.transport.abort()
            self.cuts += 1

        self._loop.call_soon_threadsafe(now)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


# -- the managers ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Schedule:
    """What a scenario's schedule did: faults injected by kind, and a timed log (a base of
    each scenario's ``Run``)."""

    injected: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def note(self, kind: str, what: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1
        self.log.append(f"{time.monotonic() - self.began:7.1f}s {what}")

    def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` into the run (never backwards)."""
        time.sleep(max(0.0, self.began + seconds - time.monotonic()))


@dataclass
class Slot:
    """One manager's place: kept across its restarts."""

    index: int
    user: str
    database: str
    web_port: int
    config_dir: Path
    state_dir: Path
    processes: list[RunningInstance] = field(default_factory=list)

    @property
    def current(self) -> RunningInstance | None:
        return self.processes[-1] if self.processes else None


@dataclass
class Fleet:
    """Managers sharing ``shared`` (configuration text: the spaces and their common
    settings) and one server secret; see the module docstring."""

    root: Path
    slots: list[Slot] = field(default_factory=list)
    shared: str = ""
    spaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seed = self.root / "seed"
        load_or_create_secret(seed)
        self._secret = seed / SECRET_FILE

    def add(self, user: str, database: str) -> Slot:
        index = len(self.slots)
        slot = Slot(index, user, database, free_port(), self.root / f"conf-{index}",
                    self.root / f"state-{index}")
        self.slots.append(slot)
        return slot

    def doors(self) -> list[str]:
        return [f"http://127.0.0.1:{slot.web_port}" for slot in self.slots]

    def _write(self, slot: Slot) -> None:
        slot.config_dir.mkdir(parents=True, exist_ok=True)
        slot.state_dir.mkdir(parents=True, exist_ok=True)
        if not (slot.state_dir / SECRET_FILE).exists():
            shutil.copyfile(self._secret, slot.state_dir / SECRET_FILE)
            (slot.state_dir / SECRET_FILE).chmod(0o600)
        (slot.config_dir / "10-shared.conf").write_text(self.shared)
        users = "".join(f"\n[space {space}]\nusername = {slot.user}\n" for space in self.spaces)
        (slot.config_dir / "90-instance.conf").write_text(
            f"[settings]\nstate_dir = {slot.state_dir}\ndatabase = {slot.database}\n"
            f"web_listen = 127.0.0.1:{slot.web_port}\noperator_listen = 127.0.0.1:0\n{users}")

    def start(self, slot: Slot) -> RunningInstance:
        """A new process in ``slot``; returns once it serves (generous deadline)."""
        self._write(slot)
        log_path = self.root / f"slot-{slot.index}-run-{len(slot.processes)}.log"
        args = [sys.executable, "-m", "cloudvac", "run", "--config-dir", str(slot.config_dir)]
        with log_path.open("ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        instance = RunningInstance(slot.index, slot.config_dir, slot.state_dir, log_path,
                                   slot.web_port, process)
        slot.processes.append(instance)
        return instance

    def start_all(self) -> None:
        started = [self.start(slot) for slot in self.slots]
        deadline = time.monotonic() + START_SECONDS
        for instance in started:
            instance.wait_started(deadline)

    def slot_of_pid(self) -> dict[int, int]:
        return {p.pid: s.index for s in self.slots for p in s.processes}

    def live(self) -> list[RunningInstance]:
        return [p for s in self.slots for p in s.processes if p.alive() and p.operator_url]

    def stop_all(self) -> None:
        for slot in self.slots:
            for process in slot.processes:
                if process.alive():
                    process.stop()


# -- watching ---------------------------------------------------------------------------------


def cycles_of(text: str) -> dict[str, int]:
    """Space -> successful cycles, from a ``/metrics`` text."""
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cloudvac_cycles_total" and sample.labels.get("outcome") == "ok":
                space = sample.labels["space"]
                found[space] = found.get(space, 0) + int(sample.value)
    return found


@dataclass
class Watch:
    """The sampler thread (see the module docstring)."""

    sim_url: str
    """The sim cloud's URL; empty: no sim (usage is not sampled here)."""
    admin_token: str = field(repr=False)
    limits: Mapping[str, int]
    """Project -> the most instances (= processors: one per machine) its space may hold."""
    store_url: str | None
    fleet: Fleet
    paused: set[int] = field(default_factory=set)
    """Pids not to ask for metrics (SIGSTOPped)."""
    violations: list[dict[str, Any]] = field(default_factory=list)
    usage_samples: int = 0
    leases: list[tuple[float, dict[str, int | None]]] = field(default_factory=list)
    """(time, space -> slot owning an unexpired lease, None: nobody)."""
    lease_errors: int = 0
    cycles: dict[int, dict[str, int]] = field(default_factory=dict)
    """Pid -> its last metrics' successful cycles per space."""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-watch")
        self._http = httpx.Client(timeout=HTTP_SECONDS)
        self._store: Store | None = None

    def sim_state(self, audit: bool = False) -> dict[str, Any]:
        response = self._http.get(self.sim_url + "/_sim/state" + ("?audit=1" if audit else ""),
                                  headers={"Authorization": f"Bearer {self.admin_token}"},
                                  timeout=60.0)
        response.raise_for_status()
        return dict(response.json())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self._http.close()
        if self._store is not None:
            self._store.close()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(SAMPLE_SECONDS):
            self._usage()
            self._lease()
            if n % METRICS_EVERY == 0:
                self.read_metrics()
            n += 1

    def _usage(self) -> None:
        if not self.sim_url:
            return
        try:
            projects = self.sim_state()["projects"]
        except (httpx.HTTPError, ValueError):
            return
        at = time.time()
        self.usage_samples += 1
        for project, usage in projects.items():
            most = self.limits[project]
            if usage["instances"] > most or usage["cores"] > most:
                self.violations.append({"at": at, "project": project, **usage})

    def _lease(self) -> None:
        if self.store_url is None:
            return
        try:
            if self._store is None:
                self._store = Store(self.store_url)
            view = self._store.lease_view()
        except Exception:  # the database is away (restart, partition): a gap
            self.lease_errors += 1
            return
        slots, pids = self.fleet.slot_of_pid(), {i.instance: i.pid for i in view.instances}
        owners: dict[str, int | None] = {}
        for lease in view.leases:
            alive = lease.owner is not None and lease.expires_at > view.now
            owners[lease.space] = slots.get(pids.get(lease.owner or "", -1)) if alive else None
        self.leases.append((time.time(), owners))

    def read_metrics(self, only: RunningInstance | None = None) -> None:
        for process in [only] if only is not None else self.fleet.live():
            if process.pid in self.paused:
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError):
                text = self._http.get(process.operator_url + "/metrics").text
                self.cycles[process.pid] = cycles_of(text)

    def total_cycles(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for per_space in self.cycles.values():
            for space, n in per_space.items():
                found[space] = found.get(space, 0) + n
        return found


# -- invariants -------------------------------------------------------------------------------


def owner_audit(audit: list[dict[str, Any]], leases: list[tuple[float, dict[str, int | None]]],
                user_slot: Mapping[str, int], space_of: Mapping[str, str],
                span: tuple[float, float] = (AUDIT_BEFORE, AUDIT_AFTER)
                ) -> list[dict[str, Any]]:
    """The creates and deletes the sim saw from a slot that did not own the space then: a
    lease sample within [at - before, at + after] (``span``) must show the asker as owner
    (across a gap in the samples, the database away: the last before or the first after)."""
    before, after = span
    times = [t for t, _ in leases]
    bad = []
    for op in audit:
        at, space, slot = op["at"], space_of[op["project"]], user_slot[op["user"]]
        lo, hi = bisect.bisect_left(times, at - before), bisect.bisect_right(times, at + after)
        window = leases[lo:hi] or [leases[i] for i in (lo - 1, lo) if 0 <= i < len(leases)]
        if not any(owners.get(space) == slot for _, owners in window):
            bad.append({**op, "space": space, "slot": slot,
                        "owners_then": [owners.get(space) for _, owners in window]})
    return bad


def orphans(state: Mapping[str, Any], store: Store) -> list[str]:
    """Live sim servers the store does not know, or knows as not live (gone)."""
    live = {m.name for m in store.machines()}
    return sorted(s["name"] for s in state["servers"]
                  if s["status"] != "DELETED" and s["name"] not in live)


def unaccounted(state: Mapping[str, Any], store: Store, created_after: float = 0.0) -> list[str]:
    """Machines whose shutdown message the sim saw acknowledged, gone from the sim and from
    the store, without an accounting record (created after ``created_after`` only)."""
    accounted = {r.machine for r in store.accounting()}
    gone = {m.name for m in store.machines(include_gone=True) if m.state.value == "gone"}
    return sorted(s["name"] for s in state["servers"]
                  if s["shutdown_acked"] and s["status"] == "DELETED"
                  and s["name"] in gone and s["name"] not in accounted
                  and float(s["created"]) > created_after)


def duplicates(state: Mapping[str, Any]) -> dict[str, int]:
    return {name: n for name, n in state["creates"].items() if n > 1}


def report(summary: Mapping[str, Any], tmp_path: Path, name: str) -> None:
    """Print the summary, write it under ``tmp_path``, and to benchmarks/results/chaos.json
    (under the key ``name``) when CLOUDVAC_CHAOS_OUT is set."""
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    print(f"\nchaos summary ({name}):\n{text}")
    (tmp_path / f"chaos-{name}.json").write_text(text + "\n")
    if os.environ.get("CLOUDVAC_CHAOS_OUT"):
        out = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "chaos.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        merged: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            merged = json.loads(out.read_text())
        merged[name] = summary
        out.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n")


def wait_cycles(watch: Watch, spaces: tuple[str, ...], more: int, deadline: float) -> None:
    """Until every space completed ``more`` successful cycles past now (metrics)."""
    watch.read_metrics()
    base = watch.total_cycles()

    def done() -> bool:
        watch.read_metrics()
        now = watch.total_cycles()
        return all(now.get(s, 0) >= base.get(s, 0) + more for s in spaces)

    until(done, deadline, f"every space cycles {more} more times", every=0.5)


@contextlib.contextmanager
def running(start: Callable[[], None], stop: Callable[[], None]) -> Iterator[None]:
    start()
    try:
        yield
    finally:
        stop()
