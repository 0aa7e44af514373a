"""``benchmarks/scale.py`` in a small configuration, run as its command: the JSON has the
CPU per full cycle split by stage, the yardstick decode of the same servers and the ratio,
and ``--shapes`` with ``--baseline`` writes every child's report and the pairs (no timing
is asserted; the full figures are run by hand, see benchmarks/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.benchrun import ROOT, run_benchmark

RUN_SECONDS = 900  # a child's own deadline is 540 s; a loaded box is slow to start
STAGES = {"listing", "store_read", "reconcile", "plan", "store_write", "other"}
SMALL = ["--cycles", "2", "--warmup", "1", "--period", "1", "--boot-seconds", "0.2",
         "--job-hours", "0.01"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * RUN_SECONDS + 120)]


def bench(*args: str, out: Path) -> dict[str, Any]:
    return run_benchmark("scale", [*SMALL, *args], out, RUN_SECONDS)


def test_one_run_splits_the_cycle_and_measures_the_yardstick(tmp_path: Path) -> None:
    report = bench("--spaces", "3", "--machines", "40", out=tmp_path / "scale.json")
    assert report["ok"], report["failures"]
    assert report["code"]["cloudvac"] == str(ROOT / "cloudvac")
    steady = report["steady"]
    assert steady["cycles"] == 2 and steady["machines_listed_per_cycle"] > 0
    stages = steady["stages_cpu_seconds_mean"]
    assert set(stages) == STAGES, stages
    assert all(stages[k] >= 0 for k in STAGES - {"other"}) and stages["plan"] > 0, stages
    for cycle in report["cycles"]:
        split = cycle["stages_cpu_s"]
        assert sum(split.values()) == pytest.approx(cycle["cpu_seconds"], abs=0.01), cycle
        assert cycle["gc_seconds"] >= 0 and cycle["gc_collections"] >= 0
    decode = report["decode_baseline"]
    assert decode["servers"] >= steady["machines_listed_per_cycle"] and decode["pages"] == 3
    assert decode["cpu_seconds_median"] > 0 and decode["json_bytes"] > 300 * decode["servers"]
    assert steady["ratio_to_decode"] == pytest.approx(  # both sides are rounded
        steady["cpu_seconds_mean"] / decode["cpu_seconds_median"], rel=0.02, abs=0.01)
    assert report["meets_cpu_goal"] == (steady["cpu_seconds_mean"] <= 1.0
                                        or steady["ratio_to_decode"] <= 5)


def test_shapes_against_a_baseline_write_every_run_and_the_pairs(tmp_path: Path) -> None:
    """The baseline here is this very tree (``--code``): the harness, not a change, is
    what is checked."""
    report = bench("--shapes", "2x30", "4x10", "--baseline", str(ROOT),
                   out=tmp_path / "runs.json")
    assert report["ok"], [r["report"].get("failures") for r in report["runs"]]
    assert [(r["shape"], r["build"]) for r in report["runs"]] == [
        ("2x30", "current"), ("2x30", "baseline"), ("4x10", "current"), ("4x10", "baseline")]
    for run in report["runs"]:
        params = run["report"]["params"]
        assert f"{params['spaces']}x{params['machines']}" == run["shape"]
        assert run["report"]["steady"]["stages_cpu_seconds_mean"] is not None
    assert [p["shape"] for p in report["pairs"]] == ["2x30", "4x10"]
    for pair in report["pairs"]:
        assert pair["cpu_ratio_current_to_baseline"] > 0 and set(pair["stage_ratios"]) <= STAGES
    assert set(report["by_shape"]) == {"2x30", "4x10"}
