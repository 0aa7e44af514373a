"""Benchmark: one space whose every API call takes 10 s must not delay the other spaces.

    .venv/bin/python -m benchmarks.isolation [--normal 20] [--period 3] [--timeout 30]
        [--latency 10] [--seconds 60] [--slow-mode both|sleep|thread] [--slow-spaces 1]

What it does, in one process, bounded in time (about 2 x (--seconds + --timeout) at most):

1. writes a config directory: ``--normal`` ordinary sim spaces (zero API latency, 20 cores
   each, filled in the first cycle and then steady) and ``--slow-spaces`` slow ones, with
   ``cycle_seconds = --period`` and ``space_timeout_seconds = --timeout`` (> latency);
2. runs the real ``Daemon`` (``daemon.run()``) for ``--seconds``, then stops it (SIGTERM
   semantics: cycles in progress finish within their deadline);
3. for each normal space, computes the measured cycle period from consecutive
   ``CycleReport.started`` times, and checks that every period is within 10 % of
   ``cycle_seconds``; for the slow space, reports its cycles, outcomes and durations.

Two ways of being slow (``--slow-mode``):

* ``sleep``: the sim's own ``sim_api_latency_seconds = --latency``; each call awaits an
  ``asyncio.sleep`` (a cloud adapter doing non-blocking I/O);
* ``thread``: each call of the slow space first blocks a worker thread of the default
  executor for ``--latency`` seconds (``asyncio.to_thread(time.sleep, ...)``, at most
  ``api_concurrency`` at a time), which is exactly how ``OpenStackCloud._call`` waits for
  a slow Nova (a blocking keystoneauth request inside ``asyncio.to_thread``).  The store
  calls of *every* space share that same executor, so this mode tests whether a slow
  OpenStack cloud can starve the others.

Goal (from the issue): the normal spaces' period stays within 10 % of ``cycle_seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark

RESULTS = RESULTS_DIR / "isolation.json"
TOLERANCE = 0.10


def normal_name(i: int) -> str:
    return f"n{i:02d}.bench"


def slow_name(i: int) -> str:
    return f"slow{i}.bench"


SPACE = """\
[space {name}]
api = sim
processors_limit = 20
creation_burst_processors = 20
flavor_names = m1.small
sim_quota_processors = 20
sim_boot_seconds = 1
sim_api_latency_seconds = {latency}
sim_seed = {seed}

[machinetype {name} pilot]
target_share = 1
sim_job_seconds = 36000
sim_heartbeat_period_seconds = 60
"""


def write_config(cdir: Path, state: Path, args: argparse.Namespace, sim_latency: float) -> None:
    cdir.mkdir(parents=True)
    (cdir / "00-settings.conf").write_text(
        f"[settings]\nstate_dir = {state}\ncycle_seconds = {args.period}\n"
        f"space_timeout_seconds = {args.timeout}\n")
    for i in range(args.normal):
        (cdir / f"10-{normal_name(i)}.conf").write_text(
            SPACE.format(name=normal_name(i), latency=0, seed=i + 1))
    for i in range(args.slow_spaces):
        (cdir / f"20-{slow_name(i)}.conf").write_text(
            SPACE.format(name=slow_name(i), latency=sim_latency, seed=100 + i))


class BlockingCloud:
    """Wraps a sim cloud: every call first blocks a default-executor thread for ``latency``
    seconds, at most ``concurrency`` at a time, as ``OpenStackCloud._call`` does."""

    def __init__(self, inner: Any, latency: float, concurrency: int) -> None:
        self.inner, self.latency = inner, latency
        self.sem = asyncio.Semaphore(concurrency)

    async def _block(self) -> None:
        async with self.sem:
            await asyncio.to_thread(time.sleep, self.latency)

    async def list_machines(self) -> Sequence[Any]:
        await self._block()
        return list(await self.inner.list_machines())

    async def create_machine(self, spec: Any) -> str:
        await self._block()
        return str(await self.inner.create_machine(spec))

    async def delete_machine(self, cloud_id: str) -> None:
        await self._block()
        await self.inner.delete_machine(cloud_id)

    async def limits(self) -> Any:
        await self._block()
        return await self.inner.limits()

    async def flavor(self, names: Sequence[str], lo: int, hi: int | None) -> Any:
        await self._block()
        return await self.inner.flavor(names, lo, hi)

    async def close(self) -> None:
        await self.inner.close()


async def drive(daemon: Any, seconds: float, stop_timeout: float) -> float:
    runner = asyncio.create_task(daemon.run(), name="daemon")
    await asyncio.sleep(seconds)
    daemon.stop()
    began = time.monotonic()
    await asyncio.wait_for(runner, stop_timeout)
    return time.monotonic() - began


def one_run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from cloudvac.config import load_config_dir
    from cloudvac.service import build_daemon
    from cloudvac.store import Store

    with tempfile.TemporaryDirectory(prefix="cloudvac-isolation-") as tmp:
        root = Path(tmp)
        cdir = root / "cloudvac.d"
        write_config(cdir, root / "state", args, args.latency if mode == "sleep" else 0.0)
        loaded = load_config_dir(cdir)
        settings = loaded.settings
        assert settings is not None and not loaded.issues, loaded.issues[:3]
        store = Store(settings.database_url)
        daemon = build_daemon(cdir, settings, store, keep_reports=10_000)
        if mode == "thread":
            real_get = daemon.clouds.get
            wrappers: dict[int, BlockingCloud] = {}

            def get(space: Any, settings: Any) -> Any:
                cloud = real_get(space, settings)
                if not space.name.startswith("slow"):
                    return cloud
                if id(cloud) not in wrappers:  # keep identity: the cycle keeps its caches
                    wrappers[id(cloud)] = BlockingCloud(cloud, args.latency,
                                                        settings.api_concurrency)
                return wrappers[id(cloud)]

            daemon.clouds.get = get  # type: ignore[method-assign]
        started = time.monotonic()
        try:
            stop_seconds = asyncio.run(drive(daemon, args.seconds, args.timeout + 30))
        finally:
            store.close()
        wall = time.monotonic() - started

    period = args.period
    normal: dict[str, Any] = {}
    worst = 0.0
    for i in range(args.normal):
        reports = daemon.spaces[normal_name(i)].reports
        starts = [r.started for r in reports]
        periods = [b - a for a, b in itertools.pairwise(starts)]
        durations = [r.duration for r in reports]
        if periods:
            dev = max(abs(p - period) for p in periods) / period
            worst = max(worst, dev)
        normal[normal_name(i)] = {
            "cycles": len(reports),
            "ok": sum(r.ok for r in reports),
            "period_mean": round(statistics.fmean(periods), 4) if periods else None,
            "period_min": round(min(periods), 4) if periods else None,
            "period_max": round(max(periods), 4) if periods else None,
            "max_deviation_percent": round(100 * dev, 2) if periods else None,
            "cycle_seconds_max": round(max(durations), 4) if durations else None,
            "created": sum(r.created for r in reports),
        }
    slow: dict[str, Any] = {}
    for i in range(args.slow_spaces):
        reports = daemon.spaces[slow_name(i)].reports
        starts = [r.started for r in reports]
        slow[slow_name(i)] = {
            "cycles": len(reports),
            "ok": sum(r.ok for r in reports),
            "timeouts": sum("space_timeout_seconds" in r.error for r in reports),
            "other_errors": sorted({r.error for r in reports
                                    if not r.ok and "space_timeout_seconds" not in r.error}),
            "durations": [round(r.duration, 2) for r in reports],
            "periods": [round(b - a, 2) for a, b in itertools.pairwise(starts)],
            "created": sum(r.created for r in reports),
            "listed_last": reports[-1].listed if reports else None,
        }
    all_periods = [v for s in normal.values() for v in (s["period_mean"],) if v is not None]
    return {
        "mode": mode,
        "normal_spaces": normal,
        "normal_summary": {
            "period_mean_of_means": round(statistics.fmean(all_periods), 4)
            if all_periods else None,
            "period_max": max((s["period_max"] for s in normal.values()
                               if s["period_max"] is not None), default=None),
            "period_min": min((s["period_min"] for s in normal.values()
                               if s["period_min"] is not None), default=None),
            "worst_deviation_percent": round(100 * worst, 2),
            "cycles_per_space_min": min(s["cycles"] for s in normal.values()),
            "failed_cycles": sum(s["cycles"] - s["ok"] for s in normal.values()),
        },
        "slow_spaces": slow,
        "meets_goal": worst <= TOLERANCE and all(s["cycles"] > 1 and s["ok"] == s["cycles"]
                                                 for s in normal.values()),
        "run_seconds": round(wall, 1),
        "stop_seconds": round(stop_seconds, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = ["sleep", "thread"] if args.slow_mode == "both" else [args.slow_mode]
    report: dict[str, Any] = {
        "benchmark": "isolation",
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "host": host_info(),
        "goal": f"normal spaces' period within {TOLERANCE:.0%} of cycle_seconds",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [one_run(args, mode) for mode in modes],
    }
    report["ok"] = all(r["meets_goal"] for r in report["runs"])
    return report


def summary(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [f"cloudvac isolation: {p['normal']} normal spaces + {p['slow_spaces']} slow "
             f"(every API call {p['latency']:g} s), cycle_seconds {p['period']:g}, "
             f"space_timeout_seconds {p['timeout']:g}, {p['seconds']:g} s per run"]
    for run_ in report["runs"]:
        s = run_["normal_summary"]
        lines.append(
            f"  [{run_['mode']}] normal: period mean {s['period_mean_of_means']} s, min "
            f"{s['period_min']}, max {s['period_max']} (worst deviation "
            f"{s['worst_deviation_percent']} %), >= {s['cycles_per_space_min']} cycles each, "
            f"{s['failed_cycles']} failed: goal {'MET' if run_['meets_goal'] else 'NOT MET'}")
        for name, slow in run_["slow_spaces"].items():
            lines.append(
                f"  [{run_['mode']}] {name}: {slow['cycles']} cycles, {slow['ok']} ok, "
                f"{slow['timeouts']} timed out, durations {slow['durations'][:8]}"
                f"{' ...' if len(slow['durations']) > 8 else ''}, created {slow['created']}")
        lines.append(f"  [{run_['mode']}] daemon stopped in {run_['stop_seconds']} s")
    lines.append(f"  machine      {report['host']['cpus']} CPUs, busy "
                 f"{report['host']['background_busy_cores']} cores before the run")
    lines.append(f"  result       {'OK' if report['ok'] else 'GOAL NOT MET'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.isolation",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--normal", type=int, default=20, help="normal spaces")
    parser.add_argument("--slow-spaces", type=int, default=1)
    parser.add_argument("--latency", type=float, default=10.0,
                        help="seconds every API call of a slow space takes")
    parser.add_argument("--period", type=float, default=3.0, help="cycle_seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="space_timeout_seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--slow-mode", choices=["both", "sleep", "thread"], default="both")
    parser.add_argument("--log-level", default="CRITICAL")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.normal < 1 or args.slow_spaces < 0 or args.period <= 0 or args.seconds <= 0:
        parser.error("normal >= 1, slow-spaces >= 0, period and seconds > 0")
    if args.timeout <= args.latency:
        parser.error("--timeout must be larger than --latency (the issue's set-up)")
    if args.seconds > 240 or args.timeout > 120:
        parser.error("keep --seconds <= 240 and --timeout <= 120 (bounded run)")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
