"""Benchmark: S spaces x M machines managed by N ``cloudvac run`` instances on one
PostgreSQL, against one ``cloudvac sim-cloud`` (issue 18: 1,000 x 100 over 4).

    .venv/bin/python -m benchmarks.ha_postgres                      # smoke: 20 x 10 over 2
    .venv/bin/python -m benchmarks.ha_postgres --spaces 1000 --machines 100 --instances 4 \\
        --cycle-seconds 60 --seconds 240                            # the issue's figure

What it does, all on 127.0.0.1, bounded by ``--deadline``:

1. starts a private PostgreSQL (``tests/postgres.py``'s server: initdb into a temporary
   directory, fsync off as in the tests: the CPU is measured, not the disk) and one
   database;
2. starts ``cloudvac sim-cloud --projects S`` (quota M vCPUs and M servers per project,
   flavor m1.small of 1 vCPU, boot of ``--boot-seconds``, pilots of ``--job-seconds``
   on average, VMs heartbeating every ``--heartbeat-seconds`` to the instance that
   created them);
3. writes one configuration (``[settings]`` with ``database``, ``cycle_seconds``; S
   ``api = openstack`` spaces, each on its own project with ``processors_limit = M`` and
   one machinetype), creates one ``server.secret`` and starts N ``cloudvac run`` at once,
   each with its own state directory (the secret copied in) and loopback ports;
4. fill: polls the store until S x M machines are ``running`` (time to fill from the
   start of the instances). ``--fill create`` (default): the instances create every
   machine (burst ``--burst`` per space and cycle); ``--fill adopt``: the benchmark first
   puts S x M servers into the sim cloud through its Nova API (tagged for their space,
   machinetype and manager, no user_data, so their VMs do not report), and the instances
   adopt them from their tags, one store transaction per space (as ``benchmarks/scale.py``
   does in-process): a create through the manager costs tens of ms of CPU, too many for
   100,000 on a shared 2-core machine in bounded time;
5. steady state: waits ``--settle`` periods, then measures a window of ``--seconds``:
   each instance's CPU (utime + stime from ``/proc/PID/stat``) and the space cycles it
   completed (``cloudvac_cycles_total`` from its ``/metrics``), the spaces it owns (lease
   rows, at both ends), the database server's CPU (postmaster, live backends and the
   reaped ones), the sim cloud's CPU, PostgreSQL's transactions and connections, and the
   machine's load;
6. stops every instance (SIGTERM), the sim cloud and the server.

Manager CPU per full cycle of an instance = its CPU in the window / (space cycles it
completed / spaces it owned). The JSON (``results/ha_postgres.json``) holds every figure;
``ok`` is false if the fill or the window did not complete before the deadline, an
instance died, or a space cycle failed in the window.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark, system_cpu
from benchmarks._haprocs import (
    BenchPostgres,
    Instance,
    SimCloud,
    proc_cpu,
    proc_rss_mb,
    start_instance,
    start_sim,
    stop_process,
)
from tests.postgres import free_port

POLL_SECONDS = 2.0


def space_name(i: int) -> str:
    return f"s{i:04d}.ha.bench"


def sim_options(args: argparse.Namespace) -> list[str]:
    return ["--projects", str(args.spaces), "--flavors", "m1.small:1:2048",
            "--quota-processors", str(args.machines), "--quota-instances", str(args.machines),
            "--boot-seconds", str(args.boot_seconds), "--job-seconds", str(args.job_seconds),
            "--heartbeat-seconds", str(args.heartbeat_seconds), "--seed", "1",
            "--log-level", "WARNING"]


def write_shared(path: Path, url: str, sim: SimCloud, args: argparse.Namespace) -> None:
    parts = [f"[settings]\ndatabase = {url}\ncycle_seconds = {args.cycle_seconds:g}\n"
             "web_rate_per_client = 0\n"]
    burst = f"creation_burst_processors = {args.burst}\n" if args.burst else ""
    for i in range(args.spaces):
        name = space_name(i)
        parts.append(f"\n[space {name}]\n{sim.space_lines(f'project-{i + 1:04d}')}"
                     f"processors_limit = {args.machines}\n{burst}\n"
                     f"[machinetype {name} pilot]\ntarget_share = 1\n"
                     "root_image = cloudvac-sim-image\nheartbeat_file = heartbeat\n")
    path.write_text("".join(parts))
    path.chmod(0o600)  # it holds the database password


class Probe:
    """What is measured, read from /proc, the store and the instances' /metrics."""

    def __init__(self, pg: BenchPostgres, database: str, sim: SimCloud,
                 instances: list[Instance]) -> None:
        self.pg, self.sim, self.instances, self.database = pg, sim, instances, database
        self.db = pg.connect(host="127.0.0.1", dbname=database)

    def close(self) -> None:
        self.db.close()

    def machines(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM machines GROUP BY state")
        return {str(state): int(n) for state, n in rows.fetchall()}

    def owned(self) -> dict[int, int]:
        """Instance pid -> spaces whose lease it holds now (database clock)."""
        rows = self.db.execute(
            "SELECT i.pid, count(l.space) FROM instances i LEFT JOIN space_leases l ON "
            "l.owner = i.instance AND l.expires_at > extract(epoch FROM clock_timestamp()) "
            "GROUP BY i.pid").fetchall()
        return {int(pid): int(n) for pid, n in rows}

    def pg_stats(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, "
            "tup_updated, tup_deleted, (SELECT count(*) FROM pg_stat_activity WHERE "
            "datname = %s) FROM pg_stat_database WHERE datname = %s",
            (self.database, self.database)).fetchone()
        assert row is not None
        keys = ("commits", "rollbacks", "tup_returned", "tup_fetched", "tup_inserted",
                "tup_updated", "tup_deleted", "connections")
        return {k: int(v) for k, v in zip(keys, row, strict=True)}

    def snapshot(self, end: bool = False) -> dict[str, Any]:
        """Every figure now.  Each instance's ``/metrics`` is read in parallel; its answer
        reads the whole store (``read_view``), seconds at 100,000 machines, so the CPU of
        that scrape is kept out of the window: read after the answer at its start, before
        the request at its ``end``; what a scrape cost is recorded apart."""
        def one(instance: Instance) -> tuple[dict[str, float], float, float, float]:
            t0, cpu0 = time.monotonic(), proc_cpu(instance.pid, children=True)
            try:
                found = instance.counters()
            except httpx.HTTPError as exc:
                found = {"error": 1.0}
                print(f"instance {instance.index}: /metrics: {exc!r}", file=sys.stderr)
            cpu1, t1 = proc_cpu(instance.pid, children=True), time.monotonic()
            found["cpu_at"] = t0 if end else t1  # when its CPU was read
            found["counted_at"] = t0  # the answer's counters are taken as it starts
            return found, cpu0 if end else cpu1, cpu1 - cpu0, t1 - t0

        wall, system, load = time.monotonic(), system_cpu(), os.getloadavg()
        pg_cpu, sim_cpu = self.pg.cpu(), proc_cpu(self.sim.process.pid)
        with ThreadPoolExecutor(len(self.instances)) as pool:
            read = dict(zip((i.index for i in self.instances),
                            pool.map(one, self.instances), strict=True))
        return {"wall": wall, "system": system, "load": load, "pg_cpu": pg_cpu,
                "sim_cpu": sim_cpu, "counters": {k: v[0] for k, v in read.items()},
                "cpu": {k: v[1] for k, v in read.items()},
                "scrape": {k: [round(v[2], 2), round(v[3], 2)] for k, v in read.items()},
                "owned": self.owned(), "pg": self.pg_stats()}


def wait_fill(probe: Probe, target: int, t0: float, deadline: float) -> dict[str, Any]:
    """Poll until ``target`` machines are running; the time from ``t0`` and the CPU spent."""
    cpu0 = {"pg": probe.pg.cpu(), "sim": proc_cpu(probe.sim.process.pid),
            "instances": sum(proc_cpu(i.pid) for i in probe.instances)}
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        dead = [i.index for i in probe.instances if i.process.poll() is not None]
        if dead:
            return {"done": False, "why": f"instances {dead} exited", "states": states}
        states = probe.machines()
        if states.get("running", 0) >= target:
            break
        time.sleep(POLL_SECONDS)
    done = states.get("running", 0) >= target
    return {"done": done, "seconds": round(time.monotonic() - t0, 1), "states": states,
            "cpu_seconds": {
                "instances_total": round(sum(proc_cpu(i.pid) for i in probe.instances)
                                         - cpu0["instances"], 1),
                "database": round(probe.pg.cpu() - cpu0["pg"], 1),
                "sim_cloud": round(proc_cpu(probe.sim.process.pid) - cpu0["sim"], 1)}}


def per_instance(a: dict[str, Any], b: dict[str, Any], pid: dict[int, int]) -> list[Any]:
    rows = []
    for index, cpu in b["cpu"].items():
        c0, c1 = a["counters"][index], b["counters"][index]

        def delta(key: str, c0: dict[str, float] = c0, c1: dict[str, float] = c1) -> float:
            return c1.get(key, 0.0) - c0.get(key, 0.0)

        cycles = delta("cycles_ok") + delta("cycles_error")
        owned = [a["owned"].get(pid[index], 0), b["owned"].get(pid[index], 0)]
        mean_owned = sum(owned) / 2
        # CPU and cycles are counted over slightly different spans (a scrape takes a
        # minute at 100,000 machines): per full cycle = CPU rate / full-cycle rate
        seconds = (cpu - a["cpu"][index]) * delta("counted_at") / max(1e-9, delta("cpu_at"))
        full_cycles = cycles / mean_owned if mean_owned else 0.0
        duration_n = delta("cycle_duration_seconds_count")
        rows.append({
            "instance": index, "spaces_owned_start_end": owned,
            "space_cycles": int(cycles), "space_cycles_failed": int(delta("cycles_error")),
            "full_cycles": round(full_cycles, 2), "counted_seconds": round(
                delta("counted_at"), 1), "cpu_seconds_measured": round(cpu - a["cpu"][index], 2),
            "cpu_measured_seconds": round(delta("cpu_at"), 1),
            "cpu_seconds": round(seconds, 2),
            "cpu_seconds_per_full_cycle": round(seconds / full_cycles, 3)
            if full_cycles else None,
            "cpu_ms_per_space_cycle": round(1000 * seconds / cycles, 2) if cycles else None,
            "space_cycle_wall_seconds_mean": round(
                delta("cycle_duration_seconds_sum") / duration_n, 3) if duration_n else None,
            "creates": int(delta("creates")), "deletes": int(delta("deletes")),
            "vm_uploads": int(delta("uploads")),
            "metrics_scrape_cpu_and_wall_seconds_start_end": [a["scrape"][index],
                                                              b["scrape"][index]],
            "metrics_errors": int(c0.get("error", 0) + c1.get("error", 0))})
    return rows


def window(a: dict[str, Any], b: dict[str, Any], pid: dict[int, int]) -> dict[str, Any]:
    seconds = b["wall"] - a["wall"]
    rows = per_instance(a, b, pid)
    pg = {k: b["pg"][k] - a["pg"][k] for k in a["pg"] if k != "connections"}
    busy = (b["system"][0] - a["system"][0]) / max(1.0, b["system"][1] - a["system"][1])
    full = [r["cpu_seconds_per_full_cycle"] for r in rows if r["cpu_seconds_per_full_cycle"]]
    space_cycles = sum(r["space_cycles"] for r in rows)
    db_cpu, sim_cpu = b["pg_cpu"] - a["pg_cpu"], b["sim_cpu"] - a["sim_cpu"]
    return {
        "seconds": round(seconds, 1), "instances": rows,
        "manager_cpu_seconds_per_full_cycle": {
            "min": min(full, default=None), "max": max(full, default=None),
            "mean": round(sum(full) / len(full), 3) if full else None},
        "spaces_owned_end": sorted(r["spaces_owned_start_end"][1] for r in rows),
        "space_cycles_total": space_cycles,
        "database": {"cpu_seconds": round(db_cpu, 2),
                     "cpu_share_of_a_core": round(db_cpu / seconds, 3),
                     "cpu_ms_per_space_cycle": round(1000 * db_cpu / space_cycles, 2)
                     if space_cycles else None,
                     "connections_start_end": [a["pg"]["connections"],
                                               b["pg"]["connections"]], **pg},
        "sim_cloud": {"cpu_seconds": round(sim_cpu, 2),
                      "cpu_share_of_a_core": round(sim_cpu / seconds, 3),
                      "cpu_ms_per_space_cycle": round(1000 * sim_cpu / space_cycles, 2)
                      if space_cycles else None},
        "machine_busy_cores": round(busy * (os.cpu_count() or 1), 2),
        "load_average_start_end": [[round(x, 2) for x in a["load"]],
                                   [round(x, 2) for x in b["load"]]],
    }


@dataclass(frozen=True)
class Services:
    """What the instances share: the server, their database on it, the sim cloud."""

    pg: BenchPostgres
    database: str
    sim: SimCloud


def cluster(args: argparse.Namespace, root: Path, services: Services,
            deadline: float) -> dict[str, Any]:
    from cloudvac.auth.vmtokens import SECRET_FILE, load_or_create_secret

    pg, database, sim = services.pg, services.database, services.sim

    shared = root / "shared.conf"
    write_shared(shared, pg.url(database), sim, args)
    load_or_create_secret(root / "seed")
    result: dict[str, Any] = {}
    if args.fill == "adopt":
        from benchmarks._haprefill import prefill

        cpu0 = proc_cpu(sim.process.pid)
        result["prefill"] = prefill(sim.url, {f"project-{i + 1:04d}": space_name(i)
                                              for i in range(args.spaces)}, args.machines)
        result["prefill"]["sim_cpu_seconds"] = round(proc_cpu(sim.process.pid) - cpu0, 1)
    t0 = time.monotonic()
    instances = [start_instance(root, i, shared, root / "seed" / SECRET_FILE, free_port())
                 for i in range(args.instances)]
    probe: Probe | None = None
    try:
        for instance in instances:
            instance.wait_started(t0 + 300.0)
        result["instances_serving_seconds"] = round(time.monotonic() - t0, 1)
        probe = Probe(pg, database, sim, instances)
        result["fill"] = fill = wait_fill(probe, args.spaces * args.machines, t0, deadline)
        if fill["done"]:
            time.sleep(args.settle * args.cycle_seconds)
            a = probe.snapshot()
            time.sleep(max(0.0, min(args.seconds, deadline - time.monotonic())))
            b = probe.snapshot(end=True)
            result["window"] = window(a, b, {i.index: i.pid for i in instances})
            result["machines_end"] = probe.machines()
        result["rss_mb"] = {"instances": [proc_rss_mb(i.pid) for i in instances],
                            "sim_cloud": proc_rss_mb(sim.process.pid)}
        result["alive_at_end"] = [i.process.poll() is None for i in instances]
    finally:
        if probe is not None:
            probe.close()
        for instance in instances:  # all at once: each stop waits for its cycles to end
            instance.process.terminate()
        result["exit_codes"] = [stop_process(i.process, signal_it=False) for i in instances]
    return result


def verdict(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures = []
    fill = report.get("fill") or {}
    if not fill.get("done"):
        failures.append(f"not full before the deadline: {fill.get('why', fill.get('states'))}")
    win = report.get("window")
    if win is not None:
        if win["seconds"] < 0.9 * args.seconds:
            failures.append(f"window cut short by the deadline ({win['seconds']} s)")
        if any(r["metrics_errors"] for r in win["instances"]):
            failures.append("an instance's /metrics could not be read")
        bad = sum(r["space_cycles_failed"] for r in win["instances"])
        if bad:
            failures.append(f"{bad} space cycles failed in the window")
        if not all(r["full_cycles"] for r in win["instances"]):
            failures.append("an instance completed no cycle in the window")
    if not all(report.get("alive_at_end", [False])):
        failures.append("an instance died")
    return failures


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of ``cloudvac/`` changed on top of it."""
    root = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True,
                              check=False, timeout=60)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--short", "--", "cloudvac").splitlines()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    # a SIGTERM (or a SIGINT, ignored in a background job) stops everything started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    deadline = started + args.deadline
    report: dict[str, Any] = {
        "benchmark": "ha_postgres",
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "host": host_info(), "load_average_before": list(os.getloadavg()),
        "code": code_state(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tempfile.TemporaryDirectory(prefix="cloudvac-ha-") as tmp:
        root = Path(tmp)
        pg = BenchPostgres()
        try:
            pg.start()
            report["postgres"] = {"start_seconds": round(pg.start_seconds, 1),
                                  "settings": pg.settings()}
            database = pg.create_database()
            sim = start_sim(root, sim_options(args))
            try:
                report.update(cluster(args, root, Services(pg, database, sim), deadline))
            finally:
                report["sim_exit_code"] = sim.stop()
        except (OSError, RuntimeError, psycopg.Error) as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            pg.stop()
    report["failures"] = verdict(report, args) + ([report["error"]] if "error" in report
                                                  else [])
    report["ok"] = not report["failures"]
    report["total_seconds"] = round(time.monotonic() - started, 1)
    return report


def summary(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [f"cloudvac ha_postgres: {p['spaces']} spaces x {p['machines']} machines over "
             f"{p['instances']} instances on one PostgreSQL, sim-cloud, cycle_seconds "
             f"{p['cycle_seconds']:g}"]
    fill = report.get("fill")
    if fill:
        lines.append(f"  fill         {'full' if fill['done'] else 'NOT full'} after "
                     f"{fill.get('seconds')} s: {fill.get('states')}; CPU s "
                     f"{fill.get('cpu_seconds')}")
    win = report.get("window")
    if win:
        lines.append("  instance  spaces   space cycles  full cycles  CPU s  CPU s/full cycle"
                     "  ms/space cycle")
        for r in win["instances"]:
            lines.append(f"  {r['instance']:>8}  {r['spaces_owned_start_end']!s:>9} "
                         f"{r['space_cycles']:>10} {r['full_cycles']:>12} "
                         f"{r['cpu_seconds']:>7} {r['cpu_seconds_per_full_cycle']!s:>17} "
                         f"{r['cpu_ms_per_space_cycle']!s:>15}")
        db, sim = win["database"], win["sim_cloud"]
        lines.append(f"  database     {db['cpu_seconds']} CPU s in {win['seconds']} s "
                     f"({db['cpu_share_of_a_core']:.0%} of a core, "
                     f"{db['cpu_ms_per_space_cycle']} ms per space cycle), connections "
                     f"{db['connections_start_end']}, {db['commits']} commits")
        lines.append(f"  sim cloud    {sim['cpu_seconds']} CPU s "
                     f"({sim['cpu_share_of_a_core']:.0%} of a core)")
        lines.append(f"  machine      {win['machine_busy_cores']} cores busy in the window, "
                     f"load {win['load_average_start_end']}")
    verdict_ = "OK" if report["ok"] else "FAILED: " + "; ".join(report["failures"])
    lines.append(f"  result       {verdict_} (total {report['total_seconds']} s)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ha_postgres",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--spaces", type=int, default=20)
    parser.add_argument("--machines", type=int, default=10, help="per space")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--cycle-seconds", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="periods waited after the fill before the window")
    parser.add_argument("--burst", type=int, default=0, help="creation_burst_processors "
                        "(0: the default, 10%% of the space's limit)")
    parser.add_argument("--fill", choices=("create", "adopt"), default="create",
                        help="create: the instances create every machine; adopt: the "
                        "servers are put into the sim cloud first (tagged, no user_data) "
                        "and adopted by the instances' first cycles")
    parser.add_argument("--boot-seconds", type=float, default=1.0)
    parser.add_argument("--job-seconds", type=float, default=86400.0,
                        help="mean pilot length (0.5-1.5 times this)")
    parser.add_argument("--heartbeat-seconds", type=float, default=600.0)
    parser.add_argument("--deadline", type=float, default=900.0, help="the whole run")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ha_postgres.json")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_benchmark(parse_args, run, summary))
