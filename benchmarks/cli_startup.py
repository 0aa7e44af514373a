"""Benchmark: how long ``cloudvac --help`` and ``cloudvac validate`` take, whole process.

    .venv/bin/python -m benchmarks.cli_startup [--runs 11] [--baseline-ref HEAD | --baseline DIR]

Each command runs as an operator runs it, a new ``python -m cloudvac`` process from start to
exit (interpreter start-up, imports, the work, exit); ``validate`` reads a small
configuration the benchmark writes (one sim space, one machinetype with the Belle II
user_data, rendered and checked against cloud-init's schema as in production).  For every
command: the median, min and max of ``--runs`` runs (after one warm-up) of the wall time
and of the CPU time (user + system, from ``getrusage`` of the children), and the same for
``python -c pass``, the floor no command can go under.  The processes run with their
``.pyc`` files, as an installed package does (the warm-up run writes them).

``--baseline-ref REF`` measures the tree of git REF too (``git archive`` into a temporary
directory: the working tree is not touched), ``--baseline DIR`` a tree already on disk;
then every command runs as current, baseline, current, baseline... so that a machine that
slows down during the run slows both alike, and the report has both and their ratio.

Goal (issue 16): under 0.5 s for ``--help`` and ``validate`` on a small config.  On a busy
machine the wall time includes waiting for a CPU: ``background_busy_cores`` in ``host``
says how busy it was, and the CPU time is the figure that load does not inflate.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, add_baseline_args, host_info, run_benchmark

RESULTS = RESULTS_DIR / "cli_startup.json"
REPO = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 0.5
SMALL_CONFIG = """\
[settings]
state_dir = {state}

[dirac belle2]
format = setups
site_prefix = VCYCLE
setup = Belle-KEK
configuration_servers = dips://dirac.example.org:9135/Configuration/Server
project = Belle

[space small.example]
api = sim
processors_limit = 8
flavor_names = m1.small
site_name = SMALL.eu
squid_proxies = http://squid.small.example:3128

[machinetype small.example belle]
vo = belle
dirac = belle2
user_data = builtin:belle
target_share = 1
"""


#: As an installed package runs: with its compiled ``.pyc`` files (pip writes them at
#: install time; here the warm-up run does, so PYTHONDONTWRITEBYTECODE is dropped).
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "COLUMNS": "80"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs per command")
    add_baseline_args(parser, RESULTS)
    return parser.parse_args(argv)


def timed(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and exit status of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=ENV, check=False, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def export_ref(ref: str, dest: Path) -> Path:
    """The tree of git ``ref`` in ``dest`` (``git archive``; the working tree is left as
    it is)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref],
                             capture_output=True, check=True, timeout=120).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def commands(python: str, config: Path) -> dict[str, list[str]]:
    return {"python -c pass": [python, "-c", "pass"],
            "--help": [python, "-m", "cloudvac", "--help"],
            "validate": [python, "-m", "cloudvac", "validate", "--config-dir", str(config)]}


def measure(trees: dict[str, Path], python: str, config: Path, runs: int) -> dict[str, Any]:
    """Every command on every tree, interleaved, one warm-up each."""
    results: dict[str, Any] = {}
    for name, argv in commands(python, config).items():
        samples: dict[str, dict[str, list[float]]] = {
            tree: {"wall": [], "cpu": []} for tree in trees}
        codes: dict[str, set[int]] = {tree: set() for tree in trees}
        for run in range(runs + 1):
            for tree, path in trees.items():
                wall, cpu, code = timed(argv, path)
                codes[tree].add(code)
                if run:  # the first round warms the file cache and .pyc files
                    samples[tree]["wall"].append(wall)
                    samples[tree]["cpu"].append(cpu)
        results[name] = {tree: {"wall_s": spread(s["wall"]), "cpu_s": spread(s["cpu"]),
                                "exit_codes": sorted(codes[tree])}
                         for tree, s in samples.items()}
        if "baseline" in trees:
            results[name]["ratio_wall_median"] = round(
                results[name]["current"]["wall_s"]["median"]
                / results[name]["baseline"]["wall_s"]["median"], 3)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cloudvac-cli-startup-") as tmp:
        work = Path(tmp)
        config = work / "cloudvac.d"
        config.mkdir()
        (config / "10-small.conf").write_text(SMALL_CONFIG.format(state=work / "state"))
        trees = {"current": REPO}
        if args.baseline_ref:
            trees["baseline"] = export_ref(args.baseline_ref, work / "baseline")
        elif args.baseline:
            trees["baseline"] = args.baseline.resolve()
        results = measure(trees, args.python, config, args.runs)
        shutil.rmtree(work / "state", ignore_errors=True)
    ok = all(code == [0] for r in results.values() for t in trees
             for code in [r[t]["exit_codes"]])
    goal_met = {kind: all(results[c]["current"][f"{kind}_s"]["median"] < GOAL_SECONDS
                          for c in ("--help", "validate")) for kind in ("wall", "cpu")}
    return {"benchmark": "cli_startup", "ok": ok, "goal_seconds": GOAL_SECONDS,
            "goal_met_wall_median": goal_met["wall"], "goal_met_cpu_median": goal_met["cpu"],
            "runs": args.runs,
            "baseline": args.baseline_ref or (str(args.baseline) if args.baseline else None),
            "host": host_info(), "results": results}


def summary(report: dict[str, Any]) -> str:
    lines = [f"cloudvac start-up, median of {report['runs']} runs "
             f"(goal < {report['goal_seconds']} s for --help and validate; "
             f"machine busy: {report['host']['background_busy_cores']} cores)"]

    def fmt(r: dict[str, Any]) -> str:
        return f"wall {r['wall_s']['median']:.3f} s  cpu {r['cpu_s']['median']:.3f} s"

    for name, result in report["results"].items():
        line = f"  {name:15} current: {fmt(result['current'])}"
        if "baseline" in result:
            line += f"   baseline: {fmt(result['baseline'])}   " \
                    f"ratio {result['ratio_wall_median']}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
