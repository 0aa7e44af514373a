"""Every time the engine and the store write comes from the injected clock: a simulation
on a virtual clock writes virtual times only."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from cloudvac.simulate.runner import simulate
from cloudvac.simulate.scenario import load_scenario
from cloudvac.store import Store

START = 1_000_000_000.0  # 2001: far from any wall-clock time this test could run at
HOURS = 3

SCENARIO = f"""\
[scenario]
hours = {HOURS}
cycle_seconds = 300

[settings]
cycle_seconds = 300

[space s.example]
api = sim
processors_limit = 16
flavor_names = m1.large
sim_boot_seconds = 120
sim_seed = 3

[machinetype s.example belle]
target_share = 1
heartbeat_file = heartbeat
heartbeat_seconds = 1800
fizzle_seconds = 600
backoff_seconds = 1200
sim_job_seconds = 2400
sim_no_work_probability = 0.3
sim_heartbeat_period_seconds = 300
"""


def test_a_simulation_writes_only_simulated_times(tmp_path: Path) -> None:
    path = tmp_path / "clock.conf"
    path.write_text(SCENARIO)
    db = tmp_path / "sim.db"
    store = Store(f"sqlite:///{db}")
    try:
        rows = asyncio.run(simulate(load_scenario(path), store, START))
    finally:
        store.close()
    assert rows
    end = START + HOURS * 3600
    with sqlite3.connect(db) as raw:
        columns = ["updated_at", "created_at", "started_at", "stopped_at", "heartbeat_at",
                   "shutdown_at", "delete_requested_at"]
        times = {c: raw.execute(f"SELECT min({c}), max({c}), count({c}) FROM machines")
                 .fetchone() for c in columns}
        events = raw.execute("SELECT min(at), max(at), count(*) FROM events").fetchone()
        aborts = raw.execute("SELECT min(last_abort_at), max(last_abort_at) FROM backoff"
                             ).fetchone()
    for column, (low, high, count) in times.items():
        assert count > 0, f"no {column} written: the scenario must exercise it"
        assert low >= START - 3600 and high <= end, (column, low, high)
    assert events[2] > 0 and events[0] >= START and events[1] <= end
    assert aborts[0] is not None and aborts[0] >= START and aborts[1] <= end
