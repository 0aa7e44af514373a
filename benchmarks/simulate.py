"""Benchmark: ``cloudvac simulate steady-shares`` (12 simulated hours), whole process.

    .venv/bin/python -m benchmarks.simulate [--runs 2] [--hours 12]
        [--baseline-ref HEAD | --baseline DIR] [--scenario steady-shares] [--out FILE]

Each run is the command an operator types, a new ``python -m cloudvac simulate SCENARIO
--out DIR`` process from start to exit (imports, the simulation, CSV, JSON and the PNG
plot): its wall time and its CPU time (user + system of the children, ``getrusage``).
``--hours`` runs a copy of the scenario with that many simulated hours instead of its own.

``--baseline-ref REF`` measures the tree of git REF too (``git archive`` into a temporary
directory; the working tree is not touched), ``--baseline DIR`` a tree already on disk;
runs then alternate current, baseline, current, baseline... so that a machine whose speed
drifts slows both alike, and the report has each pair's ratio and the ratio of medians.

Repeatability: every run's CSV and JSON are hashed (SHA-256); ``repeatable`` says whether
all runs of a tree wrote the same bytes (the same seed, and each run under another
``PYTHONHASHSEED``, so set order cannot hide).  Goal (issue 19): 12 simulated hours of
``steady-shares`` in at most 15 s wall on the 2-core machine, repeatable bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    RESULTS_DIR,
    add_baseline_args,
    host_info,
    run_benchmark,
    system_cpu,
)
from benchmarks.cli_startup import export_ref

RESULTS = RESULTS_DIR / "simulate.json"
REPO = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 15.0
SCENARIOS = REPO / "cloudvac" / "examples" / "scenarios"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs per tree")
    parser.add_argument("--scenario", default="steady-shares",
                        help="a shipped scenario's name or a scenario file")
    parser.add_argument("--hours", type=float, default=None,
                        help="simulated hours (default: the scenario's own)")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on one run, s")
    add_baseline_args(parser, RESULTS)
    return parser.parse_args(argv)


def scenario_file(args: argparse.Namespace, work: Path) -> Path:
    """The scenario to run, as a file of its own (with ``--hours`` written into it)."""
    given = Path(args.scenario)
    source = given if given.is_file() else SCENARIOS / f"{args.scenario}.conf"
    text = source.read_text()
    if args.hours is not None:
        text, found = re.subn(r"(?m)^hours\s*=.*$", f"hours = {args.hours:g}", text, count=1)
        if not found:
            raise SystemExit(f"{source}: no 'hours =' line to replace")
    path = work / source.name
    path.write_text(text)
    return path


def one_run(args: argparse.Namespace, tree: Path, scenario: Path, out: Path,
            hash_seed: int) -> dict[str, Any]:
    """One ``cloudvac simulate`` process in ``tree``: wall, CPU, exit code, output hashes."""
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    python, timeout = args.python, args.timeout
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, start = system_cpu(), time.perf_counter()
    try:
        done = subprocess.run([python, "-m", "cloudvac", "simulate", str(scenario), "--out",
                               str(out)], cwd=tree, env=env, capture_output=True,
                              check=False, timeout=timeout)
        code, tail = done.returncode, done.stderr.decode(errors="replace")[-2000:]
    except subprocess.TimeoutExpired:
        code, tail = -1, f"timed out after {timeout:g} s"
    wall = time.perf_counter() - start
    busy1, after = system_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    hashes = {suffix: hashlib.sha256(path.read_bytes()).hexdigest()
              for suffix in ("csv", "json")
              if (path := out / f"{scenario.stem}.{suffix}").is_file()}
    busy = (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]) * (os.cpu_count() or 1)
    run = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "exit_code": code,
           "machine_busy_cores": round(busy, 2), "sha256": hashes}
    if code != 0:
        run["stderr_tail"] = tail
    return run


def tree_info(tree: Path) -> dict[str, Any]:
    """The commit a tree is at and whether its files differ from it (None: not git)."""
    def git(*argv: str) -> str | None:
        done = subprocess.run(["git", "-C", str(tree), *argv], capture_output=True,
                              text=True, check=False, timeout=60)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"path": str(tree), "commit": commit,
            "modified_files": None if changes is None else len(changes.splitlines())}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def measure(trees: dict[str, Path], args: argparse.Namespace, scenario: Path,
            work: Path) -> dict[str, Any]:
    """``--runs`` runs of every tree, alternating; per tree the runs and their spread."""
    runs: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
    for number in range(args.runs):
        for tree, path in trees.items():
            out = work / f"{tree}-{number}"
            runs[tree].append(one_run(args, path, scenario, out, number))
            print(f"  {tree} run {number + 1}: {runs[tree][-1]['wall_s']:.1f} s wall",
                  file=sys.stderr)
    results: dict[str, Any] = {}
    for tree, done in runs.items():
        outputs = {tuple(sorted(r["sha256"].items())) for r in done}
        results[tree] = {"runs": done, "wall_s": spread([r["wall_s"] for r in done]),
                         "cpu_s": spread([r["cpu_s"] for r in done]),
                         "ok": all(r["exit_code"] == 0 for r in done),
                         "repeatable": len(outputs) == 1 and all(
                             len(r["sha256"]) == 2 for r in done)}
    if "baseline" in results:
        pairs = list(zip(runs["current"], runs["baseline"], strict=True))
        results["ratio"] = {
            kind: {"pairs": [round(c[f"{kind}_s"] / max(b[f"{kind}_s"], 1e-9), 3)
                             for c, b in pairs],
                   "medians": round(results["current"][f"{kind}_s"]["median"]
                                    / max(results["baseline"][f"{kind}_s"]["median"], 1e-9),
                                    3)}
            for kind in ("wall", "cpu")}
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    with tempfile.TemporaryDirectory(prefix="cloudvac-bench-simulate-") as tmp:
        work = Path(tmp)
        scenario = scenario_file(args, work)
        trees = {"current": REPO}
        if args.baseline_ref:
            trees["baseline"] = export_ref(args.baseline_ref, work / "baseline")
        elif args.baseline:
            trees["baseline"] = args.baseline.resolve()
        info = {name: tree_info(path) for name, path in trees.items()}
        if args.baseline_ref:  # an export: the ref's commit, no checkout of its own
            info["baseline"].update(path=None, commit=args.baseline_ref, modified_files=0)
        results = measure(trees, args, scenario, work)
        hours = re.search(r"(?m)^hours\s*=\s*(\S+)", scenario.read_text())
    current = results["current"]
    ok = all(r["ok"] for tree, r in results.items() if tree in trees) and current["repeatable"]
    return {"benchmark": "simulate", "ok": ok, "scenario": args.scenario,
            "simulated_hours": float(hours.group(1)) if hours else None,
            "goal_seconds": GOAL_SECONDS,
            "goal_met_wall_median": current["wall_s"]["median"] <= GOAL_SECONDS,
            "runs": args.runs,
            "baseline": args.baseline_ref or (str(args.baseline) if args.baseline else None),
            "trees": info,
            "host": host, "results": results}


def summary(report: dict[str, Any]) -> str:
    results = report["results"]
    lines = [f"cloudvac simulate {report['scenario']} ({report['simulated_hours']:g} h), "
             f"median of {report['runs']} runs (goal <= {report['goal_seconds']:g} s wall; "
             f"machine busy before: {report['host']['background_busy_cores']} cores)"]
    for tree in ("current", "baseline"):
        if tree in results:
            r = results[tree]
            lines.append(f"  {tree:9} wall {r['wall_s']['median']:.2f} s  cpu "
                         f"{r['cpu_s']['median']:.2f} s  repeatable {r['repeatable']}")
    if "ratio" in results:
        ratio = results["ratio"]
        lines.append(f"  current/baseline wall {ratio['wall']['medians']} "
                     f"(pairs {ratio['wall']['pairs']}), cpu {ratio['cpu']['medians']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
