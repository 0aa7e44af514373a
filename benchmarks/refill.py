"""Benchmark: refill latency, from a VM's shutdown message to its replacement's create.

    .venv/bin/python -m benchmarks.refill                      # 8 spaces x 3, 60 s cycles
    .venv/bin/python -m benchmarks.refill --code /tmp/before   # the build in that tree

The production layout, everything on 127.0.0.1 and stopped at the end: one ``cloudvac
sim-cloud`` (``--spaces`` projects, each with a quota of ``--machines`` servers of one
vCPU; its simulated VMs run pilots of ``--job-seconds`` x U(0.5, 1.5), heartbeat, and at
their end PUT ``shutdown_message``, ``cpu_totals`` and ``pilot.log`` over HTTP, then power
off), one ``cloudvac web`` (the VMs' door: the configuration's ``web_url`` names it, so
every upload goes there) and one ``cloudvac run`` (the engine; its own door gets nothing),
two processes sharing one SQLite store and state directory as two systemd units do.  Each
space is ``api = openstack`` on its project, ``processors_limit`` = its quota (full:
a slot frees only when a VM ends), ``cycle_seconds = --cycle-seconds``.  Both cloudvac
processes (``--code``) and the sim cloud (``--sim-code``) run from a source tree given on
the command line, so the build before a change is measured by the same harness.

Measured in a window of ``--seconds`` after every space is full: each shutdown message's
time as the web door recorded it (the store's ``reported_at``), paired in order, per space,
with the first create request the sim cloud received for that project after it (its
audit); per refill the delay, and its split at the first delete request after the message;
median, p90 and max.  Messages in the last ``--tail`` periods that have no replacement yet
are left out; any earlier one without a replacement is counted (``unrefilled``).  Listing
calls (Nova ``GET /servers/detail``, full or ``changes-since``) per space per hour in the
window from the sim cloud's counters, and the engine's space cycles from its
``/metrics``: wakes must not add listings.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark, system_cpu
from benchmarks._haprocs import SIM_PASSWORD, Instance, proc_cpu, stop_process
from tests.postgres import free_port

RESULTS = RESULTS_DIR / "refill.json"
REPO = Path(__file__).resolve().parent.parent
GOAL_MEDIAN_SECONDS = 5.0
ADMIN_TOKEN = "refill-bench-admin-token-0b9d41"  # the sim cloud's /_sim/state, loopback
START_SECONDS = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--spaces", type=int, default=8)
    parser.add_argument("--machines", type=int, default=3, help="per space (its quota)")
    parser.add_argument("--cycle-seconds", type=float, default=60.0)
    parser.add_argument("--job-seconds", type=float, default=360.0,
                        help="mean pilot length (each U(0.5, 1.5) x this)")
    parser.add_argument("--seconds", type=float, default=600.0, help="measured window")
    parser.add_argument("--tail", type=float, default=4.0,
                        help="periods at the window's end whose messages may go unrefilled")
    parser.add_argument("--boot-seconds", type=float, default=2.0)
    parser.add_argument("--heartbeat-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--code", type=Path, default=REPO,
                        help="source tree whose cloudvac runs run and web")
    parser.add_argument("--sim-code", type=Path, default=None,
                        help="source tree of the sim cloud (default: --code)")
    parser.add_argument("--extra-settings", default="",
                        help="lines added to [settings], e.g. 'wake_seconds = 2'")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONUNBUFFERED": "1"}


def start(argv: list[str], cwd: Path, log_path: Path, stdout: int | None = None
          ) -> subprocess.Popen[str]:
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cloudvac", *argv], cwd=cwd, env=ENV,
                                stdin=subprocess.DEVNULL, stderr=log, text=True,
                                stdout=stdout if stdout is not None else log)


def start_sim(root: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    (root / "sim-password").write_text(SIM_PASSWORD)
    (root / "sim-admin").write_text(ADMIN_TOKEN)
    for name in ("sim-password", "sim-admin"):
        (root / name).chmod(0o600)
    process = start(["sim-cloud", "--listen", "127.0.0.1:0", "--password-file",
                     str(root / "sim-password"), "--admin-token-file", str(root / "sim-admin"),
                     "--projects", str(args.spaces), "--flavors", "m1.small:1:2048",
                     "--quota-processors", str(args.machines),
                     "--quota-instances", str(args.machines),
                     "--boot-seconds", str(args.boot_seconds),
                     "--job-seconds", str(args.job_seconds),
                     "--heartbeat-seconds", str(args.heartbeat_seconds),
                     "--seed", str(args.seed), "--log-level", "WARNING"],
                    args.sim_code or args.code, root / "sim-cloud.log", subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        stop_process(process)
        raise RuntimeError(f"sim-cloud did not start ({line!r}); see {root}")
    return process, line.split()[-1]


def space_name(i: int) -> str:
    return f"r{i:02d}.refill.bench"


def write_configs(root: Path, sim_url: str, web_port: int, args: argparse.Namespace) -> None:
    """One shared file (settings, spaces) and each process's own listeners."""
    parts = [f"[settings]\nstate_dir = {root / 'state'}\ncycle_seconds = {args.cycle_seconds:g}"
             f"\nweb_url = http://127.0.0.1:{web_port}\n{args.extra_settings}\n"]
    for i in range(args.spaces):
        name = space_name(i)
        parts.append(
            f"\n[space {name}]\napi = openstack\nauth_url = {sim_url}/v3\nusername = cloudvac\n"
            f"password_file = {root / 'sim-password'}\nproject_name = project-{i + 1:04d}\n"
            "region_name = RegionOne\nnetworks = none\nflavor_names = m1.small\n"
            f"processors_limit = {args.machines}\n"
            f"creation_burst_processors = {args.machines}\n\n"
            f"[machinetype {name} pilot]\ntarget_share = 1\nroot_image = cloudvac-sim-image\n"
            "fizzle_seconds = 10\n")
    for role, port in (("run", 0), ("web", web_port)):
        cdir = root / f"conf-{role}"
        cdir.mkdir()
        (cdir / "10-shared.conf").write_text("".join(parts))
        (cdir / "90-listen.conf").write_text(
            f"[settings]\nweb_listen = 127.0.0.1:{port}\noperator_listen = 127.0.0.1:0\n")


def sim_state(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/_sim/state?audit=1", timeout=120, trust_env=False,
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    answer.raise_for_status()
    found: dict[str, Any] = answer.json()
    return found


def wait_full(url: str, args: argparse.Namespace, deadline: float) -> float | None:
    """Seconds until every project holds its quota of ACTIVE servers, or None."""
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        servers = sim_state(url)["servers"]
        active = sum(1 for s in servers if s["status"] == "ACTIVE" and not s["task_state"])
        if active >= args.spaces * args.machines:
            return time.monotonic() - t0
        time.sleep(2.0)
    return None


def snapshot(url: str, run: Instance) -> dict[str, Any]:
    state = sim_state(url)
    return {"at": time.time(), "calls": state["calls"], "audit": state.get("audit", []),
            "counters": run.counters(), "system": system_cpu(),
            "load": os.getloadavg()}


def reported(database: Path) -> list[tuple[str, str, float]]:
    """(space, machine, reported_at) of every shutdown message the store holds."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT space, name, reported_at FROM machines "
                          "WHERE reported_at IS NOT NULL").fetchall()
    return [(str(s), str(n), float(at)) for s, n, at in rows]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def pair(messages: list[tuple[str, str, float]], audit: list[dict[str, Any]],
         window: tuple[float, float, float]) -> dict[str, Any]:
    """Every message matched, in order per space, to the first create of its project after
    it not taken by an earlier message, split at the first delete of that project after
    it; those in the window reported."""
    start_at, last_message, end_at = window
    projects = {space_name(i): f"project-{i + 1:04d}" for i in range(100)}
    refills: list[dict[str, Any]] = []
    unrefilled = 0
    for space in sorted({m[0] for m in messages}):
        project = projects.get(space)
        creates = sorted(a["at"] for a in audit if a["kind"] == "create"
                         and a["project"] == project)
        deletes = sorted(a["at"] for a in audit if a["kind"] == "delete"
                         and a["project"] == project)
        for _, name, at in sorted((m for m in messages if m[0] == space), key=lambda m: m[2]):
            create = next((c for c in creates if c >= at), None)
            if create is not None:
                creates.remove(create)
            if not start_at <= at <= end_at:
                continue
            if create is None or create > end_at:
                unrefilled += at <= last_message
                continue
            delete = next((d for d in deletes if d >= at), None)
            refills.append({"space": space, "machine": name, "message_at": round(at, 3),
                            "seconds": round(create - at, 3),
                            "to_delete": round(delete - at, 3) if delete is not None and
                            delete <= create else None})
    delays = [r["seconds"] for r in refills]
    splits = [r["to_delete"] for r in refills if r["to_delete"] is not None]
    return {"count": len(refills), "unrefilled": unrefilled,
            "median_seconds": round(statistics.median(delays), 3) if delays else None,
            "p90_seconds": pct(delays, 0.9), "max_seconds": max(delays, default=None),
            "median_to_delete_seconds": round(statistics.median(splits), 3)
            if splits else None,
            "refills": sorted(refills, key=lambda r: r["message_at"])}


def window_figures(a: dict[str, Any], b: dict[str, Any], args: argparse.Namespace
                   ) -> dict[str, Any]:
    hours = (b["at"] - a["at"]) / 3600.0
    lists = b["calls"].get("list", 0) - a["calls"].get("list", 0)
    cycles = b["counters"].get("cycles_ok", 0.0) - a["counters"].get("cycles_ok", 0.0)
    busy = (b["system"][0] - a["system"][0]) / max(1.0, b["system"][1] - a["system"][1])
    return {"seconds": round(b["at"] - a["at"], 1), "listing_calls": lists,
            "listing_calls_per_space_hour": round(lists / args.spaces / hours, 1),
            "scheduled_cycles_per_space_hour": round(3600.0 / args.cycle_seconds, 1),
            "space_cycles_ok": cycles,
            "space_cycles_per_space_hour": round(cycles / args.spaces / hours, 1),
            "creates": b["calls"].get("create", 0) - a["calls"].get("create", 0),
            "deletes": b["calls"].get("delete", 0) - a["calls"].get("delete", 0),
            "machine_busy_cores": round(busy * (os.cpu_count() or 1), 2),
            "load_average_start_end": [round(a["load"][0], 2), round(b["load"][0], 2)]}


def code_of(tree: Path) -> dict[str, Any]:
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "cloudvac"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"tree": str(tree), "commit": head or None, "uncommitted": bool(dirty)}


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    sim, sim_url = start_sim(root, args)
    procs: list[Instance] = []
    try:
        web_port = free_port()
        write_configs(root, sim_url, web_port, args)
        for role in ("web", "run"):  # the door first: it creates the store and the secret
            log_path = root / f"{role}.log"
            process = start([role, "--config-dir", str(root / f"conf-{role}")], args.code,
                            log_path)
            procs.append(Instance(len(procs), process, log_path))  # type: ignore[arg-type]
            procs[-1].wait_started(time.monotonic() + START_SECONDS)
        web, run = procs
        result["fill_seconds"] = full = wait_full(sim_url, args,
                                                  time.monotonic() + START_SECONDS)
        if full is None:
            result["failure"] = "the spaces were not full in time"
            return result
        a = snapshot(sim_url, run)
        time.sleep(args.seconds)
        b = snapshot(sim_url, run)
        result["window"] = window_figures(a, b, args)
        result["cpu_seconds"] = {"run": round(proc_cpu(run.pid), 1),
                                 "web": round(proc_cpu(web.pid), 1),
                                 "sim_cloud": round(proc_cpu(sim.pid), 1)}
    finally:
        for proc in reversed(procs):
            result.setdefault("exit_codes", {})[f"{proc.index}"] = stop_process(proc.process)
        stop_process(sim)
    last = b["at"] - args.tail * args.cycle_seconds
    result["refill"] = pair(reported(root / "state" / "cloudvac.db"), b["audit"],
                            (a["at"], last, b["at"]))
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    code = code_of(args.code)
    with tempfile.TemporaryDirectory(prefix="cloudvac-refill-") as tmp:
        result = measure(Path(tmp), args)
        code["uncommitted_at_end"] = code_of(args.code)["uncommitted"]
    refill = result.get("refill", {})
    median = refill.get("median_seconds")
    ok = "failure" not in result and refill.get("count", 0) > 0
    return {"benchmark": "refill", "ok": ok, "goal_median_seconds": GOAL_MEDIAN_SECONDS,
            "goal_met": median is not None and median <= GOAL_MEDIAN_SECONDS,
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "code": code, "host": host, **result}


def summary(report: dict[str, Any]) -> str:
    refill, window = report.get("refill", {}), report.get("window", {})
    return "\n".join([
        f"refill latency ({report['code']['tree']}, {report['params']['spaces']} spaces x "
        f"{report['params']['machines']}, cycle {report['params']['cycle_seconds']:g} s; "
        f"goal median <= {report['goal_median_seconds']:g} s)",
        f"  refills {refill.get('count')} (unrefilled {refill.get('unrefilled')}): median "
        f"{refill.get('median_seconds')} s, p90 {refill.get('p90_seconds')} s, max "
        f"{refill.get('max_seconds')} s; to the delete {refill.get('median_to_delete_seconds')}"
        " s (median)",
        f"  listing calls per space-hour {window.get('listing_calls_per_space_hour')}, cycles "
        f"per space-hour {window.get('space_cycles_per_space_hour')} (schedule "
        f"{window.get('scheduled_cycles_per_space_hour')}); machine busy "
        f"{window.get('machine_busy_cores')} cores",
        *([f"  FAILED: {report['failure']}"] if "failure" in report else [])])


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
