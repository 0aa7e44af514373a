"""``scale --shapes``: one child process per run, several shapes, current against a baseline.

Each run is ``python -m benchmarks.scale`` in a new process (its RSS and its garbage are
its own), with the parent's options and its shape; with ``--baseline DIR`` every shape
runs as current, baseline, current, baseline... (``--repeat`` pairs), the baseline with
``--code DIR`` (the same harness, the other tree's ``cloudvac``), so that a machine whose
speed drifts during the call moves both sides of each pair alike.  Written: every child's
report, and per pair the ratio current / baseline of the steady CPU per full cycle and of
each stage.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import host_info, write_report

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 1200.0  # a child's own deadline is 540 s; a loaded machine starts slowly


def parse_shape(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not found or min(int(found[1]), int(found[2])) < 1:
        raise ValueError(f"shape {text!r} is not SPACESxMACHINES (e.g. 100x1000)")
    return int(found[1]), int(found[2])


def _child(args: argparse.Namespace, shape: tuple[int, int], code: Path | None,
           out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.scale", "--spaces", str(shape[0]),
               "--machines", str(shape[1]), "--cycles", str(args.cycles),
               "--warmup", str(args.warmup), "--period", str(args.period),
               "--job-hours", str(args.job_hours), "--boot-seconds", str(args.boot_seconds),
               "--seed", str(args.seed), "--log-level", args.log_level, "--out", str(out)]
    if code is not None:
        command += ["--code", str(code)]
    begun = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, check=False)
    if not out.is_file():
        return {"ok": False, "failures": [f"no report (exit {done.returncode}): "
                                          f"{done.stderr[-1500:]}"]}
    report: dict[str, Any] = json.loads(out.read_text())
    report["child_seconds"] = round(time.monotonic() - begun, 1)
    return report


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    steady = report.get("steady") or {}
    return {"cpu": steady.get("cpu_seconds_mean"),
            "stages": steady.get("stages_cpu_seconds_mean"),
            "ratio_to_decode": steady.get("ratio_to_decode"),
            "manager_rss_mb": (report.get("rss_mb") or {}).get("peak_manager_estimate")}


def _pair(shape: tuple[int, int], k: int, current: dict[str, Any],
          baseline: dict[str, Any]) -> dict[str, Any]:
    a, b = _figures(current), _figures(baseline)
    pair: dict[str, Any] = {"shape": f"{shape[0]}x{shape[1]}", "pair": k + 1,
                            "current": a, "baseline": b}
    if a["cpu"] and b["cpu"]:
        pair["cpu_ratio_current_to_baseline"] = round(a["cpu"] / b["cpu"], 3)
    if a["stages"] and b["stages"]:
        pair["stage_ratios"] = {name: round(v / b["stages"][name], 3)
                                for name, v in a["stages"].items() if b["stages"].get(name)}
    return pair


def run_shapes(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "benchmark": "scale_runs", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_info(), "current": str(args.code or ROOT),
        "baseline": None if args.baseline is None else str(args.baseline),
        "params": {k: v for k, v in vars(args).items()
                   if k in ("cycles", "warmup", "period", "job_hours", "boot_seconds", "seed",
                            "repeat")},
        "runs": [], "pairs": []}
    builds = [("current", args.code)] + ([("baseline", args.baseline)] if args.baseline else [])
    with tempfile.TemporaryDirectory(prefix="cloudvac-scale-runs-") as tmp:
        for shape in args.shapes:
            for k in range(args.repeat):
                done: dict[str, dict[str, Any]] = {}
                for build, code in builds:
                    out = Path(tmp) / f"{shape[0]}x{shape[1]}-{build}-{k}.json"
                    done[build] = _child(args, shape, code, out)
                    report["runs"].append({"shape": f"{shape[0]}x{shape[1]}", "build": build,
                                           "repeat": k + 1, "report": done[build]})
                    _say(shape, build, k, done[build])
                if args.baseline is not None:
                    report["pairs"].append(_pair(shape, k, done["current"], done["baseline"]))
    report["by_shape"] = _by_shape(report)
    report["ok"] = all(r["report"].get("ok") for r in report["runs"])
    write_report(report, args.out)
    print(f"  written to   {args.out}")
    return 0 if report["ok"] else 1


def _by_shape(report: dict[str, Any]) -> dict[str, Any]:
    """Medians per shape and build: CPU per full cycle, ratio to the decode, pair ratios."""
    found: dict[str, Any] = {}
    for run in report["runs"]:
        fig = _figures(run["report"])
        row = found.setdefault(run["shape"], {}).setdefault(run["build"], {"cpu": [],
                                                                          "ratio": []})
        if fig["cpu"] is not None:
            row["cpu"].append(fig["cpu"])
            row["ratio"].append(fig["ratio_to_decode"])
    for shape, builds in found.items():
        for build, row in builds.items():
            builds[build] = {"cpu_seconds_per_full_cycle": row["cpu"],
                             "ratio_to_decode": row["ratio"],
                             "cpu_median": statistics.median(row["cpu"]) if row["cpu"] else None}
        ratios = [p["cpu_ratio_current_to_baseline"] for p in report["pairs"]
                  if p["shape"] == shape and "cpu_ratio_current_to_baseline" in p]
        if ratios:
            builds["cpu_ratio_current_to_baseline"] = ratios
    return found


def _say(shape: tuple[int, int], build: str, k: int, report: dict[str, Any]) -> None:
    fig = _figures(report)
    print(f"  {shape[0]:>5} x {shape[1]:<6} {build:<9} #{k + 1}: CPU per full cycle "
          f"{fig['cpu']} s, ratio to decode {fig['ratio_to_decode']}, manager RSS "
          f"{fig['manager_rss_mb']} MB, stages {fig['stages']}"
          + ("" if report.get("ok") else f"  FAILED: {report.get('failures')}"), flush=True)
