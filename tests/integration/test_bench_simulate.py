"""``benchmarks/simulate.py`` in a small configuration (steady-shares for 1 simulated hour,
two runs, this tree as its own baseline), run as its command: the JSON it writes has every
figure, and they are sane (no timing is asserted; the 12-hour figure is run by hand, see
benchmarks/README.md)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchrun import ROOT, run_benchmark

RUN_SECONDS = 900  # four `cloudvac simulate` processes on a loaded 2-core box

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_SECONDS + 120)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-simulate") / "simulate.json"
    args = ["--hours", "1", "--runs", "2", "--baseline", str(ROOT)]
    return run_benchmark("simulate", args, out, RUN_SECONDS)


def test_every_run_finished_and_wrote_the_same_bytes(report: dict[str, Any]) -> None:
    assert report["ok"] and report["scenario"] == "steady-shares"
    assert report["simulated_hours"] == 1.0 and report["runs"] == 2
    for tree in ("current", "baseline"):
        result = report["results"][tree]
        assert result["ok"] and result["repeatable"], result
        assert len(result["runs"]) == 2
        for run in result["runs"]:
            assert run["exit_code"] == 0 and set(run["sha256"]) == {"csv", "json"}
            assert run["wall_s"] > 0 and run["cpu_s"] > 0
    # one tree measured twice: the same outputs
    assert report["results"]["current"]["runs"][0]["sha256"] == \
        report["results"]["baseline"]["runs"][0]["sha256"]


def test_the_figures_have_their_spread_and_ratios(report: dict[str, Any]) -> None:
    current = report["results"]["current"]
    for kind in ("wall_s", "cpu_s"):
        spread = current[kind]
        assert spread["min"] <= spread["median"] <= spread["max"]
    ratio = report["results"]["ratio"]
    for kind in ("wall", "cpu"):
        assert len(ratio[kind]["pairs"]) == 2 and all(r > 0 for r in ratio[kind]["pairs"])
        assert ratio[kind]["medians"] > 0
    assert isinstance(report["goal_met_wall_median"], bool)
    assert report["host"]["cpus"] >= 1
    trees = report["trees"]
    assert set(trees) == {"current", "baseline"} and trees["current"] == trees["baseline"]
    assert trees["current"]["path"] == str(ROOT)
