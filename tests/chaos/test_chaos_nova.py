"""Chaos 3 (issue 18): two managers on one PostgreSQL against the REAL local Nova.

Two ``cloudvac run`` on a private PostgreSQL server (restarting it touches no other test;
one instance reaches it through the harness's TCP ``Proxy``) share two spaces on one
project of a real Nova of this module's own (``tests/oracle``: 6 cores, 10 instances, pages
of 2 servers; FakeDriver servers go ACTIVE and never stop by themselves).  The spaces'
machinetypes (m1.small: one core) fill 3 + 3 cores, the whole quota; no VM ever reports, so
``heartbeat_seconds`` deletes each machine some seconds after it started and the owner
replaces it: creates and deletes go on all along.  The shortened schedule: a server shut
off by the admin, kill -9 of the instance owning most spaces (restarted), a PostgreSQL
restart, the proxied instance cut off the database longer than a lease.

Invariants, all 0 (accounting is not checked: no VM sends a shutdown message):

* duplicate creates: a server name Nova ever listed under two ids (sampled every
  ``NOVA_SAMPLE_SECONDS`` through openstacksdk with the oracle's credentials);
* orphans: a server Nova lists with our space tags that the store does not know as live,
  in two checks two cycles apart;
* limit violations: a space's processors in Nova's listing above its ``processors_limit``
  at any sample (Nova enforces the project's quota itself);
* non-owner acts: a create or delete an instance logged (``cloudvac.engine.cycle``) with
  no lease sample in [logged - AUDIT_BEFORE, logged + AUDIT_AFTER] showing it as the space's
  owner (the act happened in the cycle before its log line, hence the wider window);
* every fault kind injected.

Every server is deleted at the end.  The JSON summary (name ``nova``) is printed, written
under the test's tmp dir, and to benchmarks/results/chaos.json when CLOUDVAC_CHAOS_OUT is set.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cloudvac.model.cloud import TAG_SPACE
from cloudvac.store import Store
from tests.chaos.harness import (
    Fleet,
    Proxy,
    Schedule,
    Watch,
    orphans,
    owner_audit,
    report,
    restart_postgres,
    wait_cycles,
)
from tests.contract.conftest import budget, connect, launch
from tests.instances import START_SECONDS, until
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
SEED = 1807
CYCLE = 3.0
LIMITS = {"n1.chaos.example": 3, "n2.chaos.example": 3}
"""processors_limit per space: together the project's whole 6-core quota."""
QUOTA_CORES, QUOTA_INSTANCES, PAGE = 6, 10, 2
HEARTBEAT_SECONDS = 20
"""No VM beats: a machine is deleted this long after it started, and replaced."""
NOVA_SAMPLE_SECONDS = 0.5
SETTLE_SECONDS = 300.0
"""Bound of a wait for Nova or for cycles on a loaded 2-core machine."""
AUDIT_BEFORE = CYCLE + 2.0
AUDIT_AFTER = 0.5
PARTITION_SECONDS = 4 * CYCLE
"""Longer than a lease (2 cycles): the other instance takes the spaces over."""
KINDS = ("server_shutoff", "kill9", "pg_restart", "partition")
CONFIG = """\
[settings]
cycle_seconds = {cycle:g}
space_timeout_seconds = 60
"""
SPACE = """
[space {space}]
{openstack}processors_limit = {limit}
creation_burst_processors = {limit}
max_starting_seconds = 300
api_timeout_seconds = 30

[machinetype {space} belle]
target_share = 1
root_image = {image}
heartbeat_file = heartbeat
heartbeat_seconds = {heartbeat}
fizzle_seconds = 1
backoff_seconds = 5
"""
_ACT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO cloudvac\.engine\.cycle "
                  r"space=(\S+) machinetype=\S+ machine=(\S+) (create|delete): ", re.M)


@pytest.fixture(scope="module")
def nova() -> Iterator[Any]:
    """A real Nova of this module's own (the contract tests' shim-mode settings)."""
    problems = [] if launch.oracle_available() else [launch.SETUP_HINT]
    if importlib.util.find_spec("openstack") is None:
        problems.append("openstacksdk missing in cloudvac's venv")
    if problems and os.environ.get("CLOUDVAC_SKIP_ORACLE") == "1":
        pytest.skip("CLOUDVAC_SKIP_ORACLE=1: " + "; ".join(problems))
    assert not problems, "; ".join(problems)
    options = launch.NovaOptions(quota_cores=QUOTA_CORES, quota_instances=QUOTA_INSTANCES,
                                 max_limit=PAGE)
    with launch.nova_oracle(options) as server:
        yield server


def ours(sdk: Any) -> list[Any]:
    """Nova's servers of our spaces.  Nova can repeat or skip a server across pages while
    states change (openstacksdk then aborts): try again, deduplicating by id."""
    import openstack.exceptions

    for _ in range(10):
        try:
            found = {s.id: s for s in sdk.compute.servers()}
            return [s for s in found.values() if (s.metadata or {}).get(TAG_SPACE) in LIMITS]
        except openstack.exceptions.SDKException:
            time.sleep(0.2)
    raise AssertionError("could not list Nova's servers")


def processors(server: Any) -> int:
    flavor = server.flavor
    vcpus = flavor.get("vcpus") if isinstance(flavor, Mapping) else getattr(flavor, "vcpus", None)
    return int(vcpus) if vcpus else 1


@dataclass
class NovaWatch:
    """A thread listing Nova's servers every ``NOVA_SAMPLE_SECONDS`` (its own SDK
    connection): names and their ids, processors per space against ``LIMITS``."""

    nova: Any
    samples: int = 0
    errors: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    ids_by_name: dict[str, set[str]] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-nova")
        self._sdk = connect(self.nova)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self._sdk.close()

    def _run(self) -> None:
        while not self._stop.wait(NOVA_SAMPLE_SECONDS):
            try:
                self.note(ours(self._sdk))
            except Exception:  # Nova busy or away: a gap in the samples
                self.errors += 1

    def note(self, servers: list[Any]) -> None:
        used: dict[str, int] = dict.fromkeys(LIMITS, 0)
        for s in servers:
            self.ids_by_name.setdefault(s.name, set()).add(s.id)
            used[s.metadata[TAG_SPACE]] += processors(s)
        for space, n in used.items():
            self.peak[space] = max(self.peak.get(space, 0), n)
            if n > LIMITS[space]:
                self.violations.append({"at": time.time(), "space": space, "processors": n})
        self.samples += 1

    def duplicates(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.ids_by_name.items() if len(ids) > 1}


@dataclass
class Run(Schedule):
    """The moving parts and what the schedule did."""

    fleet: Fleet
    watch: Watch
    sdk: Any
    rng: random.Random

    def shutoff(self) -> None:
        """The admin stops one ACTIVE server: its owner must delete and replace it."""
        active = sorted((s for s in ours(self.sdk) if s.status == "ACTIVE"), key=lambda s: s.name)
        if active:
            victim = self.rng.choice(active)
            self.sdk.compute.stop_server(victim)
            self.note("server_shutoff", f"server {victim.name} shut off")

    def kill_owner(self, pause: float) -> None:
        """kill -9 the slot owning most spaces (last lease sample), restart it."""
        owners = list(self.watch.leases[-1][1].values()) if self.watch.leases else []
        counts = {s.index: owners.count(s.index) for s in self.fleet.slots}
        most = max(counts.values())
        slot = self.fleet.slots[self.rng.choice([i for i, n in counts.items() if n == most])]
        process = slot.current
        assert process is not None
        self.watch.read_metrics(only=process)  # its cycles so far stay counted
        process.send(signal.SIGKILL)
        process.process.wait(60)
        self.note("kill9", f"kill -9 slot {slot.index} (pid {process.pid}, owned {most})")
        time.sleep(pause)
        self.fleet.start(slot).wait_started(time.monotonic() + START_SECONDS)
        self.log.append(f"{time.monotonic() - self.began:7.1f}s slot {slot.index} restarted")


def logged_acts(fleet: Fleet) -> list[dict[str, Any]]:
    """The creates and deletes every process logged: (local) time, space, slot as user."""
    acts = []
    for slot in fleet.slots:
        for process in slot.processes:
            for m in _ACT.finditer(process.log()):
                at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                acts.append({"at": at, "project": m[2], "user": f"slot-{slot.index}",
                             "machine": m[3], "kind": m[4]})
    return sorted(acts, key=lambda a: float(a["at"]))


def _config(nova: Any, password: Path) -> str:
    text = CONFIG.format(cycle=CYCLE)
    for space, limit in LIMITS.items():
        text += SPACE.format(space=space, openstack=nova.space_options(password), limit=limit,
                             image=nova["image_id"], heartbeat=HEARTBEAT_SECONDS)
    return text


def _full(sdk: Any) -> bool:
    servers = ours(sdk)
    return sum(processors(s) for s in servers if s.status == "ACTIVE") == sum(LIMITS.values())


def _schedule(run: Run, proxy: Proxy, pg: PostgresServer) -> None:
    """About 60 s of chaos once the spaces are full (times jittered by the seed)."""
    until(lambda: _full(run.sdk), time.monotonic() + SETTLE_SECONDS, "both spaces full",
          every=1.0)
    run.began = time.monotonic()
    run.log.append("    0.0s both spaces full")
    run.shutoff()
    run.at(6 + run.rng.uniform(0, 3))
    run.kill_owner(pause=4)
    wait_cycles(run.watch, tuple(LIMITS), 2, time.monotonic() + SETTLE_SECONDS)
    run.at(30 + run.rng.uniform(0, 3))
    away = restart_postgres(pg)
    run.note("pg_restart", f"PostgreSQL restarted ({away:.1f}s away)")
    time.sleep(2 * CYCLE)
    for slot in run.fleet.slots:
        process = slot.current
        assert process is not None and process.alive(), process and process.log()[-3000:]
    run.at(45 + run.rng.uniform(0, 3))
    proxy.cut(PARTITION_SECONDS)
    run.note("partition", f"slot 1 cut off the database for {PARTITION_SECONDS:g}s")
    run.at(45 + PARTITION_SECONDS + 3)
    run.shutoff()


def _settle_and_check(run: Run, novawatch: NovaWatch, store: Store) -> dict[str, Any]:
    """Every space cycles a few more times; two orphan checks two cycles apart."""
    spaces = tuple(LIMITS)
    deadline = time.monotonic() + SETTLE_SECONDS
    wait_cycles(run.watch, spaces, 3, deadline)
    first = set(orphans(_state(run.sdk), store))
    wait_cycles(run.watch, spaces, 2, deadline)
    left = sorted(first & set(orphans(_state(run.sdk), store)))
    intents = [m.name for m in store.machines() if m.state.value == "intent"]
    final = {space: 0 for space in spaces}
    for s in ours(run.sdk):
        final[s.metadata[TAG_SPACE]] += processors(s)
    return {"orphans": left, "intents_left": intents,
            "duplicate_creates": novawatch.duplicates(),
            "servers_seen": len(novawatch.ids_by_name),
            "limit_violations": novawatch.violations[:20],
            "limit_violation_count": len(novawatch.violations),
            "processors_peak": novawatch.peak, "processors_at_end": final,
            "nova_samples": novawatch.samples,
            "nova_sample_gaps": novawatch.errors,
            "faults_injected": dict(run.injected),
            "cycles_by_space": run.watch.total_cycles(),
            "cycles": sum(run.watch.total_cycles().values()), "schedule": run.log}


def _state(sdk: Any) -> dict[str, Any]:
    return {"servers": [{"name": s.name, "status": s.status} for s in ours(sdk)]}


def _clean(sdk: Any) -> None:
    """Delete every server of this project (the fleet is stopped); until Nova lists none."""
    deadline = time.monotonic() + SETTLE_SECONDS

    def empty() -> bool:
        servers = list(sdk.compute.servers())
        for s in servers:
            sdk.compute.delete_server(s, ignore_missing=True)
        return not servers

    until(empty, deadline, "Nova lists no server", every=2.0)


def _owners_over_time(watch: Watch) -> dict[str, list[int | None]]:
    """Space -> its owners in turn (consecutive samples merged)."""
    turns: dict[str, list[int | None]] = {}
    for _, owners in watch.leases:
        for space, owner in owners.items():
            seq = turns.setdefault(space, [])
            if not seq or seq[-1] != owner:
                seq.append(owner)
    return turns


@budget(180)
def test_two_instances_on_postgresql_against_real_nova(tmp_path: Path, nova: Any,
                                                       chaos_pg: PostgresServer) -> None:
    name = chaos_pg.create_database()
    direct = chaos_pg.url(name)
    proxy = Proxy(chaos_pg.port)
    proxy.start()
    fleet = Fleet(tmp_path / "fleet")
    fleet.add("slot-0", direct)
    fleet.add("slot-1", chaos_pg.url(name, port=proxy.port))
    fleet.shared = _config(nova, tmp_path / "password")
    watch = Watch("", "", {}, direct, fleet)
    novawatch = NovaWatch(nova)
    sdk = connect(nova)
    watch.start()
    novawatch.start()
    try:
        fleet.start_all()
        run = Run(fleet, watch, sdk, random.Random(SEED))
        _schedule(run, proxy, chaos_pg)
        run.injected["partition"] = proxy.cuts
        store = Store(direct)
        try:
            summary = _settle_and_check(run, novawatch, store)
        finally:
            store.close()
    finally:
        novawatch.stop()
        watch.stop()
        fleet.stop_all()
        proxy.stop()
        try:
            _clean(sdk)
        finally:
            sdk.close()
            chaos_pg.drop_database(name)
    acts = logged_acts(fleet)
    bad = owner_audit(acts, watch.leases, {s.user: s.index for s in fleet.slots},
                      {space: space for space in LIMITS}, (AUDIT_BEFORE, AUDIT_AFTER))
    summary.update(non_owner_acts=len(bad), non_owner_detail=bad[:20],
                   audited_acts=len(acts),
                   creates=sum(1 for a in acts if a["kind"] == "create"),
                   deletes=sum(1 for a in acts if a["kind"] == "delete"),
                   owners_in_turn=_owners_over_time(watch),
                   lease_samples=len(watch.leases), lease_sample_gaps=watch.lease_errors,
                   instances=len(fleet.slots), spaces=len(LIMITS), cycle_seconds=CYCLE)
    report(summary, tmp_path, "nova")
    assert not summary["orphans"], summary["orphans"]
    assert not summary["duplicate_creates"], summary["duplicate_creates"]
    assert summary["limit_violation_count"] == 0, summary["limit_violations"]
    assert summary["non_owner_acts"] == 0, summary["non_owner_detail"]
    missing = [k for k in KINDS if not summary["faults_injected"].get(k)]
    assert not missing, f"fault kinds never injected: {missing}"
    assert summary["nova_samples"] > 0 and summary["lease_samples"] > 0
    assert summary["creates"] > sum(LIMITS.values()), "machines were replaced all along"
