"""``benchmarks/ha_postgres.py`` in its small configuration (20 spaces x 10 machines over 2
instances on its own PostgreSQL and sim cloud), run as its command: the JSON it writes has
every figure, and the figures are sane (no timing is asserted; the full figure is run by
hand, see benchmarks/README.md)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchrun import run_benchmark

SPACES, MACHINES, INSTANCES = 20, 10, 2
RUN_SECONDS = 1200  # the benchmark's own --deadline is 900 s; a loaded box is slow to start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_SECONDS + 120)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-ha") / "ha_postgres.json"
    args = ["--spaces", str(SPACES), "--machines", str(MACHINES), "--instances",
            str(INSTANCES), "--burst", "10", "--cycle-seconds", "4", "--seconds", "12"]
    return run_benchmark("ha_postgres", args, out, RUN_SECONDS)


def test_the_run_fills_every_space_and_measures_a_window(report: dict[str, Any]) -> None:
    assert report["ok"], report["failures"]
    assert report["params"]["spaces"] == SPACES and report["params"]["instances"] == INSTANCES
    fill = report["fill"]
    assert fill["done"] and fill["states"].get("running") == SPACES * MACHINES, fill
    assert fill["seconds"] > 0
    assert report["machines_end"].get("running", 0) >= SPACES * MACHINES - 2, \
        report["machines_end"]  # a pilot may have ended (days on average): not all gone


def test_each_instance_has_its_share_and_its_cost_per_full_cycle(
        report: dict[str, Any]) -> None:
    rows = report["window"]["instances"]
    assert [r["instance"] for r in rows] == list(range(INSTANCES))
    owned = report["window"]["spaces_owned_end"]
    assert sum(owned) == SPACES and max(owned) - min(owned) <= 1, owned
    for row in rows:
        assert row["space_cycles"] > 0 and row["space_cycles_failed"] == 0, row
        assert row["full_cycles"] == pytest.approx(
            row["space_cycles"] / (sum(row["spaces_owned_start_end"]) / 2), abs=0.01)
        assert row["cpu_seconds"] > 0, row
        assert row["cpu_seconds_per_full_cycle"] == pytest.approx(
            row["cpu_seconds"] / row["full_cycles"], rel=0.01, abs=0.002), row
        assert row["cpu_ms_per_space_cycle"] > 0 and row["space_cycle_wall_seconds_mean"] > 0


def test_database_sim_cloud_and_machine_figures_are_there(report: dict[str, Any]) -> None:
    win = report["window"]
    database = win["database"]
    assert database["cpu_seconds"] > 0 and database["commits"] > 0, database
    limit = int(report["postgres"]["settings"]["max_connections"])
    assert 0 < max(database["connections_start_end"]) < limit, database
    assert report["postgres"]["settings"]["server_version"], report["postgres"]
    assert win["sim_cloud"]["cpu_seconds"] > 0, win["sim_cloud"]
    assert all(len(load) == 3 for load in win["load_average_start_end"])
    assert 0 <= win["machine_busy_cores"] <= report["host"]["cpus"] + 0.5
    stats = report["window"]["manager_cpu_seconds_per_full_cycle"]
    assert 0 < stats["min"] <= stats["mean"] <= stats["max"], stats


def test_everything_it_started_was_stopped_cleanly(report: dict[str, Any]) -> None:
    assert report["exit_codes"] == [0] * INSTANCES, report["exit_codes"]
    assert report["sim_exit_code"] == 0
    assert all(report["alive_at_end"])
