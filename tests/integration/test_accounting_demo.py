"""Must show (issue 17): after ``cloudvac demo --cycles N``, ``cloudvac accounting --by vo``
prints non-zero kHS06 hours for belle, t2k and hyperk, with CPU time the simulated VMs
reported (``cpu_totals``) and jobs read from their pilot logs; and APEL files appear in the
demo's outgoing directory (``STATE/apel/outgoing``, printed with the dashboard URL) and load
back, with the ``dirq`` package ssmsend uses, as v0.4 records: one per finished machine.
The demo's sim-b flavors declare a benchmark (the ``accounting:benchmark_value`` extra spec),
and its t2k machinetype has no ``hs06_per_processor``: the flavor's figure reaches its
records, end to end.  One demo run (20 cycles, the slow part) serves every test here."""

from __future__ import annotations

import csv
import io
import shutil
from collections import Counter
from pathlib import Path

import pytest

from cloudvac.config.settings import Settings
from cloudvac.demo import example_dir
from cloudvac.model.accounting import AccountingRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from tests.apel_rules import parse_message, service_level
from tests.integration.test_apel_dirq import consume
from tests.integration.test_cli import cli

# A 20-cycle demo runs inside the first test's budget; loaded CI machines run it 3x slower.
pytestmark = pytest.mark.timeout(1500)

VOS = ("belle", "t2k.org", "hyperk.org")
CYCLES = "20"


def run_demo(state: Path) -> None:
    demo = cli("demo", "--cycles", CYCLES, "--json", "--state-dir", str(state), timeout=1200)
    assert demo.returncode == 0, demo.stderr
    lines = demo.stderr.splitlines()
    assert lines[0].startswith("dashboard: http://127.0.0.1:"), lines[:2]
    assert lines[1] == f"APEL records: {state / 'apel' / 'outgoing'}", lines[:2]


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("demo")
    with_flavor_benchmarks(state)
    run_demo(state)
    return state


def stored(state: Path) -> tuple[list[AccountingRecord], set[str]]:
    """The accounting records, and the cloud ids of the machines that ran and are gone."""
    store = Store(Settings(state_dir=state).database_url)
    try:
        finished = {m.cloud_id for m in store.machines(include_gone=True)
                    if m.state is MachineState.GONE and m.started_at is not None}
        return store.accounting(), finished
    finally:
        store.close()


@pytest.fixture(scope="module")
def demo_apel(demo_state: Path) -> list[dict[str, str]]:
    """Every record of the demo's outgoing directory, consumed (once: consuming removes
    them) as ssmsend does, each checked against APEL's v0.4 rules."""
    out = demo_state / "apel" / "outgoing"
    assert out.is_dir(), f"no APEL outgoing directory at {out}"
    return [r for message in consume(out) for r in parse_message(message)]


@pytest.mark.slow
def test_demo_then_accounting_by_vo_shows_every_vo(demo_state: Path) -> None:
    table = cli("accounting", "--state-dir", str(demo_state), "--by", "vo")
    assert table.returncode == 0, table.stderr
    print(table.stdout)  # the report, as an operator sees it
    for vo in VOS:
        assert any(line.startswith(vo + " ") for line in table.stdout.splitlines()), vo
    report = cli("accounting", "--state-dir", str(demo_state), "--by", "vo", "--format", "csv")
    assert report.returncode == 0, report.stderr
    rows = {row["vo"]: row for row in csv.DictReader(io.StringIO(report.stdout))}
    for vo in VOS:
        row = rows[vo]
        assert int(row["machines"]) > 0, row
        assert float(row["khs06_hours"]) > 0, row
        assert float(row["cpu_hours"]) > 0, row
        assert 0.5 < float(row["cpu_efficiency"]) <= 1.0, row
    total = rows["TOTAL"]
    assert int(total["jobs_production"]) + int(total["jobs_user"]) > 0, total
    assert total["shutdown_codes"], total


@pytest.mark.slow
def test_demo_apel_files_load_back_as_v04_records_one_per_finished_machine(
        demo_state: Path, demo_apel: list[dict[str, str]]) -> None:
    records = demo_apel
    accounted, finished = stored(demo_state)
    ids = Counter(r["LocalJobId"] for r in records)
    assert [i for i, n in ids.items() if n > 1] == [], "a machine written twice"
    assert set(ids) == {a.vm_uuid for a in accounted} == finished
    assert set(VOS) <= {r["VO"] for r in records}, Counter(r["VO"] for r in records)
    by_id = {a.vm_uuid: a for a in accounted}
    for r in records:
        a = by_id[r["LocalJobId"]]
        assert (r["Queue"], r["VO"], int(r["Processors"])) == (a.machinetype, a.vo, a.processors)
        assert int(r["EndTime"]) - int(r["StartTime"]) == pytest.approx(
            int(r["WallDuration"]), abs=1)
        levels = service_level(r["ServiceLevel"])
        assert levels["HEPSPEC"] == levels["HEPscore23"] == a.benchmark_per_processor, r
    assert sum(int(r["CpuDuration"]) for r in records) > 0


def with_flavor_benchmarks(state: Path) -> None:
    """The demo's configuration, but sim-b's flavors declare 13.5 HEPscore23 per processor,
    and its t2k machinetype has no hs06_per_processor (its hyperk keeps 12: config wins)."""
    config = state / "cloudvac.d"
    shutil.copytree(example_dir(), config)
    path = config / "20-sim-b.conf"
    text = path.read_text()
    text = text.replace("sim_seed = 2\n", "sim_seed = 2\nsim_flavors = m1.small:1:2048:13.5:"
                        "HEPscore23 m1.medium:2:4096:13.5:HEPscore23\n", 1)
    head, t2k = text.split("[machinetype sim-b.example t2k]", 1)
    section, rest = t2k.split("[machinetype", 1)
    assert "hs06_per_processor = 12\n" in section
    path.write_text(head + "[machinetype sim-b.example t2k]"
                    + section.replace("hs06_per_processor = 12\n", "") + "[machinetype" + rest)


@pytest.mark.slow
def test_a_flavor_benchmark_reaches_accounting_and_apel(
        demo_state: Path, demo_apel: list[dict[str, str]]) -> None:
    state = demo_state
    accounted, _ = stored(state)
    sources = {(a.space, a.machinetype): (a.benchmark_per_processor, a.benchmark_source)
               for a in accounted}
    assert sources[("sim-b.example", "t2k")] == (13.5, "flavor"), sources
    assert sources[("sim-b.example", "hyperk")] == (12.0, "config"), sources
    assert sources[("sim-a.example", "t2k")] == (10.0, "config"), sources
    t2k_b = {a.vm_uuid for a in accounted if (a.space, a.machinetype) == ("sim-b.example", "t2k")}
    records = [r for r in demo_apel if r["LocalJobId"] in t2k_b]
    assert len(records) == len(t2k_b)
    for r in records:
        assert service_level(r["ServiceLevel"]) == {"HEPSPEC": 13.5, "HEPscore23": 13.5}, r
    report = cli("accounting", "--state-dir", str(state), "--by", "machinetype", "--format",
                 "csv")
    assert report.returncode == 0, report.stderr
    rows = {row["machinetype"]: row for row in csv.DictReader(io.StringIO(report.stdout))}
    assert float(rows["sim-b.example/t2k"]["khs06_hours"]) > 0, rows
