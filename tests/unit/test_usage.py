"""The accounting report's arithmetic (``model.usage``) against hand-computed figures, with
machines across both edges of the window: only their time inside counts, and adjacent
windows add up to the whole without counting anything twice."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloudvac.model.accounting import AccountingRecord, JobCounts
from cloudvac.model.usage import GroupBy, Usage, usage, window_of

SINCE, UNTIL = 1000.0, 4600.0  # one hour

BASE = AccountingRecord(
    space="sim-a.example", machine="m", vm_uuid="u", machinetype="belle", vo="belle",
    dirac_site="VCYCLE.SIM-A.eu", processors=4, benchmark_per_processor=10.0,
    benchmark_source="config", started_at=0.0, stopped_at=0.0, cpu_seconds=None,
    idle_seconds=None, shutdown_code=200, shutdown_text="Success", jobs=JobCounts(),
    fizzled=False, site="SIM-A.eu")
#: Inside: 1800 s of 4 processors at 10 HS06, 75 % busy; 3 production and 1 user job.
A = replace(BASE, machine="a", started_at=1000.0, stopped_at=2800.0, cpu_seconds=5400.0,
            jobs=JobCounts(3, 1, True))
#: Across the window's end: 600 of its 1200 s inside; it ends after the window, so its
#: jobs and shutdown code count in the next one.
B = replace(BASE, machine="b", processors=2, started_at=4000.0, stopped_at=5200.0,
            cpu_seconds=1800.0, jobs=JobCounts(2, 0, True))
#: Across the window's start: 900 of its 1900 s inside; no benchmark, no CPU reported.
C = replace(BASE, machine="c", machinetype="t2k", vo="t2k.org", dirac_site="CLOUD.SIM-A.eu",
            processors=1, benchmark_per_processor=None, benchmark_source="", started_at=0.0,
            stopped_at=1900.0, shutdown_code=300, shutdown_text="Nothing to do")
#: Outside: after the window, and ending exactly at its start.
D = replace(BASE, machine="d", vo="hyperk.org", started_at=5000.0, stopped_at=6000.0)
E = replace(BASE, machine="e", started_at=500.0, stopped_at=1000.0)
RECORDS = (A, B, C, D, E)


def by_group(rows: list[Usage]) -> dict[str, Usage]:
    return {row.group: row for row in rows}


def test_hand_computed_figures_per_vo() -> None:
    rows = by_group(usage(RECORDS, GroupBy.VO, SINCE, UNTIL))
    assert list(rows) == ["belle", "t2k.org", "TOTAL"]
    belle = rows["belle"]
    assert belle.machines == 2
    assert belle.wall_hours == pytest.approx(0.5 + 600 / 3600)
    assert belle.processor_hours == pytest.approx(2.0 + 1200 / 3600)
    assert belle.cpu_hours == pytest.approx((5400 + 900) / 3600)
    assert belle.cpu_efficiency == pytest.approx(6300 / 8400)
    assert belle.khs06_hours == pytest.approx(0.02 + 10 * 2 * 600 / 1000 / 3600)
    assert belle.average_khs06 == pytest.approx(belle.khs06_hours)  # over one hour
    assert (belle.jobs_production, belle.jobs_user) == (3, 1)
    assert belle.shutdown_codes == {"200": 1}
    t2k = rows["t2k.org"]
    assert (t2k.machines, t2k.wall_hours, t2k.processor_hours) == (1, 0.25, 0.25)
    assert (t2k.cpu_hours, t2k.cpu_efficiency, t2k.khs06_hours) == (0.0, None, 0.0)
    assert t2k.shutdown_codes == {"300": 1}
    total = rows["TOTAL"]
    assert total.machines == 3
    assert total.khs06_hours == pytest.approx(belle.khs06_hours)
    assert total.shutdown_codes == {"200": 1, "300": 1}


def test_adjacent_windows_add_up_to_the_whole_and_count_nothing_twice() -> None:
    whole = by_group(usage(RECORDS, GroupBy.SPACE, 0.0, 8000.0))["TOTAL"]
    parts = [by_group(usage(RECORDS, GroupBy.SPACE, a, b))["TOTAL"]
             for a, b in ((0.0, SINCE), (SINCE, UNTIL), (UNTIL, 8000.0))]
    for name in ("wall_hours", "processor_hours", "cpu_hours", "khs06_hours"):
        assert sum(getattr(p, name) for p in parts) == pytest.approx(getattr(whole, name)), name
    for name in ("jobs_production", "jobs_user"):
        assert sum(getattr(p, name) for p in parts) == getattr(whole, name), name
    assert sum(sum(p.shutdown_codes.values()) for p in parts) == len(RECORDS)
    assert whole.machines == len(RECORDS)


@pytest.mark.parametrize(("by", "groups"), [
    (GroupBy.MACHINETYPE, ["sim-a.example/belle", "sim-a.example/t2k"]),
    (GroupBy.DIRAC_SITE, ["CLOUD.SIM-A.eu", "VCYCLE.SIM-A.eu"]),
    (GroupBy.SITE, ["SIM-A.eu"]),
    (GroupBy.SPACE, ["sim-a.example"])])
def test_groupings(by: GroupBy, groups: list[str]) -> None:
    assert [r.group for r in usage(RECORDS, by, SINCE, UNTIL)] == [*groups, "TOTAL"]


def test_an_empty_window_has_no_rows_and_the_default_window() -> None:
    assert usage(RECORDS, GroupBy.VO, 9000.0, 9999.0) == []
    assert window_of(RECORDS, None, None, 7000.0) == (0.0, 7000.0)
    assert window_of([], 5.0, None, 7000.0) == (5.0, 7000.0)
