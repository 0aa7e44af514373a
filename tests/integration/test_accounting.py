"""Accounting records on both backends: built when a machine is gone from its row, its
machinetype's configuration and its uploads; written exactly once, across a restart and a
crash between marking it gone and writing its record; reported by the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudvac.cli import app
from cloudvac.config import load_config_dir
from cloudvac.config.models import Space
from cloudvac.config.settings import Settings
from cloudvac.demo import example_dir
from cloudvac.engine.accounting import account_ended
from cloudvac.model.accounting import JobCounts
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store
from cloudvac.store.joboutputs import Upload
from tests.unit.test_usage import RECORDS, SINCE, UNTIL

SPACE = "sim-a.example"
PILOT_LOG = (b"2026-11-29 10:00:00 UTC WorkloadManagement/JobAgent INFO: Received JobID=11, "
             b"JobType=MCSimulation, OwnerDN: /DC=x, JobGroup: g\n"
             b"... Received JobID=12, JobType=User\n"
             b"... Received JobID=11, JobType=MCSimulation\n"  # the same job again: once
             b"... Received JobID=13, JobType=MCReconstruction\n")


@pytest.fixture
def space() -> Space:
    return load_config_dir(example_dir()).spaces[SPACE]


def gone(name: str, machinetype: str = "belle", **changes: object) -> MachineRecord:
    values: dict[str, object] = dict(
        space=SPACE, name=name, machinetype=machinetype, state=MachineState.GONE,
        cloud_id=f"uuid-{name}", processors=4, created_at=900.0, started_at=1000.0,
        stopped_at=2800.0)
    values.update(changes)
    return MachineRecord(**values)  # type: ignore[arg-type]


def upload(store: Store, name: str, file: str, body: bytes) -> None:
    """What the web side stores for a VM's upload (any instance: the store is shared)."""
    store.put_joboutput(SPACE, name, Upload(file, body, 1 << 20), 2700.0)


def test_record_from_row_config_and_uploads_written_once_across_a_restart(
        store_url: str, space: Space) -> None:
    store = Store(store_url)
    try:
        record = gone("belle-1")
        store.apply(SPACE, [record], {}, 3000.0)
        upload(store, "belle-1", "cpu_totals", b"5000.50 399.50 1234.00\n")
        upload(store, "belle-1", "pilot.log", PILOT_LOG)
        store.record_shutdown(SPACE, "belle-1", ShutdownMessage(200, "Success"), 2790.0)
        assert account_ended(store, space, [record], 3000.0) == 1
        first = store.accounting()
        upload(store, "belle-1", "cpu_totals", b"1.00 1.00 1.00\n")  # a late change: ignored
    finally:
        store.close()
    store = Store(store_url)  # the manager restarted
    try:
        assert account_ended(store, space, [record], 4000.0) == 0
        assert store.accounting() == first
    finally:
        store.close()
    r, = first
    assert (r.space, r.machine, r.vm_uuid, r.machinetype, r.vo) == (
        SPACE, "belle-1", "uuid-belle-1", "belle", "belle")
    assert (r.dirac_site, r.site) == ("VCYCLE.SIM-A.eu", "SIM-A.eu")
    assert (r.processors, r.benchmark_per_processor, r.benchmark_source) == (4, 10.0, "config")
    assert (r.started_at, r.stopped_at, r.wall_seconds) == (1000.0, 2800.0, 1800.0)
    assert (r.cpu_seconds, r.idle_seconds) == (5400.0, 1234.0)
    assert (r.shutdown_code, r.shutdown_text) == (200, "Success")
    assert r.jobs == JobCounts(production=2, user=1, known=True)
    assert r.fizzled is False


def test_a_crash_before_the_record_is_caught_up_and_never_run_machines_are_skipped(
        store_url: str, space: Space) -> None:
    store = Store(store_url)
    try:
        crashed = gone("t2k-1", "t2k", started_at=1000.0, stopped_at=1003.0)
        never = gone("hyperk-1", "hyperk", started_at=None, stopped_at=None)
        store.apply(SPACE, [crashed, never], {}, 1100.0)  # gone, then the manager died
        running = MachineRecord(space=SPACE, name="belle-2", machinetype="belle",
                                state=MachineState.RUNNING, started_at=1000.0)
        assert account_ended(store, space, [running], 1200.0) == 0  # nothing gone
        later = gone("belle-3")
        store.apply(SPACE, [later], {}, 3000.0)
        assert account_ended(store, space, [later], 3000.0) == 2
        records = {r.machine: r for r in store.accounting()}
    finally:
        store.close()
    assert set(records) == {"t2k-1", "belle-3"}
    t2k = records["t2k-1"]
    assert (t2k.vo, t2k.dirac_site, t2k.fizzled) == ("t2k.org", "CLOUD.SIM-A.eu", True)
    assert (t2k.cpu_seconds, t2k.idle_seconds, t2k.jobs) == (None, None, JobCounts())
    assert t2k.shutdown_code is None


def test_the_cli_reports_the_hand_computed_figures(tmp_path: Path) -> None:
    store = Store(Settings(state_dir=tmp_path).database_url)
    try:
        assert store.record_accounting(RECORDS, 9000.0) == len(RECORDS)
        assert store.record_accounting(RECORDS, 9001.0) == 0
        assert len(store.accounting(SINCE, UNTIL)) == 3  # A, B, C: D after, E ends at SINCE
    finally:
        store.close()
    runner = CliRunner()
    result = runner.invoke(app, ["accounting", "--state-dir", str(tmp_path), "--since",
                                 str(SINCE), "--until", "1970-01-01T01:16:40", "--by", "vo",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["since"], report["until"]) == (SINCE, UNTIL)
    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["belle", "t2k.org", "TOTAL"]
    assert groups["belle"]["khs06_hours"] == pytest.approx(0.02 + 10 * 2 * 600 / 1000 / 3600)
    assert groups["belle"]["cpu_efficiency"] == pytest.approx(0.75)
    assert groups["TOTAL"]["shutdown_codes"] == {"200": 1, "300": 1}
    table = runner.invoke(app, ["accounting", "--state-dir", str(tmp_path), "--since",
                                str(SINCE), "--until", str(UNTIL)])
    assert table.exit_code == 0, table.output
    belle = next(line for line in table.output.splitlines() if line.startswith("belle "))
    assert belle.split()[1:6] == ["2", "0.667", "2.33", "1.75", "75.0%"]
    bad = runner.invoke(app, ["accounting", "--state-dir", str(tmp_path), "--since", "soon"])
    assert bad.exit_code == 2
    assert "--since: not a time" in bad.output
