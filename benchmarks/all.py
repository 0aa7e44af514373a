"""Every benchmark in a small, bounded configuration (``make bench``): 8 minutes (485 s,
all 11) on the 2-core machine under a full test run, each one's JSON in ``--out``
(default ``results/small/``, beside the full runs' files in ``results/``, which it never
overwrites).

    .venv/bin/python -m benchmarks.all [--out DIR] [--only NAME ...] [--skip NAME ...]

Each benchmark runs as its own command (``python -m benchmarks.NAME ... --out
DIR/NAME.json``), its output in ``DIR/NAME.log``, killed after its budget.  One that
needs what this machine lacks is skipped and says why: ``faults`` the real Nova of
``tests/oracle`` (``make oracle``), ``ha_postgres`` a PostgreSQL server (``make
system-deps``).  ``DIR/bench.json`` lists every benchmark with its exit status, wall
time and JSON file; the exit status is 1 if any that ran failed.  The figures of a small
configuration are checks that each benchmark runs, not the figures of
``benchmarks/README.md`` (whose commands are there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import RESULTS_DIR

REPO = Path(__file__).resolve().parent.parent


def _oracle() -> str | None:
    ready = (REPO / ".venv-oracle" / "bin" / "python").exists()
    return None if ready else "no .venv-oracle (make oracle): the real Nova is needed"


def _postgres() -> str | None:
    from tests.postgres import find_bindir

    return None if find_bindir() else "no PostgreSQL server (make system-deps)"


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    budget: float
    """Seconds before it is killed."""
    needs: Callable[[], str | None] | None = None


BENCHES = (
    Bench("cli_startup", ("--runs", "5"), 240),
    Bench("simulate", ("--runs", "1", "--hours", "2"), 300),
    Bench("scale", ("--spaces", "10", "--machines", "1000", "--cycles", "2", "--period", "5"),
          420),
    Bench("ramp", ("--processors", "200", "--burst", "80", "--max-cycles", "6",
                   "--no-default"), 240),
    Bench("isolation", ("--normal", "8", "--latency", "4", "--timeout", "10",
                        "--seconds", "25", "--slow-mode", "both"), 300),
    Bench("api_economy", ("--skip-nova", "--sim-machines", "200", "--sim-cycles", "5"), 300),
    Bench("web_heartbeats", ("--machines", "1000", "--seconds", "5", "--warmup", "1"), 300),
    Bench("sim_api", ("--projects", "50", "--servers", "20", "--listings", "200",
                      "--sample-creates", "50"), 300),
    Bench("refill", ("--spaces", "4", "--machines", "2", "--cycle-seconds", "20",
                     "--job-seconds", "120", "--seconds", "160"), 600),
    Bench("ha_postgres", ("--spaces", "20", "--machines", "10", "--instances", "2",
                          "--burst", "10", "--cycle-seconds", "4", "--seconds", "12",
                          "--deadline", "600"), 720, _postgres),
    Bench("faults", ("--rounds", "2", "--refill-samples", "2", "--refill-cycle-seconds", "10",
                     "--settle", "60", "--deadline", "480"), 600, _oracle),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "small")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME")
    return parser.parse_args(argv)


def run_one(bench: Bench, out: Path) -> dict[str, object]:
    reason = bench.needs() if bench.needs is not None else None
    if reason is not None:
        return {"name": bench.name, "skipped": reason}
    json_path, log_path = out / f"{bench.name}.json", out / f"{bench.name}.log"
    argv = [sys.executable, "-m", f"benchmarks.{bench.name}", *bench.args,
            "--out", str(json_path)]
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            code: int | str = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, timeout=bench.budget,
                                             check=False).returncode
        except subprocess.TimeoutExpired:
            code = f"killed after {bench.budget:g} s"
    return {"name": bench.name, "exit": code, "seconds": round(time.monotonic() - started, 1),
            "json": str(json_path) if json_path.is_file() else None, "log": str(log_path),
            "command": " ".join(argv[1:])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if (args.only is None or b.name in args.only)
              and b.name not in args.skip]
    rows = []
    for bench in chosen:
        print(f"{bench.name}: running (at most {bench.budget:g} s)...", flush=True)
        row = run_one(bench, args.out)
        rows.append(row)
        print(f"{bench.name}: " + (f"skipped: {row['skipped']}" if "skipped" in row else
                                   f"exit {row['exit']} in {row['seconds']} s"), flush=True)
        (args.out / "bench.json").write_text(json.dumps({"benchmarks": rows}, indent=2) + "\n")
    failed = [r["name"] for r in rows if "skipped" not in r and r["exit"] != 0]
    print(f"{len(rows)} benchmarks, {len(failed)} failed{': ' if failed else ''}"
          f"{', '.join(str(f) for f in failed)}; JSON in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
