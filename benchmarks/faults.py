"""Benchmark: ``kill -9`` the manager 20 times on real Nova; invariants and refill latency.

    .venv/bin/python -m benchmarks.faults                      # this repo -> results/faults.json
    .venv/bin/python -m benchmarks.faults --code /tmp/before13 \\
        --out benchmarks/results/faults_before.json            # older code, same harness

One real Nova (``tests/oracle`` ``nova_oracle``: Nova API, conductor, scheduler, fake-driver
compute; quota 8 cores / 20 instances) and one ``api = openstack`` space (``processors_limit``
6, two machinetypes of ``m1.small`` = 1 vCPU, ``networks = none``, no heartbeat rule,
``creation_burst_processors`` 6 so that a burst never holds a refill back, ``root_image`` the
image's UUID as this Nova has no image service; the defaults otherwise, ``wake_seconds``
included, which the older code does not know). The manager is the real CLI,
``python -m cloudvac run --config-dir DIR``, in a subprocess of its own (so ``SIGKILL`` is a
real ``kill -9``: no ``finally``, no flush), started with ``cwd = --code`` so that Python
imports ``cloudvac`` from there (checked and recorded: ``code.imported_from``, with the
commit and a hash of ``cloudvac/**/*.py`` at the start and the end of the run: others may
be editing it). Everything is on 127.0.0.1.

Pilots are simulated the way a VM ends: the benchmark picks an ACTIVE server of the space,
uploads its ``shutdown_message`` (``200 Success``) to the manager's web endpoint with the
machine's own bearer token (``PUT /machines/SPACE/NAME/joboutputs/shutdown_message``, as the
in-VM agent does; retried while the manager is down, as the agent does), then powers the
server off in Nova (``stop_server``: SHUTOFF). Nova's fake driver never ends a VM by
itself, so every other server that disappears is the manager's doing.

Phases, in one run:

1. **fill** (``cycle_seconds`` 2): until the space holds 6 ACTIVE servers.
2. **kills** (``cycle_seconds`` 2, ``--rounds`` 20): each round restarts the manager, waits for
   its ``/healthz``, then kills it with ``SIGKILL`` in one of four ways (seeded RNG):
   ``random`` (0.5-6 s after ready, a pilot finished at a random moment before),
   ``first_cycle`` (0.05-1 s after ready: inside the first cycle of the new process, which
   lists, adopts and creates), ``mid_create`` (a pilot finished; killed 0-0.5 s after its
   replacement's intent row is committed to the store, which both versions do before the
   create call: before the call, during it, or before its answer is recorded) and
   ``mid_delete`` (a pilot finished; killed 0-0.5 s after its delete is recorded in the
   store, which comes before the delete call). The store is polled read-only every 20 ms.
   After each kill the invariants are read from Nova; the manager stays down 0-1.5 s.
   Then one more restart and a settle (every finished pilot replaced, the space full and
   quiet for three cycles, at most ``--settle`` s), a clean stop (``SIGTERM``) and the store
   is compared with Nova.
3. **refill** (``cycle_seconds`` 30, no kills): ``--refill-samples`` pilots finished one at a
   time, 0.5-1.5 cycles apart, then a settle, a clean stop and the same comparison.

Why two cycle lengths (the brief had one short cycle): with ``cycle_seconds`` 2 a kill 0.5-6 s
after start lands in every part of a cycle, which is what the invariants need; but the
refill change of issue 13 (``wake_seconds``, 10 s by default and not settable in the older
code) can only show when a cycle is longer than the wake, and under kills every restart
runs a cycle at once, so the latency measured there is the restart cadence's. The refill
phase therefore uses 30 s cycles without kills (production's default is 60 s; 30 keeps a
run within its deadline). Refill latency is reported for both phases.

**What is measured** (a sampler thread lists Nova every ``--sample`` = 0.25 s with its own
connection; times are the benchmark's monotonic clock):

* ``duplicates``: machine names that ever had more than one server id (two at once are
  listed separately as ``duplicates_concurrent``).
* ``orphans``: at each clean stop, servers tagged ``cloudvac:manager``/``cloudvac:space`` for
  this space that the store does not know or holds as gone, plus store rows not gone with no
  server in Nova (``stale_rows``). The store is read with ``sqlite3`` read-only, not with
  ``cloudvac.store.Store``: this repo's ``Store`` would migrate an older run's database.
* ``limit_violations``: samples in which the vCPUs of the space's listed servers (every
  status but DELETED, SHUTOFF and ``deleting`` included, as the manager counts them) exceed
  ``processors_limit``.
* ``healthy_deleted``: servers seen ACTIVE that the benchmark never finished and that got a
  delete (task_state ``deleting``) or disappeared; each with the manager's log lines and
  store events naming it. Servers deleted while still building are ``starting_deleted``.
* refill latency: each finish (the upload's 204) is matched, in order, to the first server
  id first seen after it within its phase; seconds between the two, median and p95
  (linear interpolation), and finishes never refilled within their phase. Under kills the
  latency includes the time the manager was down (killed until its restart answered
  ``/healthz``), which depends on how loaded the machine is; ``refill_manager_up_*`` takes
  that time out. From the manager's log (its engine events, same format in both versions):
  upload -> the cycle that deleted the stopped VM -> the cycle that created its replacement,
  and the gaps between the refill phase's cycles that logged an event (``early`` cycles:
  gaps under 0.8 ``cycle_seconds``, i.e. cycles brought forward by a wake; a lower bound:
  a cycle that logged nothing is not seen).
* cycles per manager process, from its ``/metrics`` (``cloudvac_cycles_total`` by outcome,
  scraped every sample; cycles after the last scrape before a kill are not counted), and
  the share of samples in which the space held all 6 processors (not counting finished
  pilots).

``ok`` is true only when duplicates, orphans, limit violations and healthy deletions are all
0 and the run ended within ``--deadline``; the exit status is 1 otherwise. The run's
directory (config, store, the manager's log with one marker line per process) is kept and
named in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import itertools
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark, system_cpu

REPO = Path(__file__).resolve().parent.parent
RESULTS = RESULTS_DIR / "faults.json"
SPACE = "faults.bench"
MACHINETYPES = ("alpha", "beta")
MANAGER_ID = "cloudvac"
TAG_SPACE, TAG_MANAGER = "cloudvac:space", "cloudvac:manager"
GONE_STATUSES = frozenset({"DELETED", "SOFT_DELETED"})
MODES = ("random", "first_cycle", "mid_create", "mid_delete")
MODE_WEIGHTS = (4, 2, 2, 2)
QUOTA_CORES, QUOTA_INSTANCES = 8, 20
READY_TIMEOUT = 90.0  # a manager's start-up (imports, store, first bind) on a loaded machine
EVENT_TIMEOUT = 15.0  # mid_create / mid_delete: kill anyway after this
DOWN_MAX = 1.5  # seconds a killed manager stays down, at most
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxy

CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = {cycle:g}
space_timeout_seconds = 30
web_listen = 127.0.0.1:{port}
manager_id = {manager}

[space {space}]
{openstack}processors_limit = {limit}
creation_burst_processors = {limit}
"""

MACHINETYPE = """
[machinetype {space} {name}]
target_share = 1
root_image = {image}
"""


class DeadlineHit(Exception):
    """The run's deadline passed: the phases stop where they are."""


@dataclass(frozen=True)
class Options:
    """One run's settings (see ``parse_args`` for their meaning)."""

    code: Path
    rounds: int = 20
    seed: int = 13
    cycle_seconds: float = 2.0
    refill_cycle_seconds: float = 30.0
    refill_samples: int = 10
    refill_spacing: tuple[float, float] = (0.5, 1.5)
    processors_limit: int = 6
    kill_min: float = 0.5
    kill_max: float = 6.0
    settle_seconds: float = 90.0
    deadline_seconds: float = 1200.0
    sample_seconds: float = 0.25


# ------------------------------------------------------------------------ the manager ---


class Manager:
    """``python -m cloudvac run`` as a subprocess in its own session, imported from
    ``code``; its output is appended to one log, a marker line before each process."""

    def __init__(self, code: Path, cdir: Path, log_path: Path, port: int) -> None:
        self.code, self.cdir, self.log_path, self.port = code, cdir, log_path, port
        # /metrics is on the operator's door where the code has one (issue 14), else on
        # the web port
        self.operator_door = "operator_listen" in \
            (code / "cloudvac" / "config" / "models.py").read_text()
        self.operator_port = free_port() if self.operator_door else port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env["PYTHONUNBUFFERED"] = "1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def imported_from(self) -> str:
        """Where the manager's Python finds ``cloudvac`` (same cwd and environment)."""
        out = subprocess.run([sys.executable, "-c", "import cloudvac; print(cloudvac.__file__)"],
                             cwd=self.code, env=self.env, capture_output=True, text=True,
                             timeout=60, check=True)
        return out.stdout.strip()

    def start(self, note: str) -> None:
        self.starts += 1
        with self.log_path.open("a") as log:
            log.write(f"=== bench: manager process {self.starts} ({note}) at "
                      f"{time.strftime('%H:%M:%S')} ===\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloudvac", "run", "--config-dir", str(self.cdir),
                 "--log-level", "INFO"], cwd=self.code, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float) -> float | None:
        """Seconds until ``/healthz`` answered, or None (the process died or timed out)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout and self.pid is not None:
            with contextlib.suppress(OSError, ValueError), \
                    OPENER.open(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
            time.sleep(0.05)
        return None

    def kill9(self) -> None:
        """SIGKILL the manager's whole session (it is its leader) and reap it."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def terminate(self, timeout: float = 45.0) -> int | None:
        """SIGTERM, wait (cycles in progress finish), SIGKILL if needed; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return None
        return proc.returncode


# ------------------------------------------------------------------------ the sampler ---


@dataclass
class Track:
    """One server id of the space, as the samples saw it."""

    id: str
    name: str
    vcpus: int
    first_seen: float
    last_seen: float
    status: str = ""
    active_seen: bool = False  # ACTIVE while the benchmark had not finished it
    finished: bool = False  # the benchmark uploaded its shutdown_message (and stops it)
    ended_at: float | None = None
    ended_how: str = ""  # "deleting" (task_state / status) or "missing" (no longer listed)


@dataclass
class Samples:
    """Everything the sampler counted; read under ``Watch.lock``."""

    tracks: dict[str, Track] = field(default_factory=dict)
    ids_by_name: dict[str, set[str]] = field(default_factory=dict)
    concurrent_dups: set[str] = field(default_factory=set)
    violations: list[tuple[float, int]] = field(default_factory=list)
    held: list[tuple[float, int, int]] = field(default_factory=list)  # t, listed, unfinished
    count: int = 0
    errors: int = 0
    last_error: str = ""
    cycles: dict[int, dict[str, float]] = field(default_factory=dict)  # pid -> outcome -> n


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ours(server: Any) -> bool:
    metadata = server.metadata or {}
    return bool(metadata.get(TAG_MANAGER) == MANAGER_ID and metadata.get(TAG_SPACE) == SPACE)


def deleting(server: Any) -> bool:
    return server.status in GONE_STATUSES or (server.task_state or "") == "deleting"


def connect(nova: Any) -> Any:
    import openstack

    return openstack.connect(load_yaml_config=False, load_envvars=False,
                             **nova.connect_kwargs())


def list_ours(conn: Any) -> list[Any]:
    return [s for s in conn.compute.servers() if ours(s)]


CYCLES_LINE = re.compile(r'^cloudvac_cycles_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


class Watch:
    """The sampler thread: lists Nova every ``interval`` and scrapes the manager's
    ``/metrics``; ``vcpus`` maps flavor names to vCPUs."""

    def __init__(self, nova: Any, vcpus: dict[str, int], limit: int,
                 manager: Manager) -> None:
        self.conn = connect(nova)
        self.vcpus, self.limit, self.manager = vcpus, limit, manager
        self.interval = 0.25
        self.lock = threading.Lock()
        self.data = Samples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-sampler", daemon=True)

    def start(self, interval: float) -> None:
        self.interval = interval
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            begun = time.monotonic()
            self.sample()
            self.scrape()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - begun)))

    def sample(self) -> None:
        """One listing: update the tracks, check names and the processors limit."""
        t = time.monotonic()
        try:
            servers = list_ours(self.conn)
        except Exception as exc:  # a failed listing is counted, not fatal
            with self.lock:
                self.data.errors += 1
                self.data.last_error = f"{type(exc).__name__}: {exc}"[:300]
            return
        with self.lock:
            self._update(t, servers)

    def _vcpus(self, server: Any) -> int:
        flavor = server.flavor
        value = getattr(flavor, "vcpus", None)
        if value:
            return int(value)
        name = getattr(flavor, "original_name", None) or getattr(flavor, "name", None)
        return self.vcpus.get(str(name), 1)

    def _update(self, t: float, servers: list[Any]) -> None:
        data = self.data
        seen: set[str] = set()
        names: dict[str, int] = {}
        listed = unfinished = 0
        for server in servers:
            track = data.tracks.get(server.id)
            if track is None:
                track = data.tracks[server.id] = Track(server.id, server.name,
                                                      self._vcpus(server), t, t)
                data.ids_by_name.setdefault(server.name, set()).add(server.id)
            track.last_seen, track.status = t, server.status
            seen.add(server.id)
            if deleting(server):
                if track.ended_at is None:
                    track.ended_at, track.ended_how = t, "deleting"
            elif server.status == "ACTIVE" and not track.finished:
                track.active_seen = True
            if server.status not in GONE_STATUSES:
                listed += track.vcpus
                names[server.name] = names.get(server.name, 0) + 1
                if not track.finished and not deleting(server):
                    unfinished += track.vcpus
        for track in data.tracks.values():
            if track.id not in seen and track.ended_at is None:
                track.ended_at, track.ended_how = t, "missing"
        data.concurrent_dups.update(n for n, k in names.items() if k > 1)
        if listed > self.limit:
            data.violations.append((t, listed))
        data.held.append((t, listed, unfinished))
        data.count += 1

    def scrape(self) -> None:
        """The manager's cycle counters by outcome (the last value per process)."""
        pid = self.manager.pid
        if pid is None:
            return
        try:
            with OPENER.open(f"http://127.0.0.1:{self.manager.operator_port}/metrics",
                             timeout=0.5) as resp:
                text = resp.read().decode()
        except (OSError, ValueError):
            return
        counts: dict[str, float] = {}
        for line in text.splitlines():
            match = CYCLES_LINE.match(line)
            if match and f'space="{SPACE}"' in match["labels"]:
                outcome = re.search(r'outcome="([^"]*)"', match["labels"])
                counts[outcome[1] if outcome else "?"] = float(match["value"])
        with self.lock:
            self.data.cycles[pid] = counts

    def mark_finished(self, server_id: str, finished: bool = True) -> None:
        with self.lock:
            track = self.data.tracks.get(server_id)
            if track is not None:
                track.finished = finished

    def candidates(self) -> list[Track]:
        """ACTIVE, never finished, not being deleted: pilots the benchmark may end."""
        with self.lock:
            return [Track(**asdict(t)) for t in self.data.tracks.values()
                    if t.status == "ACTIVE" and not t.finished and t.ended_at is None]

    def held_now(self) -> tuple[int, int]:
        """(listed vCPUs, unfinished vCPUs) at the last sample."""
        with self.lock:
            return (self.data.held[-1][1], self.data.held[-1][2]) if self.data.held else (0, 0)

    def all_active(self) -> bool:
        with self.lock:
            live = [t for t in self.data.tracks.values() if t.ended_at is None]
            return bool(live) and all(t.status == "ACTIVE" for t in live)

    def first_seen_after(self, t: float) -> list[Track]:
        with self.lock:
            return sorted((Track(**asdict(x)) for x in self.data.tracks.values()
                           if x.first_seen > t), key=lambda x: x.first_seen)

    def cycles_total(self) -> dict[str, float]:
        with self.lock:
            total: dict[str, float] = {}
            for counts in self.data.cycles.values():
                for outcome, n in counts.items():
                    total[outcome] = total.get(outcome, 0) + n
            return total


# ---------------------------------------------------------------------------- the run ---


@dataclass
class Finish:
    """One simulated pilot end."""

    phase: str
    name: str
    server_id: str
    status: int | None  # the upload's HTTP status (None: never answered)
    uploaded_at: float  # monotonic, when the 204 came (or the last try)
    tries: int
    replacement: str = ""
    refill_seconds: float | None = None
    manager_down_s: float | None = None  # of refill_seconds, the manager was down this long


@dataclass
class Phase:
    name: str
    started: float
    ended: float | None = None


class Bench:
    """One run: the manager, the sampler, the phases and what they recorded."""

    def __init__(self, opts: Options, nova: Any, root: Path) -> None:
        self.opts, self.nova, self.root = opts, nova, root
        self.port = free_port()
        self.cdir, self.state = root / "cloudvac.d", root / "state"
        self.manager = Manager(opts.code, self.cdir, root / "manager.log", self.port)
        vcpus = {f["name"]: int(f["vcpus"]) for f in nova.get("flavors", [])}
        self.watch = Watch(nova, vcpus, opts.processors_limit, self.manager)
        self.sdk = connect(nova)
        self.rng = random.Random(opts.seed)
        self.t0 = time.monotonic()
        self.wall_offset = time.time() - self.t0  # monotonic -> unix time (the log's clock)
        self.deadline = self.t0 + opts.deadline_seconds
        self.finishes: list[Finish] = []
        self.rounds: list[dict[str, Any]] = []
        self.downs: list[tuple[float, float]] = []  # (killed, restarted and ready)
        self.phases: list[Phase] = []
        self.checks: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.token: Callable[[str], str] | None = None

    # -- helpers ---------------------------------------------------------------------------
    def rel(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.t0, 3)

    def sleep(self, seconds: float) -> None:
        if time.monotonic() + seconds > self.deadline:
            raise DeadlineHit
        time.sleep(max(0.0, seconds))

    def wait_for(self, done: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
        end = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < end:
            if done():
                return True
            time.sleep(step)
        if time.monotonic() >= self.deadline:
            raise DeadlineHit
        return done()

    def write_config(self, cycle: float) -> None:
        nova, opts = self.nova, self.opts
        secret = self.root / "password"
        self.cdir.mkdir(exist_ok=True)
        text = CONFIG.format(state=self.state, cycle=cycle, port=self.port, manager=MANAGER_ID,
                             space=SPACE, openstack=nova.space_options(secret),
                             limit=opts.processors_limit)
        text += "".join(MACHINETYPE.format(space=SPACE, name=n, image=nova["image_id"])
                        for n in MACHINETYPES)
        if self.manager.operator_door:
            text = text.replace("[settings]\n", "[settings]\noperator_listen = 127.0.0.1:"
                                f"{self.manager.operator_port}\n", 1)
        (self.cdir / "10-faults.conf").write_text(text)

    def start_manager(self, note: str) -> float:
        """Start the manager and wait for its web side; seconds until ready."""
        self.manager.start(note)
        ready = self.manager.wait_ready(min(READY_TIMEOUT, self.deadline - time.monotonic()))
        if ready is None:
            raise RuntimeError(f"the manager did not become ready ({note}); see "
                               f"{self.manager.log_path}")
        if self.token is None:
            from cloudvac.auth.vmtokens import TokenSigner, load_or_create_secret

            signer = TokenSigner(load_or_create_secret(self.state))
            self.token = lambda name: signer.token(SPACE, name, time.time() + 86400)
        return ready

    def begin(self, name: str) -> Phase:
        phase = Phase(name, time.monotonic())
        self.phases.append(phase)
        return phase

    def full(self) -> bool:
        """The space holds processors_limit unfinished servers, all ACTIVE."""
        return (self.watch.held_now()[1] >= self.opts.processors_limit
                and self.watch.all_active())

    # -- pilots ----------------------------------------------------------------------------
    def upload(self, name: str, timeout: float = 60.0) -> tuple[int | None, float, int]:
        """PUT the machine's shutdown_message as its agent does: retried while the manager
        is unreachable or answers 5xx/408/429. (status, monotonic time of the answer, tries)"""
        if self.token is None:
            raise RuntimeError("no token signer before the manager's first start")
        url = f"http://127.0.0.1:{self.port}/machines/{SPACE}/{name}/joboutputs/shutdown_message"
        headers = {"Authorization": "Bearer " + self.token(name),
                   "Content-Type": "application/octet-stream"}
        end = min(time.monotonic() + timeout, self.deadline)
        tries, status = 0, None
        while True:
            tries += 1
            request = urllib.request.Request(url, data=b"200 Success", method="PUT",
                                             headers=headers)
            try:
                with OPENER.open(request, timeout=5) as resp:
                    status = int(resp.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
                exc.close()
            except OSError:
                status = None
            if (status is not None and status < 500 and status not in (408, 429)) \
                    or time.monotonic() > end:
                return status, time.monotonic(), tries
            time.sleep(0.2)

    def finish_pilot(self, phase: str) -> Finish | None:
        """End one ACTIVE pilot: mark it, upload ``200 Success``, power it off in Nova."""
        candidates = sorted(self.watch.candidates(), key=lambda t: t.name)
        if not candidates:
            return None
        track = self.rng.choice(candidates)
        self.watch.mark_finished(track.id)
        status, at, tries = self.upload(track.name)
        finish = Finish(phase, track.name, track.id, status, at, tries)
        self.finishes.append(finish)
        if status != 204:
            self.notes.append(f"{phase}: shutdown_message of {track.name} answered {status} "
                              f"after {tries} tries; server left running")
            self.watch.mark_finished(track.id, False)
            return finish
        try:
            self.sdk.compute.stop_server(track.id)
        except Exception as exc:  # e.g. already deleted: noted, not fatal
            self.notes.append(f"{phase}: stop_server {track.name}: {type(exc).__name__}: "
                              f"{str(exc)[:200]}")
        return finish

    # -- kills -----------------------------------------------------------------------------
    def rows(self) -> dict[str, tuple[str, float | None]]:
        """The space's machine rows as the manager last committed them: {name: (state,
        delete_requested_at)}; {} when the store cannot be read right now."""
        try:
            return store_rows(self.state / "cloudvac.db")
        except sqlite3.Error:
            return {}

    def provoke(self, mode: str, ready_at: float) -> tuple[Finish | None, str]:
        """What happens between the manager's ready and its kill, by mode."""
        if mode == "first_cycle":
            self.sleep(self.rng.uniform(0.05, 1.0))
            return None, "inside the first cycle after start"
        if mode == "random":
            wait = self.rng.uniform(self.opts.kill_min, self.opts.kill_max)
            self.sleep(self.rng.uniform(0.0, wait))
            finish = self.finish_pilot("kills")
            self.sleep(ready_at + wait - time.monotonic())
            return finish, f"{wait:.2f} s after ready"
        known = set(self.rows())
        finish = self.finish_pilot("kills")
        if finish is None or finish.status != 204:
            return finish, "no pilot finished: killed at once"
        if mode == "mid_create":  # the replacement's intent row is committed before its create
            what = "a new machine row (intent) in the store"
            seen = self.wait_for(lambda: bool(set(self.rows()) - known), EVENT_TIMEOUT, 0.02)
        else:  # the delete is recorded before it is sent
            what = "the finished machine's delete recorded in the store"
            seen = self.wait_for(lambda: deletion_recorded(self.rows(), finish.name),
                                 EVENT_TIMEOUT, 0.02)
        if not seen:
            return finish, f"not seen within {EVENT_TIMEOUT:g} s: {what}"
        delay = self.rng.uniform(0.0, 0.5)
        self.sleep(delay)
        return finish, f"{what}, then {delay:.2f} s"

    def kill_round(self, index: int) -> None:
        """Provoke, SIGKILL, note the state, stay down a moment, restart."""
        mode = self.rng.choices(MODES, MODE_WEIGHTS)[0]
        ready_at = time.monotonic()
        finish, event = self.provoke(mode, ready_at)
        killed = time.monotonic()
        self.manager.kill9()
        listed, unfinished = self.watch.held_now()
        down = self.rng.uniform(0.0, DOWN_MAX)
        self.sleep(down)
        ready = self.start_manager(f"restart after kill {index + 1}")
        self.downs.append((killed, time.monotonic()))
        with self.watch.lock:
            data = self.watch.data
            violations, dups = len(data.violations), len(data.concurrent_dups)
            healthy = len(healthy_deleted(data.tracks.values()))
        self.rounds.append({
            "kill": index + 1, "mode": mode, "at": self.rel(killed),
            "killed_after_ready_s": round(killed - ready_at, 3), "event": event,
            "finished": finish.name if finish else None,
            "upload_status": finish.status if finish else None,
            "listed_vcpus_at_kill": listed, "unfinished_vcpus_at_kill": unfinished,
            "down_s": round(down, 2), "restart_ready_s": round(ready, 2),
            "so_far": {"limit_violation_samples": violations,
                       "concurrent_duplicates": dups, "healthy_deleted": healthy}})

    # -- phases ----------------------------------------------------------------------------
    def unrefilled(self, phase: Phase) -> int:
        match(self.finishes, phase, self.watch, self.downs)
        return sum(1 for f in self.finishes
                   if f.phase == phase.name and f.status == 204 and f.refill_seconds is None)

    def settle(self, phase: Phase, seconds: float, cycle: float) -> bool:
        """Until every finished pilot of ``phase`` is replaced and the space is full and
        ACTIVE, twice three cycles apart; at most ``seconds``."""
        end = time.monotonic() + seconds

        def done() -> bool:
            return self.full() and self.unrefilled(phase) == 0

        while time.monotonic() < end:
            if self.wait_for(done, end - time.monotonic(), 0.25):
                self.sleep(min(3 * cycle, max(0.0, end - time.monotonic())))
                if done():
                    return True
        self.notes.append(f"{phase.name}: not settled within {seconds:g} s "
                          f"(unrefilled {self.unrefilled(phase)}, held "
                          f"{self.watch.held_now()})")
        return False

    def stop_and_check(self, label: str) -> None:
        """SIGTERM the manager, then compare its store with Nova."""
        code = self.manager.terminate()
        time.sleep(0.5)
        check = compare_store(self.state / "cloudvac.db", list_ours(self.sdk))
        check["manager_exit_code"] = code
        self.checks[label] = check

    def kills_phase(self) -> None:
        fill = self.begin("fill")
        self.start_manager("fill")
        if not self.wait_for(self.full, 300, 0.25):
            self.notes.append("fill: the space was not full within 300 s")
        fill.ended = time.monotonic()
        phase = self.begin("kills")
        for index in range(self.opts.rounds):
            self.kill_round(index)
        self.settle(phase, self.opts.settle_seconds, self.opts.cycle_seconds)
        phase.ended = time.monotonic()
        self.stop_and_check("after_kills")

    def refill_phase(self) -> None:
        cycle = self.opts.refill_cycle_seconds
        self.write_config(cycle)
        self.start_manager(f"refill phase, cycle_seconds {cycle:g}")
        if not self.wait_for(self.full, 4 * cycle, 0.25):
            self.notes.append("refill: the space was not full at the start")
        phase = self.begin("refill")
        for _ in range(self.opts.refill_samples):
            self.sleep(self.rng.uniform(*self.opts.refill_spacing) * cycle)
            self.finish_pilot("refill")
        self.settle(phase, max(self.opts.settle_seconds, 5 * cycle), cycle)
        phase.ended = time.monotonic()
        self.stop_and_check("final")

    def execute(self) -> None:
        """The phases; a deadline stops them where they are (reported)."""
        self.write_config(self.opts.cycle_seconds)
        self.watch.start(self.opts.sample_seconds)
        try:
            self.kills_phase()
            if self.opts.refill_samples:
                self.refill_phase()
        except DeadlineHit:
            self.notes.append(f"deadline of {self.opts.deadline_seconds:g} s reached")
            for phase in self.phases:
                phase.ended = phase.ended or time.monotonic()
            if self.manager.pid is not None:
                self.stop_and_check("at_deadline")

    def close(self) -> None:
        """Stop everything this run started (also after an error)."""
        self.manager.kill9()
        self.watch.stop()
        with contextlib.suppress(Exception):
            self.sdk.close()


# --------------------------------------------------------------------------- analysis ---


def healthy_deleted(tracks: Any) -> list[Track]:
    """Servers seen ACTIVE, never finished by the benchmark, then deleted or gone."""
    return [t for t in tracks if t.ended_at is not None and t.active_seen and not t.finished]


def match(finishes: list[Finish], phase: Phase, watch: Watch,
          downs: list[tuple[float, float]]) -> None:
    """Each finish of ``phase`` (in upload order) gets the first server id first seen
    after its upload and within the phase that no earlier finish took; ``downs``: when the
    manager was down (killed until ready again), subtracted for ``manager_down_s``."""
    mine = sorted((f for f in finishes if f.phase == phase.name and f.status == 204),
                  key=lambda f: f.uploaded_at)
    end = phase.ended if phase.ended is not None else float("inf")
    new = [t for t in watch.first_seen_after(phase.started) if t.first_seen <= end]
    used: set[str] = set()
    for finish in mine:
        found = next((t for t in new if t.id not in used and t.first_seen > finish.uploaded_at),
                     None)
        finish.replacement = found.name if found is not None else ""
        finish.refill_seconds = finish.manager_down_s = None
        if found is not None:
            used.add(found.id)
            finish.refill_seconds = round(found.first_seen - finish.uploaded_at, 3)
            finish.manager_down_s = round(sum(
                max(0.0, min(b, found.first_seen) - max(a, finish.uploaded_at))
                for a, b in downs), 3)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (k - low), 3)


def store_rows(db: Path) -> dict[str, tuple[str, float | None]]:
    """{name: (state, delete_requested_at)} of the space's machines, read-only."""
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        query = "SELECT name, state, delete_requested_at FROM machines WHERE space = ?"
        return {name: (state, at) for name, state, at in conn.execute(query, (SPACE,))}


def deletion_recorded(rows: dict[str, tuple[str, float | None]], name: str) -> bool:
    state, requested = rows.get(name, ("", None))
    return requested is not None or state in ("deleting", "gone")


def read_store(db: Path) -> tuple[dict[str, str], list[tuple[float, str, str, str]]]:
    """({machine name: state}, [(at, machine, kind, message)]) of the space, read-only."""
    if not db.exists():
        return {}, []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = dict(conn.execute("SELECT name, state FROM machines WHERE space = ?", (SPACE,)))
        events = conn.execute("SELECT at, machine, kind, message FROM events WHERE space = ? "
                              "ORDER BY at, id", (SPACE,)).fetchall()
    return rows, events


def compare_store(db: Path, servers: list[Any]) -> dict[str, Any]:
    """Orphans both ways after a clean stop: servers the store does not hold alive, and
    alive store rows with no server."""
    rows, _ = read_store(db)
    names = {s.name for s in servers}
    orphan_servers = sorted(s.name for s in servers if rows.get(s.name, "gone") == "gone")
    stale_rows = sorted(n for n, state in rows.items() if state != "gone" and n not in names)
    states: dict[str, int] = {}
    for state in rows.values():
        states[state] = states.get(state, 0) + 1
    return {"servers": len(servers),
            "servers_by_status": _count(s.status for s in servers),
            "store_rows_by_state": states, "orphan_servers": orphan_servers,
            "stale_rows": {n: rows[n] for n in stale_rows},
            "duplicate_names_now": sorted(n for n in names
                                          if sum(s.name == n for s in servers) > 1)}


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[str(value)] = out.get(str(value), 0) + 1
    return out


def log_lines(log: Path, needles: list[str], limit: int = 12) -> dict[str, list[str]]:
    """The manager's log lines naming each needle (at most ``limit`` each)."""
    found: dict[str, list[str]] = {n: [] for n in needles}
    if not needles or not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        for needle in needles:
            if needle in line and len(found[needle]) < limit:
                found[needle].append(line[:400])
    return found


LOG_EVENT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* machine=(\S+) "
                       r"(delete|create): ")


def log_events(log: Path) -> dict[tuple[str, str], float]:
    """{(machine, "delete" | "create"): unix time of its first such log line}."""
    found: dict[tuple[str, str], float] = {}
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        match = LOG_EVENT.match(line)
        if match:
            at = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.setdefault((match[2], match[3]), at)
    return found


def cycle_gaps(log: Path, marker: str) -> list[float]:
    """Seconds between the starts of consecutive cycles that logged an engine event, in
    the last manager process whose marker line contains ``marker`` (a cycle that logged
    nothing is not seen: gaps are then multiples of cycle_seconds)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    first = max((i for i, ln in enumerate(lines) if ln.startswith("=== bench") and marker in ln),
                default=len(lines))
    starts: list[float] = []
    last = float("-inf")
    for line in lines[first:]:
        if " cloudvac.engine.cycle " not in line:
            continue
        at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at - last > 1.5:
            starts.append(at)
        last = at
    return [round(b - a, 1) for a, b in itertools.pairwise(starts)]


def log_summary(log: Path) -> dict[str, Any]:
    """ERROR lines (first 25), tracebacks and process markers of the manager's log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = text.splitlines()
    errors = [ln[:400] for ln in lines if " ERROR " in ln or " CRITICAL " in ln]
    return {"lines": len(lines), "error_lines": len(errors), "first_errors": errors[:25],
            "tracebacks": text.count("Traceback (most recent call last)"),
            "warning_lines": sum(" WARNING " in ln for ln in lines)}


# ----------------------------------------------------------------------------- report ---


def phase_report(bench: Bench, phase: Phase) -> dict[str, Any]:
    """One phase: its finishes, their refill latency and how full the space was."""
    match(bench.finishes, phase, bench.watch, bench.downs)
    mine = [f for f in bench.finishes if f.phase == phase.name]
    done = [f for f in mine if f.status == 204]
    seconds = [f.refill_seconds for f in done if f.refill_seconds is not None]
    up = [round(f.refill_seconds - (f.manager_down_s or 0.0), 3) for f in done
          if f.refill_seconds is not None]
    end = phase.ended if phase.ended is not None else time.monotonic()
    with bench.watch.lock:
        held = [u for t, _, u in bench.watch.data.held if phase.started <= t <= end]
    limit = bench.opts.processors_limit
    return {
        "from_s": bench.rel(phase.started), "to_s": bench.rel(end),
        "pilots_finished": len(done), "upload_failures": len(mine) - len(done),
        "refilled": len(seconds), "unrefilled": [f.name for f in done if f.refill_seconds is None],
        "refill_seconds": seconds,
        "refill_median_s": percentile(seconds, 0.5), "refill_p95_s": percentile(seconds, 0.95),
        "refill_max_s": max(seconds) if seconds else None,
        "refill_manager_up_median_s": percentile(up, 0.5),
        "refill_manager_up_p95_s": percentile(up, 0.95),
        "samples_space_full_share": round(sum(u >= limit for u in held) / len(held), 3)
        if held else None,
        "finishes": [asdict(f) | {"uploaded_at": bench.rel(f.uploaded_at)} for f in mine],
    } | steps(bench, done)


def steps(bench: Bench, done: list[Finish]) -> dict[str, Any]:
    """Where the refill time went, from the manager's log: upload -> the cycle that
    deleted the stopped VM -> the cycle that created its replacement."""
    logged = log_events(bench.manager.log_path)
    to_delete, to_create = [], []
    for finish in done:
        uploaded = finish.uploaded_at + bench.wall_offset
        deleted = logged.get((finish.name, "delete"))
        created = logged.get((finish.replacement, "create"))
        if deleted is not None:
            to_delete.append(round(deleted - uploaded, 3))
            if created is not None:
                to_create.append(round(created - deleted, 3))
    return {"upload_to_delete_s": to_delete, "delete_to_create_s": to_create,
            "upload_to_delete_median_s": percentile(to_delete, 0.5),
            "delete_to_create_median_s": percentile(to_create, 0.5)}


def track_row(bench: Bench, track: Track) -> dict[str, Any]:
    return {"name": track.name, "id": track.id, "first_seen_s": bench.rel(track.first_seen),
            "ended_s": bench.rel(track.ended_at), "how": track.ended_how,
            "last_status": track.status}


def results(bench: Bench) -> dict[str, Any]:
    """The four counts, with the evidence for each."""
    phases = {p.name: phase_report(bench, p) for p in bench.phases if p.name != "fill"}
    with bench.watch.lock:
        data = bench.watch.data
        tracks = list(data.tracks.values())
        duplicates = sorted(n for n, ids in data.ids_by_name.items() if len(ids) > 1)
        concurrent = sorted(data.concurrent_dups)
        violations = list(data.violations)
        sampled = {"samples": data.count, "listing_errors": data.errors,
                   "last_listing_error": data.last_error}
    healthy = healthy_deleted(tracks)
    starting = [t for t in tracks if t.ended_at is not None and not t.active_seen
                and not t.finished]
    orphans = sorted({n for c in bench.checks.values()
                      for n in [*c["orphan_servers"], *c["stale_rows"]]})
    _, events = read_store(bench.state / "cloudvac.db")
    evidence = log_lines(bench.manager.log_path, [t.name for t in healthy + starting])
    gaps = cycle_gaps(bench.manager.log_path, "refill phase")
    counts = {"duplicates": len(duplicates), "orphans": len(orphans),
              "limit_violations": len(violations), "healthy_deleted": len(healthy)}
    return {
        "counts": counts, "kills": len(bench.rounds), "manager_processes": bench.manager.starts,
        "cycles": bench.watch.cycles_total(), "phases": phases, "checks": bench.checks,
        "duplicates": {"names_with_several_ids": duplicates, "concurrent": concurrent},
        "orphans": orphans,
        "limit_violations": {"samples": len(violations),
                             "max_vcpus": max((v for _, v in violations), default=None),
                             "first": [(bench.rel(t), v) for t, v in violations[:10]]},
        "healthy_deleted": [track_row(bench, t) | {
            "log": evidence[t.name],
            "events": [e for e in events if e[1] == t.name]} for t in healthy],
        "starting_deleted": [track_row(bench, t) | {"log": evidence[t.name]}
                             for t in starting],
        "servers_seen": len(tracks), "sampler": sampled, "rounds": bench.rounds,
        "refill_phase_cycle_gaps_s": gaps,
        "refill_phase_early_cycles": sum(g < 0.8 * bench.opts.refill_cycle_seconds
                                         for g in gaps),
        "notes": bench.notes, "manager_log": log_summary(bench.manager.log_path),
        "clock_origin_unix": round(bench.t0 + bench.wall_offset, 3),
        "run_dir": str(bench.root),
    }


def code_info(code: Path) -> dict[str, Any]:
    """The commit of ``code`` and how many files under its cloudvac/ differ from it."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(code), *args], capture_output=True, text=True,
                             timeout=30, check=False)
        return out.stdout.strip()

    return {"dir": str(code), "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_files_in_cloudvac": len(git("status", "--porcelain", "--",
                                                     "cloudvac").splitlines()),
            "fingerprint_at_start": fingerprint(code)}


def fingerprint(code: Path) -> str:
    """A hash of every ``cloudvac/**/*.py`` under ``code``: each manager start imports the
    files as they are then, and others may be editing them during a run."""
    digest = hashlib.sha256()
    for path in sorted((code / "cloudvac").rglob("*.py")):
        digest.update(str(path.relative_to(code)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def options(args: argparse.Namespace) -> Options:
    return Options(code=args.code.resolve(), rounds=args.rounds, seed=args.seed,
                   cycle_seconds=args.cycle_seconds,
                   refill_cycle_seconds=args.refill_cycle_seconds,
                   refill_samples=args.refill_samples,
                   refill_spacing=(args.refill_spacing[0], args.refill_spacing[1]),
                   processors_limit=args.processors_limit,
                   kill_min=args.kill_min, kill_max=args.kill_max,
                   settle_seconds=args.settle, deadline_seconds=args.deadline,
                   sample_seconds=args.sample)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.api_economy import load_launch

    opts = options(args)
    report: dict[str, Any] = {
        "benchmark": "faults", "code": code_info(opts.code),
        "params": {k: str(v) if isinstance(v, Path) else v
                   for k, v in asdict(opts).items()} | {
            "space": SPACE, "machinetypes": list(MACHINETYPES), "flavor": "m1.small",
            "quota_cores": QUOTA_CORES, "quota_instances": QUOTA_INSTANCES},
        "host": host_info(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    launch = load_launch()
    if not launch.oracle_available():
        return report | {"skipped": f"no oracle venv: {launch.SETUP_HINT}", "ok": False}
    root = Path(tempfile.mkdtemp(prefix="cloudvac-faults-"))
    started, cpu0 = time.monotonic(), system_cpu()
    with launch.nova_oracle(launch.NovaOptions(quota_cores=QUOTA_CORES,
                                               quota_instances=QUOTA_INSTANCES)) as nova:
        bench = Bench(opts, nova, root)
        try:
            report["code"]["imported_from"] = bench.manager.imported_from()
            bench.execute()
        except Exception as exc:  # reported (with its traceback) as not ok
            import traceback

            traceback.print_exc()
            report["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            bench.close()
        report.update(results(bench))
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    cpu1 = system_cpu()
    report["machine_busy_cores_during_run"] = round(
        (cpu1[0] - cpu0[0]) / max(1.0, cpu1[1] - cpu0[1]) * (os.cpu_count() or 1), 2)
    report["restart_ready_s"] = {
        "median": percentile([r["restart_ready_s"] for r in report["rounds"]], 0.5),
        "max": max((r["restart_ready_s"] for r in report["rounds"]), default=None)}
    report["code"]["fingerprint_at_end"] = fingerprint(opts.code)
    if report["code"]["fingerprint_at_end"] != report["code"]["fingerprint_at_start"]:
        report["notes"].append(f"{opts.code}/cloudvac changed during the run (others' edits): "
                               "later manager processes ran newer code")
    deadline = any("deadline" in n for n in report["notes"])
    report["ok"] = (not any(report["counts"].values()) and "error" not in report
                    and not deadline and report["kills"] == opts.rounds)
    return report


def summary(report: dict[str, Any]) -> str:
    if "skipped" in report:
        return f"cloudvac faults: skipped ({report['skipped']})"
    code, counts = report["code"], report["counts"]
    lines = [f"cloudvac faults: kill -9 x {report['kills']} on real Nova, code "
             f"{code['dir']} ({code['commit']}, {code['uncommitted_files_in_cloudvac']} "
             f"uncommitted files in cloudvac/; imported from {code.get('imported_from')})",
             "  counts       " + ", ".join(f"{k} {v}" for k, v in counts.items()),
             f"  processes    {report['manager_processes']} (ready after a restart: median "
             f"{report['restart_ready_s']['median']} s, max {report['restart_ready_s']['max']} "
             f"s), cycles {report['cycles']}; machine busy "
             f"{report['machine_busy_cores_during_run']} cores on average"]
    for name, phase in report["phases"].items():
        lines.append(
            f"  {name:<12} {phase['pilots_finished']} pilots finished, {phase['refilled']} "
            f"refilled: median {phase['refill_median_s']} s, p95 {phase['refill_p95_s']} s, "
            f"max {phase['refill_max_s']} s (manager up: median "
            f"{phase['refill_manager_up_median_s']} s, p95 {phase['refill_manager_up_p95_s']} s)"
            f"; unrefilled {len(phase['unrefilled'])}; space full in "
            f"{phase['samples_space_full_share']} of samples")
        lines.append(
            f"  {'':<12} upload -> delete median {phase['upload_to_delete_median_s']} s, "
            f"delete -> replacement median {phase['delete_to_create_median_s']} s")
    lines.append(f"  refill phase: {report['refill_phase_early_cycles']} early (woken) cycles "
                 f"seen; gaps between cycles with events {report['refill_phase_cycle_gaps_s']}")
    for label, check in report["checks"].items():
        lines.append(f"  check {label}: {check['servers']} servers, store "
                     f"{check['store_rows_by_state']}, orphan servers "
                     f"{len(check['orphan_servers'])}, stale rows {len(check['stale_rows'])}")
    for note in report["notes"]:
        lines.append(f"  note         {note}")
    if "error" in report:
        lines.append(f"  error        {report['error']}")
    lines.append(f"  wall         {report['wall_seconds']} s; run directory {report['run_dir']}")
    lines.append("  result       " + ("OK" if report["ok"] else "NOT OK"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--code", type=Path, default=REPO,
                        help="directory whose cloudvac/ the manager runs (default: this repo)")
    parser.add_argument("--rounds", type=int, default=20, help="kill -9 and restart rounds")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cycle-seconds", type=float, default=2.0)
    parser.add_argument("--refill-cycle-seconds", type=float, default=30.0)
    parser.add_argument("--refill-samples", type=int, default=10,
                        help="pilots finished in the refill phase (0: no refill phase)")
    parser.add_argument("--refill-spacing", type=float, nargs=2, default=[0.5, 1.5],
                        metavar=("MIN", "MAX"), help="refill phase: cycles between two "
                        "pilots' ends, drawn uniformly")
    parser.add_argument("--processors-limit", type=int, default=6)
    parser.add_argument("--kill-min", type=float, default=0.5)
    parser.add_argument("--kill-max", type=float, default=6.0)
    parser.add_argument("--settle", type=float, default=90.0,
                        help="seconds at most for the space to be full and quiet after a phase")
    parser.add_argument("--deadline", type=float, default=1200.0, help="seconds for one run")
    parser.add_argument("--sample", type=float, default=0.25, help="seconds between listings")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 0 < args.processors_limit < QUOTA_CORES:
        parser.error(f"--processors-limit must be 1-{QUOTA_CORES - 1} (the quota is "
                     f"{QUOTA_CORES} cores, so that an overshoot is visible)")
    if args.rounds < 0 or args.refill_samples < 0 or not 0 < args.kill_min <= args.kill_max \
            or not 0 < args.refill_spacing[0] <= args.refill_spacing[1]:
        parser.error("counts must be >= 0 and 0 < --kill-min <= --kill-max")
    if not (args.code / "cloudvac" / "__init__.py").is_file():
        parser.error(f"--code {args.code}: no cloudvac/ package there")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
