"""Small helpers shared by the engine benchmarks (scale, isolation, ramp, api_economy)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def host_info() -> dict[str, Any]:
    """CPUs, Python, platform, and how busy the machine was for 1 s before the run."""
    busy0 = system_cpu()
    time.sleep(1.0)
    busy1 = system_cpu()
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
            "background_busy_cores": round((busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1])
                                           * (os.cpu_count() or 1), 2)}


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return float(total - idle), float(total)


def process_cpu() -> float:
    """User + system CPU seconds of this process, all its threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> dict[str, float]:
    """Current RSS and its peak (VmHWM) from /proc, and ru_maxrss, in MB."""
    values: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    values["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"current": round(values.get("VmRSS", 0.0), 1),
            "peak_vmhwm": round(values.get("VmHWM", 0.0), 1),
            "peak_ru_maxrss": round(values["ru_maxrss"], 1)}


def add_baseline_args(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options of a benchmark that times whole ``cloudvac`` processes of this tree
    against a baseline tree (alternating runs): ``--python``, ``--baseline-ref`` or
    ``--baseline``, ``--out`` (default ``results``) and ``--log-level``."""
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter with cloudvac's dependencies (default: this one)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--baseline-ref", help="git ref to compare with (e.g. HEAD)")
    base.add_argument("--baseline", type=Path, help="source tree to compare with")
    parser.add_argument("--out", type=Path, default=results)
    parser.add_argument("--log-level", default="WARNING")


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")


def quiet_logging(level: str = "WARNING") -> None:
    """The daemon logs every event at INFO; a benchmark prints only its summary."""
    import logging

    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(level.upper())


def run_benchmark(parse_args: Callable[[list[str] | None], argparse.Namespace],
                  run: Callable[[argparse.Namespace], dict[str, Any]],
                  summary: Callable[[dict[str, Any]], str],
                  argv: list[str] | None = None) -> int:
    """The common ``main``: parse, run, write the JSON report, print the summary; exit
    status 1 when the report is not ``ok``."""
    args = parse_args(argv)
    quiet_logging(args.log_level)
    report = run(args)
    write_report(report, args.out)
    print(summary(report))
    print(f"  written to   {args.out}")
    return 0 if report["ok"] else 1
