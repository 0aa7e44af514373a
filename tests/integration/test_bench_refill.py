"""``benchmarks/refill.py`` in a small configuration (2 spaces x 2 machines, 5 s cycles,
pilots of 10-30 s), run as its command: `cloudvac sim-cloud`, `cloudvac web` and `cloudvac
run` start and stop, and the JSON it writes has every figure, consistent with each other
(no timing is asserted; the full figure is run by hand, see benchmarks/README.md)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchrun import ROOT, run_benchmark

SPACES, MACHINES, CYCLE, WINDOW = 2, 2, 5, 45
RUN_SECONDS = 900  # start-up of three processes and a fill on a loaded box, then the window

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_SECONDS + 120)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-refill") / "refill.json"
    args = ["--spaces", str(SPACES), "--machines", str(MACHINES), "--cycle-seconds",
            str(CYCLE), "--job-seconds", "20", "--seconds", str(WINDOW)]
    return run_benchmark("refill", args, out, RUN_SECONDS)


def test_every_process_ran_and_stopped_cleanly(report: dict[str, Any]) -> None:
    assert report["ok"], report.get("failure")
    assert report["fill_seconds"] is not None and report["fill_seconds"] >= 0
    assert report["exit_codes"] == {"0": 0, "1": 0}  # cloudvac web, cloudvac run
    assert all(v > 0 for v in report["cpu_seconds"].values()), report["cpu_seconds"]
    assert report["code"]["tree"] == str(ROOT)


def test_each_refill_pairs_a_message_with_a_later_create(report: dict[str, Any]) -> None:
    refill = report["refill"]
    rows = refill["refills"]
    assert refill["count"] == len(rows) > 0
    assert refill["unrefilled"] == 0, rows
    assert {r["space"] for r in rows} <= {f"r{i:02d}.refill.bench" for i in range(SPACES)}
    assert len({r["machine"] for r in rows}) == len(rows)  # one refill per ended machine
    for row in rows:
        assert row["seconds"] > 0, row
        assert row["to_delete"] is None or 0 < row["to_delete"] <= row["seconds"], row
    delays = sorted(r["seconds"] for r in rows)
    assert refill["max_seconds"] == delays[-1]
    assert delays[0] <= refill["median_seconds"] <= refill["p90_seconds"] <= delays[-1]


def test_the_window_counts_listings_and_cycles(report: dict[str, Any]) -> None:
    window = report["window"]
    assert window["seconds"] >= WINDOW
    assert window["listing_calls"] > 0 and window["space_cycles_ok"] > 0
    assert window["scheduled_cycles_per_space_hour"] == 3600 / CYCLE
    hours = window["seconds"] / 3600
    assert window["listing_calls_per_space_hour"] == pytest.approx(
        window["listing_calls"] / SPACES / hours, rel=0.01)
    assert window["creates"] >= report["refill"]["count"]
