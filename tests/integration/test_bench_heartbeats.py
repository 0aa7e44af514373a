"""``benchmarks/web_heartbeats.py`` in a small configuration (200 machines, 2 s), run as its
command: the JSON has cloudvac's figures, the floor's (the minimal ASGI app on the same
stack) and their ratio, and they are consistent; every heartbeat landed.  No timing is
asserted (the figures are measured by hand, see benchmarks/README.md)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchrun import run_benchmark

RUN_SECONDS = 600  # the run takes ~20 s on a quiet machine; a loaded box is slow to start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_SECONDS + 60)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-beats") / "web_heartbeats.json"
    args = ["--machines", "200", "--seconds", "2", "--warmup", "1"]
    return run_benchmark("web_heartbeats", args, out, RUN_SECONDS)


def test_every_heartbeat_landed_and_the_figures_are_there(report: dict[str, Any]) -> None:
    assert report["ok"], report["failures"]
    requests = report["requests"]
    assert requests["errors_by_status"] == {}
    assert 0 < requests["success_204_in_window"] == requests["completed_in_window"]
    assert report["throughput_rps"] == pytest.approx(
        requests["success_204_in_window"] / report["params"]["seconds"], abs=0.1)
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["server"]["cpu_ms_per_request"] > 0
    landed = report["landed"]
    assert landed["stale"] == landed["lost"] == 0
    assert landed["machines_sent_204"] == landed["machines_with_heartbeat_file"] > 0
    assert report["server_metrics"]["heartbeat/204"] >= requests["total_including_warmup"]


def test_the_floor_ran_with_the_same_load_and_the_ratio_is_of_the_two(
        report: dict[str, Any]) -> None:
    floor = report["floor"]
    assert floor["failures"] == []
    assert floor["requests"]["errors_by_status"] == {}
    assert floor["throughput_rps"] > 0 and floor["server"]["cpu_ms_per_request"] > 0
    assert floor["latency_ms"]["p99"] is not None
    assert report["ratio_to_floor"] == pytest.approx(
        report["throughput_rps"] / floor["throughput_rps"], abs=0.001)
    assert report["cpu_per_request_vs_floor"] == pytest.approx(
        report["server"]["cpu_ms_per_request"] / floor["server"]["cpu_ms_per_request"],
        abs=0.01)
    assert report["meets_goal_ratio"] == (report["ratio_to_floor"] >= report["goal_ratio"])
    assert "landed" not in floor, "the floor stores nothing: no landing check"
