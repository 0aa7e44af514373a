"""The dashboard's series (pure): running machines and kHS06 stacked per VO and per site,
computed from the machines' start and end times; the SVG scale."""

from __future__ import annotations

from cloudvac.config import Machinetype, Space
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.web.series import plots, running_intervals, stacked
from cloudvac.web.svg import nice_ceiling, stacked_area

S = MachineState


def space(name: str, site: str) -> Space:
    mts = {vo: Machinetype(name=vo, space=name, target_share=1, vo=f"{vo}.org")
           for vo in ("belle", "t2k")}
    return Space(name=name, api="sim", flavor_names=["m1.small"], site_name=site,
                 machinetypes=mts)


def machine(space: str, mt: str, started: float | None, stopped: float | None,
            hs06: float = 40.0) -> MachineRecord:
    return MachineRecord(space=space, name=f"{mt}-{started}-{stopped}", machinetype=mt,
                         state=S.RUNNING if stopped is None else S.GONE, processors=4,
                         hs06=hs06, started_at=started, stopped_at=stopped)


def test_a_machine_counts_from_its_start_until_its_end() -> None:
    ms = [machine("a", "belle", 100, 200), machine("a", "belle", 150, None),
          machine("a", "t2k", None, None)]  # never started: not running
    intervals = running_intervals(ms)
    got = stacked(intervals, [50, 100, 149, 150, 199, 200, 1000], lambda m: m.machinetype,
                  lambda _: 1.0)
    assert got == {"belle": (0, 1, 1, 2, 2, 1, 1)}


def test_plots_stack_per_vo_and_per_site_in_khs06_and_machines() -> None:
    spaces = {"a": space("a", "SITE-A.eu"), "b": space("b", "SITE-B.eu")}
    ms = [machine("a", "belle", 0, None, 40), machine("b", "belle", 0, None, 48),
          machine("b", "t2k", 0, 50, 48)]
    found = {p.title: p for p in plots(ms, spaces, now=100.0)}
    vo = found["kHS06 delivered per VO"]
    assert vo.values["belle.org"][-1] == 0.088 and vo.peak("t2k.org") == 0.048
    assert vo.values["t2k.org"][-1] == 0.0
    sites = found["Running machines per site"]
    assert sites.values["SITE-A.eu"][-1] == 1 and sites.peak("SITE-B.eu") == 2
    svg = stacked_area(vo)
    assert svg.count('class="area"') == 2 and 'data-label="belle.org"' in svg


def test_the_scale_is_a_round_number_above_the_peak() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 1.2, 7, 23, 250, 251)] == \
        [1, 0.5, 1, 2, 10, 25, 250, 500]
