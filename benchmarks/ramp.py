"""Benchmark: how many cycles an empty 1,000-core space takes to fill.

    .venv/bin/python -m benchmarks.ramp [--processors 1000] [--burst 400] [--period 3]
        [--no-default]

What it does, in one process, bounded in time:

1. writes a config with one empty sim space: ``processors_limit = --processors``, sim quota
   the same, flavor m1.small (1 vCPU), ``sim_boot_seconds = --boot-seconds``, long pilots,
   and ``creation_burst_processors = --burst``;
2. runs the real ``Daemon`` until the space holds ``--processors`` processors (every
   create issued and accepted by the cloud) and one more cycle, or ``--max-cycles``;
   every create goes through the normal path (durable intent, create call, store write);
3. reports per cycle: processors held (starting + running), processors running, creates,
   the cycle's wall time, and the cycle at which the space was full (all processors
   created) and fully running.

Unless ``--no-default`` is given, it repeats the run without ``creation_burst_processors``
(the default burst: 10 % of ``processors_limit`` per cycle) for comparison.

Goal (from the issue): full within 3 cycles with a configured burst.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark

RESULTS = RESULTS_DIR / "ramp.json"
SPACE = "ramp.bench"
MACHINETYPE = "pilot"


def write_config(cdir: Path, state: Path, args: argparse.Namespace, burst: int | None) -> None:
    cdir.mkdir(parents=True)
    burst_line = f"creation_burst_processors = {burst}\n" if burst else ""
    (cdir / "10-ramp.conf").write_text(f"""\
[settings]
state_dir = {state}
cycle_seconds = {args.period}
space_timeout_seconds = 120

[space {SPACE}]
api = sim
processors_limit = {args.processors}
{burst_line}flavor_names = m1.small
sim_quota_processors = {args.processors}
sim_boot_seconds = {args.boot_seconds}
sim_seed = 7

[machinetype {SPACE} {MACHINETYPE}]
target_share = 1
sim_job_seconds = 36000
sim_heartbeat_period_seconds = 600
""")


async def drive(daemon: Any, processors: int, max_cycles: int) -> None:
    runner = asyncio.create_task(daemon.run(), name="daemon")
    try:
        while not runner.done():
            await asyncio.sleep(0.02)
            state = daemon.spaces.get(SPACE)
            if state is None or not state.reports:
                continue
            full_at = next((i for i, r in enumerate(state.reports)
                            if r.status.get(MACHINETYPE) is not None
                            and r.status[MACHINETYPE].processors
                            - r.status[MACHINETYPE].starting_processors >= processors), None)
            if (full_at is not None and len(state.reports) > full_at) \
                    or len(state.reports) >= max_cycles:
                break
    finally:
        daemon.stop()
        await asyncio.wait_for(runner, 150)


def one_run(args: argparse.Namespace, burst: int | None) -> dict[str, Any]:
    from cloudvac.config import load_config_dir
    from cloudvac.service import build_daemon
    from cloudvac.store import Store

    with tempfile.TemporaryDirectory(prefix="cloudvac-ramp-") as tmp:
        root = Path(tmp)
        cdir = root / "cloudvac.d"
        write_config(cdir, root / "state", args, burst)
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None and not loaded.issues, loaded.issues[:3]
        store = Store(loaded.settings.database_url)
        daemon = build_daemon(cdir, loaded.settings, store, keep_reports=1000)
        began = time.monotonic()
        try:
            asyncio.run(drive(daemon, args.processors, args.max_cycles))
        finally:
            store.close()
        wall = time.monotonic() - began
        project = daemon.clouds.project(SPACE)
        used = project.used_processors if project is not None else None

    reports = daemon.spaces[SPACE].reports
    cycles: list[dict[str, Any]] = []
    for i, r in enumerate(reports, 1):
        st = r.status.get(MACHINETYPE)
        held = st.processors if st else 0
        starting = st.starting_processors if st else 0
        cycles.append({
            "cycle": i, "ok": r.ok, "error": r.error,
            "processors_held_at_start": held - r.created,  # status counts this cycle's creates
            "processors_held_after": held,
            "processors_running_at_start": held - starting,
            "created": r.created, "create_failures": r.create_failures,
            "cycle_wall_seconds": round(r.duration, 3),
            "blocked": st.blocked if st else "",
        })
    full = next((c["cycle"] for c in cycles if c["processors_held_after"] >= args.processors),
                None)
    running = next((c["cycle"] for c in cycles
                    if c["processors_running_at_start"] >= args.processors), None)
    return {
        "burst": burst, "burst_effective": burst or max(1, -(-args.processors // 10)),
        "cycles": cycles,
        "full_after_cycle": full,
        "all_running_seen_at_cycle": running,
        "sim_used_processors_at_end": used,
        "meets_goal": full is not None and full <= 3 if burst else None,
        "run_seconds": round(wall, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = [one_run(args, args.burst)]
    if not args.no_default:
        runs.append(one_run(args, None))
    return {
        "benchmark": "ramp",
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "host": host_info(),
        "goal": "full within 3 cycles with a configured creation_burst_processors",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": runs,
        "ok": bool(runs[0]["meets_goal"]),
    }


def summary(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [f"cloudvac ramp: empty space, processors_limit = quota = {p['processors']}, "
             f"m1.small (1 vCPU), boot ~{p['boot_seconds']:g} s, cycle_seconds {p['period']:g}"]
    for run_ in report["runs"]:
        label = (f"burst {run_['burst']}" if run_["burst"]
                 else f"default burst ({run_['burst_effective']})")
        lines.append(f"  [{label}]  cycle: held after / running at start / created / wall s")
        for c in run_["cycles"]:
            lines.append(f"    {c['cycle']:>3}: {c['processors_held_after']:>5} / "
                         f"{c['processors_running_at_start']:>5} / {c['created']:>4} / "
                         f"{c['cycle_wall_seconds']:>6.2f}"
                         + (f"  ERROR {c['error']}" if not c["ok"] else ""))
        verdict = "" if run_["meets_goal"] is None else \
            f"; goal <= 3: {'MET' if run_['meets_goal'] else 'NOT MET'}"
        lines.append(f"    full after cycle {run_['full_after_cycle']}, all running seen at "
                     f"cycle {run_['all_running_seen_at_cycle']}{verdict}")
    lines.append(f"  result       {'OK' if report['ok'] else 'GOAL NOT MET'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ramp",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--processors", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=400, help="creation_burst_processors")
    parser.add_argument("--period", type=float, default=3.0, help="cycle_seconds")
    parser.add_argument("--boot-seconds", type=float, default=1.0)
    parser.add_argument("--max-cycles", type=int, default=15)
    parser.add_argument("--no-default", action="store_true",
                        help="skip the comparison run with the default burst")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.processors < 1 or args.burst < 1 or args.period <= 0 or args.max_cycles < 1:
        parser.error("processors, burst, max-cycles >= 1; period > 0")
    if args.max_cycles * args.period > 300:
        parser.error("keep max-cycles x period <= 300 s")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
