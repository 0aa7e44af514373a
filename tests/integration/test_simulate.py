"""The scenario simulator: real planner and cycle, sim cloud, virtual clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloudvac.simulate.output import summarize
from cloudvac.simulate.runner import Row, run
from cloudvac.simulate.scenario import ScenarioError, load_scenario

BASE = """\
[settings]
cycle_seconds = 60

[space s.example]
api = sim
processors_limit = 80
creation_burst_processors = 40
flavor_names = m1.large
sim_boot_seconds = 120
sim_seed = 7
{space}
[machinetype s.example belle]
target_share = 1
fizzle_seconds = 600
backoff_seconds = 3600
sim_job_seconds = 7200

[machinetype s.example t2k]
target_share = 1
fizzle_seconds = 600
backoff_seconds = 3600
sim_job_seconds = 7200
"""


def scenario(tmp_path: Path, text: str, space: str = "") -> Path:
    path = tmp_path / "scenario.conf"
    path.write_text("[scenario]\nhours = 10\ncycle_seconds = 300\n\n" + text + "\n" +
                    BASE.format(space=space))
    return path


def series(rows: list[Row], mt: str, start: float, end: float) -> list[Row]:
    return [r for r in rows if r.machinetype == mt and start <= r.hours < end]


def test_no_work_phase_backs_off_and_others_take_the_capacity(tmp_path: Path) -> None:
    rows = run(load_scenario(scenario(tmp_path, "[phase dry]\nstart_hours = 2\nend_hours = 6\n"
                                                 "machinetype = t2k\nno_work_probability = 1")))
    before = series(rows, "t2k", 1, 2)
    during = series(rows, "t2k", 4.5, 6)
    after = series(rows, "t2k", 9, 10)
    assert not any(r.backoff for r in before) and any(r.backoff for r in during)
    assert max(r.processors for r in during) < min(r.processors for r in before)
    assert max(r.processors for r in series(rows, "belle", 4.5, 6)) > 40  # took t2k's share
    assert min(r.processors for r in after) >= 32  # recovered after the phase
    assert all(sum(r.processors for r in rows if r.hours == h) <= 80
               for h in {r.hours for r in rows})


def test_quota_shrink_limits_without_backoff(tmp_path: Path) -> None:
    rows = run(load_scenario(scenario(
        tmp_path, "[phase small]\nstart_hours = 3\nend_hours = 7\nquota_processors = 24",
        space="sim_quota_processors = 80\n")))
    late_phase = sorted({r.hours for r in rows if 6 <= r.hours < 7})
    for hours in late_phase:
        assert sum(r.processors for r in rows if r.hours == hours) <= 24
    summary = summarize(rows)
    spaces = summary["spaces"]
    assert isinstance(spaces, dict)
    assert all(v["hours_in_backoff"] == 0 for v in spaces["s.example"].values())


def test_boot_failures_back_off(tmp_path: Path) -> None:
    rows = run(load_scenario(scenario(
        tmp_path, "[phase broken]\nstart_hours = 1\nend_hours = 4\nfailure_rate = 1.0")))
    assert any(r.backoff for r in series(rows, "belle", 1, 4))
    assert not any(r.backoff for r in series(rows, "belle", 0, 1))


def test_scenario_errors_are_located(tmp_path: Path) -> None:
    path = scenario(tmp_path, "[phase bad]\nstart_hours = 1\nno_such_option = 2")
    with pytest.raises(ScenarioError, match=r"scenario.conf:5: \[phase bad\] unknown phase "
                                            r"option\(s\) no_such_option"):
        load_scenario(path)


def test_cli_writes_csv_json_and_plot(tmp_path: Path) -> None:
    path = scenario(tmp_path, "[phase dry]\nstart_hours = 2\nend_hours = 4\n"
                              "machinetype = t2k\nno_work_probability = 1")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "cloudvac", "simulate", str(path), "--out",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["spaces"]["s.example"]) == {"belle", "t2k"}
    assert (out / "scenario.csv").read_text().startswith("hours,space,machinetype")
    assert json.loads((out / "scenario.json").read_text())["rows"]
    assert (out / "scenario.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, "-m", "cloudvac", "simulate", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no-work-backoff" in missing.stderr


STEADY = Path(__file__).resolve().parents[2] / "cloudvac" / "examples" / "scenarios" \
    / "steady-shares.conf"


def shortened_steady_shares(tmp_path: Path, seed: int) -> Path:
    """steady-shares in 3 hours, pilots 8 times shorter (churn: ends, deletes, creates) and
    a dry phase (aborts, backoff): every path whose order could vary."""
    text = STEADY.read_text().replace("hours = 12", "hours = 3")
    text = text.replace("sim_seed = 1", f"sim_seed = {seed}")
    for long, short in (("14400", "1800"), ("10800", "1350")):
        text = text.replace(f"sim_job_seconds = {long}", f"sim_job_seconds = {short}")
    text = text.replace("[settings]", "[phase dry]\nstart_hours = 1\nend_hours = 2\n"
                        "machinetype = t2k\nno_work_probability = 1\n\n[settings]")
    path = tmp_path / f"seed{seed}" / "steady.conf"
    path.parent.mkdir()
    path.write_text(text)
    return path


def simulate_cli(path: Path, out: Path, hash_seed: int, *extra: str) -> dict[str, bytes]:
    """``cloudvac simulate`` in its own process; the CSV and JSON it wrote."""
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}  # set order must not matter
    done = subprocess.run([sys.executable, "-m", "cloudvac", "simulate", str(path), "--out",
                           str(out), *extra], capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr
    return {suffix: (out / f"{path.stem}.{suffix}").read_bytes() for suffix in ("csv", "json")}


@pytest.mark.timeout(900)  # three processes on a loaded 2-core box
def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_bytes(
        tmp_path: Path) -> None:
    path = shortened_steady_shares(tmp_path, seed=1)
    with ThreadPoolExecutor(3) as pool:  # three processes side by side: both cores busy
        runs = [pool.submit(simulate_cli, path, tmp_path / "first", 1),
                pool.submit(simulate_cli, path, tmp_path / "second", 2),
                pool.submit(simulate_cli, path, tmp_path / "other", 1, "--seed", "2")]
        first, second, other = (done.result() for done in runs)  # other: replaces sim_seed
    assert first == second
    assert first["csv"] != other["csv"] and first["json"] != other["json"]
    rows = json.loads(first["json"])["rows"]
    assert sum(r["deleted"] for r in rows) > 0 and any(r["backoff"] for r in rows)


@pytest.mark.timeout(600)
def test_a_run_seed_replaces_the_scenario_seeds(tmp_path: Path) -> None:
    loaded = load_scenario(shortened_steady_shares(tmp_path, seed=1))
    five = run(loaded, seed=5)  # each run is a whole simulation: four, not six
    assert five == run(loaded, seed=5)
    assert five != run(loaded, seed=6)
    assert five != run(loaded)
