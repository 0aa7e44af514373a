"""Benchmark: manager CPU and memory per full cycle at 100 spaces x 1,000 machines (sim cloud).

    .venv/bin/python -m benchmarks.scale [--spaces 100] [--machines 1000] [--cycles 5]
        [--period 20] [--job-hours 12] [--code DIR] [--out FILE]
    .venv/bin/python -m benchmarks.scale --shapes 100x1000 1000x100 10x10000 \
        [--baseline DIR] [--repeat 2] [--out FILE]

What it does, in one process, bounded in time:

1. writes a config directory with one ``[space]`` file per space (``api = sim``, zero API
   latency, ``processors_limit`` = sim quota = machines, flavor m1.small = 1 vCPU, one
   machinetype with long pilots) and ``cycle_seconds = --period``;
2. fills every space *before* the daemon starts, straight into its ``SimProject``: servers
   tagged for the space and manager, created at staggered past times (age uniform in
   [0, job_seconds)) so that pilots end - and are replaced - at a steady-state rate during
   the measurement; servers whose drawn timeline has already ended are deleted again before
   the manager sees them.  The first cycle then *adopts* all of them from their tags (one
   store transaction per space) instead of creating 100,000 machines through the normal
   create path (two fsync'ed store writes and one API call each);
3. runs the real ``Daemon`` (``daemon.run()``, the same object ``cloudvac run`` uses, with
   the default ``generic_user_data`` renderer; the pilots' heartbeats and shutdown messages
   go to a ``NullPilots``, since in production they arrive at the web side, not the
   engine), and records, each time *every* space has finished its k-th cycle, the process
   CPU (``getrusage``: all threads), wall time and RSS;
4. reports the adoption cycle, then ``--warmup`` steady cycles, then ``--cycles`` measured
   steady cycles: CPU seconds per full cycle (all spaces), split by stage from the cycles'
   own reports (``engine/stages.py``: listing, store read, reconcile, plan, store write;
   ``other`` = the process CPU minus their sum: event loop, thread hand-offs, metrics,
   configuration re-reads, garbage collection), wall time from the first space's start to
   the last space's end, creates/deletes (the churn), and RSS;
5. then, in the same process, the yardstick (``_novabaseline.py``): the CPU of a typed
   msgspec decode of the Nova JSON of the same servers, and the ratio of the steady full
   cycle to it.

The RSS includes the simulated cloud (100,000 ``SimServer`` objects live in this process);
the sim's own share is measured (RSS after filling minus before) and subtracted for the
"manager" figure.  Goals (issue 19): <= 1.0 CPU second per full cycle at 100 x 1,000, or
<= 5 times the decode of the same servers measured in the same run; <= 300 MB RSS for
the manager.

``--code DIR`` imports ``cloudvac`` from the source tree DIR (a worktree of the build
before a change) with this harness.  ``--shapes`` runs one child process per shape (each
``SPACESxMACHINES``), and with ``--baseline DIR`` each shape also with ``--code DIR``,
alternating current and baseline ``--repeat`` times; the children's reports and the
pairwise ratios go to one file (``_scaleruns.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    RESULTS_DIR,
    host_info,
    process_cpu,
    rss_mb,
    run_benchmark,
)

RESULTS = RESULTS_DIR / "scale.json"
SHAPES = RESULTS_DIR / "scale_shapes.json"
COMPARE = RESULTS_DIR / "scale_before_after.json"
STAGES = ("listing", "store_read", "reconcile", "plan", "store_write")
GOAL_CPU, GOAL_RATIO, GOAL_RSS = 1.0, 5.0, 300.0
MACHINETYPE = "pilot"
DEADLINE_SECONDS = 540.0  # the whole run, fill included; partial results after that
#: How often the harness looks whether every space finished a round (its own CPU counts
#: in the process's, so it looks rarely; a round's end is seen within this).
POLL_SECONDS = 0.05


def space_name(i: int) -> str:
    return f"s{i:03d}.bench"


def write_config(cdir: Path, state: Path, args: argparse.Namespace) -> None:
    cdir.mkdir(parents=True)
    (cdir / "00-settings.conf").write_text(
        f"[settings]\nstate_dir = {state}\ncycle_seconds = {args.period}\n"
        f"space_timeout_seconds = 600\n")
    for i in range(args.spaces):
        name = space_name(i)
        (cdir / f"10-{name}.conf").write_text(f"""\
[space {name}]
api = sim
processors_limit = {args.machines}
flavor_names = m1.small
sim_quota_processors = {args.machines}
sim_boot_seconds = {args.boot_seconds}
sim_seed = {i + 1}

[machinetype {name} {MACHINETYPE}]
target_share = 1
max_wallclock_seconds = {int(args.job_hours * 3600 * 2)}
sim_job_seconds = {args.job_hours * 3600}
sim_heartbeat_period_seconds = 3600
""")


def fill(spaces: dict[str, Any], machines: int, manager_id: str, job_seconds: float,
         seed: int) -> tuple[dict[str, Any], dict[str, int]]:
    """A ``SimProject`` per space holding ``machines`` live tagged servers with staggered
    ages; returns the projects by space name, and how many drawn servers had already
    ended."""
    from cloudvac.clouds.sim import SimProject
    from cloudvac.config.models import SimMachinetype
    from cloudvac.engine.tools import generic_user_data
    from cloudvac.model.cloud import (
        TAG_CREATED,
        TAG_MACHINETYPE,
        TAG_MANAGER,
        TAG_SPACE,
        MachineSpec,
    )
    from cloudvac.model.naming import machine_name

    rng = random.Random(seed)
    now = time.time()
    when = [now]
    discarded = 0
    projects: dict[str, Any] = {}
    for name, space in spaces.items():
        mt = space.machinetypes[MACHINETYPE]
        project = SimProject(options=space.sim, machinetypes={MACHINETYPE: mt.sim or
                                                              SimMachinetype()},
                             clock=lambda: when[0], delete_seconds=0.0)
        flavor = project.flavors["m1.small"]
        live = 0
        while live < machines:
            when[0] = now - rng.random() * job_seconds
            server_name = machine_name(name, MACHINETYPE)
            cloud_id = project.create(MachineSpec(
                name=server_name, space=name, machinetype=MACHINETYPE, flavor=flavor,
                image="", user_data=generic_user_data(space, mt, server_name),
                metadata={TAG_SPACE: name, TAG_MACHINETYPE: MACHINETYPE,
                          TAG_MANAGER: manager_id, TAG_CREATED: f"{when[0]:.0f}"}))
            if project.servers[cloud_id].end_at <= now:
                when[0] = now
                project.delete(cloud_id)  # ended already: never shown to the manager
                project.advance(now)  # delete_seconds is 0 here: gone, quota freed
                discarded += 1
            else:
                live += 1
        project.advance(now)  # boots, removes the discarded ones
        project.clock = time.time
        project.delete_seconds = 1.0
        project.calls.clear()
        projects[name] = project
    return projects, {"discarded_already_ended": discarded}


class GcClock:
    """The garbage collector's CPU and collections, from ``gc.callbacks`` (a collection
    runs on the thread that allocated, start to stop: that thread's CPU clock)."""

    def __init__(self) -> None:
        self.seconds, self.collections, self._begun = 0.0, 0, 0.0

    def __call__(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._begun = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._begun
            self.collections += 1


async def drive(daemon: Any, rounds: int, deadline: float) -> list[dict[str, Any]]:
    """Run the daemon; sample CPU/wall/RSS/GC each time every space finished one more
    cycle."""
    runner = asyncio.create_task(daemon.run(), name="daemon")
    collector = GcClock()
    gc.callbacks.append(collector)

    def sample() -> dict[str, Any]:
        return {"cpu": process_cpu(), "wall": time.monotonic(), "rss": rss_mb(),
                "gc_s": collector.seconds, "gc_n": collector.collections}

    samples = [sample()]
    try:
        done = 0
        while done < rounds and time.monotonic() < deadline and not runner.done():
            await asyncio.sleep(POLL_SECONDS)
            states = list(daemon.spaces.values())
            if states and min(s.cycles for s in states) > done:
                done += 1
                samples.append(sample())
                print(f"round {done} of {rounds} done: "  # a profiler can attach after round 1
                      f"{samples[-1]['cpu'] - samples[-2]['cpu']:.2f} CPU s", file=sys.stderr,
                      flush=True)
    finally:
        gc.callbacks.remove(collector)
        daemon.stop()
        await asyncio.wait_for(runner, 120)
    return samples


def round_stats(daemon: Any, k: int) -> dict[str, Any]:
    """Figures of every space's k-th cycle (0-based) from the kept CycleReports."""
    reports = [s.reports[k] for s in daemon.spaces.values() if len(s.reports) > k]
    starts = [r.started for r in reports]
    ends = [r.started + r.duration for r in reports]
    return {
        "spaces": len(reports),
        "wall_first_start_to_last_end_s": round(max(ends) - min(starts), 3),
        "space_cycle_seconds_max": round(max(r.duration for r in reports), 3),
        "space_cycle_seconds_mean": round(sum(r.duration for r in reports) / len(reports), 3),
        "listed": sum(r.listed for r in reports),
        "created": sum(r.created for r in reports),
        "deleted": sum(r.deleted for r in reports),
        "create_failures": sum(r.create_failures for r in reports),
        "errors": sorted({r.error for r in reports if not r.ok})[:3],
    }


def use_code(code: Path | None) -> dict[str, Any]:
    """Import ``cloudvac`` from the tree ``code`` (None: as installed); where it came from."""
    import subprocess

    if code is not None:
        sys.path.insert(0, str(code.resolve()))
    import cloudvac

    where = Path(cloudvac.__file__).resolve().parent
    if code is not None and not where.is_relative_to(code.resolve()):
        raise SystemExit(f"cloudvac imported from {where}, not from --code {code}")
    git = ["git", "-C", str(where.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "cloudvac"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"cloudvac": str(where), "commit": head, "uncommitted_changes": bool(dirty)}


def stage_sums(daemon: Any, k: int, cpu: float) -> dict[str, float] | None:
    """CPU seconds per stage summed over every space's k-th cycle, and ``other`` (the
    round's process CPU minus their sum); None for a build without stage times."""
    reports = [s.reports[k] for s in daemon.spaces.values() if len(s.reports) > k]
    if not reports or getattr(reports[0], "cpu", None) is None:
        return None
    sums = {name: round(sum(getattr(r.cpu, name) for r in reports), 4) for name in STAGES}
    sums["other"] = round(cpu - sum(sums.values()), 4)
    return sums


def run(args: argparse.Namespace) -> dict[str, Any]:
    code = use_code(args.code)
    from benchmarks._novabaseline import decode_baseline
    from cloudvac.clouds.simpilots import NullPilots
    from cloudvac.config import load_config_dir
    from cloudvac.service import build_daemon
    from cloudvac.store import Store

    started = time.monotonic()
    deadline = started + DEADLINE_SECONDS
    report: dict[str, Any] = {
        "benchmark": "scale",
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "host": host_info(),
        "code": code,
        "goals": {"cpu_seconds_per_full_cycle": GOAL_CPU, "or_ratio_to_decode": GOAL_RATIO,
                  "rss_mb_manager": GOAL_RSS},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with tempfile.TemporaryDirectory(prefix="cloudvac-scale-") as tmp:
        root = Path(tmp)
        cdir = root / "cloudvac.d"
        write_config(cdir, root / "state", args)
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None and not loaded.issues, loaded.issues[:3]
        store = Store(loaded.settings.database_url)
        gc.collect()
        rss_before_fill = rss_mb()["current"]
        t0 = time.monotonic()
        projects, filled = fill(loaded.spaces, args.machines, loaded.settings.manager_id,
                                args.job_hours * 3600, args.seed)
        gc.collect()
        rss_after_fill = rss_mb()["current"]
        report["fill"] = {
            "how": "servers put straight into each SimProject (tagged, staggered ages), "
                   "adopted from their tags by the first cycle",
            "seconds": round(time.monotonic() - t0, 2),
            "servers": sum(len(p.servers) for p in projects.values()),
            **filled,
            "rss_mb_before": rss_before_fill, "rss_mb_after": rss_after_fill,
            "sim_rss_mb": round(rss_after_fill - rss_before_fill, 1),
        }
        daemon = build_daemon(cdir, loaded.settings, store,
                              keep_reports=args.warmup + args.cycles + 3, pilots=NullPilots())
        for name, project in projects.items():
            daemon.clouds.use_project(name, project)
        rounds = 1 + args.warmup + args.cycles
        try:
            samples = asyncio.run(drive(daemon, rounds, deadline))
        finally:
            store.close()
        api_calls: dict[str, int] = {}
        for project in projects.values():
            for kind, n in project.calls.items():
                api_calls[kind] = api_calls.get(kind, 0) + n
        report["decode_baseline"] = decode_baseline(projects) if samples[1:] else None

    completed = len(samples) - 1
    report["rounds_completed"] = completed
    per_round = []
    for k in range(completed):
        a, b = samples[k], samples[k + 1]
        per_round.append({
            "cycle": k + 1,
            "kind": "adopt" if k == 0 else "warmup" if k <= args.warmup else "measured",
            "cpu_seconds": round(b["cpu"] - a["cpu"], 3),
            "stages_cpu_s": stage_sums(daemon, k, b["cpu"] - a["cpu"]),
            "gc_seconds": round(b["gc_s"] - a["gc_s"], 4), "gc_collections": b["gc_n"] - a["gc_n"],
            "wall_since_previous_s": round(b["wall"] - a["wall"], 3),
            **round_stats(daemon, k),
            "rss_mb": b["rss"]["current"],
        })
    report["cycles"] = per_round
    measured = [r for r in per_round if r["kind"] == "measured"]
    peak = max([s["rss"]["peak_vmhwm"] for s in samples])
    sim_share = report["fill"]["sim_rss_mb"]
    report["rss_mb"] = {"peak_process": peak, "final_process": samples[-1]["rss"]["current"],
                        "sim_share": sim_share,
                        "peak_manager_estimate": round(peak - sim_share, 1)}
    report["api_calls_total"] = api_calls
    report["failures"] = judge(report, measured, peak - sim_share)
    if completed < rounds:
        report["failures"].append(f"only {completed} of {rounds} full cycles before the "
                                  "deadline")
    errors = sorted({e for r in per_round for e in r["errors"]})
    if errors:
        report["failures"].append(f"cycle errors: {errors[:3]}")
    report["ok"] = not report["failures"]
    report["total_seconds"] = round(time.monotonic() - started, 1)
    return report


def judge(report: dict[str, Any], measured: list[dict[str, Any]],
          manager_rss: float) -> list[str]:
    """The steady figures, the stage split, the ratio to the decode and the goals met;
    returns the failures found."""
    report["meets_rss_goal"] = report["rss_mb"]["peak_process"] <= GOAL_RSS
    report["meets_rss_goal_manager_only"] = manager_rss <= GOAL_RSS
    if not measured:
        report["meets_cpu_goal"] = False
        return ["no steady cycle measured before the deadline"]
    cpu = [r["cpu_seconds"] for r in measured]
    wall = [r["wall_first_start_to_last_end_s"] for r in measured]
    mean = sum(cpu) / len(cpu)
    stages = [r["stages_cpu_s"] for r in measured if r["stages_cpu_s"] is not None]
    decode = report["decode_baseline"]
    ratio = round(mean / decode["cpu_seconds_median"], 2) if decode else None
    report["steady"] = {
        "cycles": len(measured),
        "cpu_seconds_mean": round(mean, 3),
        "cpu_seconds_max": round(max(cpu), 3),
        "stages_cpu_seconds_mean": {name: round(sum(s[name] for s in stages) / len(stages), 4)
                                    for name in (*STAGES, "other")} if stages else None,
        "ratio_to_decode": ratio,
        "gc_seconds_mean": round(sum(r["gc_seconds"] for r in measured) / len(measured), 4),
        "wall_seconds_mean": round(sum(wall) / len(wall), 3),
        "wall_seconds_max": round(max(wall), 3),
        "machines_listed_per_cycle": measured[-1]["listed"],
        "created_total": sum(r["created"] for r in measured),
        "deleted_total": sum(r["deleted"] for r in measured),
    }
    report["meets_cpu_goal"] = mean <= GOAL_CPU or (ratio is not None and ratio <= GOAL_RATIO)
    return []


def summary(report: dict[str, Any]) -> str:
    p, fill_ = report["params"], report["fill"]
    lines = [
        f"cloudvac scale: {p['spaces']} spaces x {p['machines']} machines (sim, zero latency), "
        f"cycle_seconds {p['period']:g}, pilots ~{p['job_hours']:g} h",
        f"  fill         {fill_['servers']} servers put into the sim in {fill_['seconds']} s "
        f"(sim holds ~{fill_['sim_rss_mb']} MB), adopted by cycle 1",
        "  cycle  kind      CPU s   wall s  slowest space s  listed  created deleted  RSS MB",
    ]
    for r in report["cycles"]:
        lines.append(f"  {r['cycle']:>5}  {r['kind']:<8} {r['cpu_seconds']:>6.2f} "
                     f"{r['wall_first_start_to_last_end_s']:>8.2f} "
                     f"{r['space_cycle_seconds_max']:>16.2f} {r['listed']:>7} "
                     f"{r['created']:>8} {r['deleted']:>7} {r['rss_mb']:>7.0f}")
    steady, rss = report.get("steady"), report["rss_mb"]
    if steady:
        decode, ratio = report["decode_baseline"], steady["ratio_to_decode"]
        lines.append(f"  steady       {steady['cpu_seconds_mean']} CPU s per full cycle (max "
                     f"{steady['cpu_seconds_max']}), wall {steady['wall_seconds_mean']} s")
        if steady["stages_cpu_seconds_mean"]:
            lines.append("  stages       " + ", ".join(
                f"{k} {v:.3f}" for k, v in steady["stages_cpu_seconds_mean"].items()))
        if decode:
            lines.append(f"  yardstick    typed decode of {decode['servers']} servers "
                         f"{decode['cpu_seconds_median']} CPU s "
                         f"({decode['us_per_server_median']} us each): ratio {ratio}")
        lines.append(f"  CPU goal     <= {GOAL_CPU:g} s or ratio <= {GOAL_RATIO:g}: "
                     f"{'MET' if report['meets_cpu_goal'] else 'NOT MET'}")
    lines.append(f"  memory       peak RSS {rss['peak_process']} MB (sim's share ~"
                 f"{rss['sim_share']} MB, manager ~{rss['peak_manager_estimate']} MB); goal "
                 f"<= {GOAL_RSS:g} MB: {'MET' if report['meets_rss_goal'] else 'NOT MET'} for the "
                 f"process, {'MET' if report['meets_rss_goal_manager_only'] else 'NOT MET'} "
                 "for the manager alone")
    lines.append(f"  machine      {report['host']['cpus']} CPUs, busy "
                 f"{report['host']['background_busy_cores']} cores before the run; total "
                 f"{report['total_seconds']} s")
    verdict = "OK" if report["ok"] else "FAILED: " + "; ".join(report["failures"])
    lines.append(f"  result       {verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--spaces", type=int, default=100)
    parser.add_argument("--machines", type=int, default=1000, help="per space")
    parser.add_argument("--cycles", type=int, default=5, help="measured steady cycles")
    parser.add_argument("--warmup", type=int, default=1, help="steady cycles not measured")
    parser.add_argument("--period", type=float, default=20.0, help="cycle_seconds")
    parser.add_argument("--job-hours", type=float, default=12.0,
                        help="mean pilot length (sim_job_seconds / 3600)")
    parser.add_argument("--boot-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS.name}, or "
                        f"{SHAPES.name} / {COMPARE.name} with --shapes")
    parser.add_argument("--code", type=Path, help="import cloudvac from this source tree")
    parser.add_argument("--shapes", nargs="+", metavar="SxM",
                        help="one child run per shape, e.g. 100x1000 1000x100 10x10000")
    parser.add_argument("--baseline", type=Path,
                        help="with --shapes: also run each shape with --code BASELINE, "
                             "alternating")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --shapes: runs of each shape (and of the baseline)")
    args = parser.parse_args(argv)
    if min(args.spaces, args.machines, args.cycles, args.repeat) < 1 or args.warmup < 0 \
            or args.period <= 0:
        parser.error("spaces, machines, cycles, repeat >= 1; warmup >= 0; period > 0")
    if args.shapes:
        from benchmarks._scaleruns import parse_shape

        try:
            args.shapes = [parse_shape(s) for s in args.shapes]
        except ValueError as exc:
            parser.error(str(exc))
    elif args.baseline is not None:
        parser.error("--baseline needs --shapes")
    if args.out is None:
        args.out = RESULTS if not args.shapes else COMPARE if args.baseline else SHAPES
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.shapes:
        from benchmarks._scaleruns import run_shapes

        return run_shapes(args)
    return run_benchmark(lambda _: args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
