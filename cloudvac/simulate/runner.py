"""Run a scenario: the real planner and cycle against the sim cloud on a virtual clock.

Nothing sleeps: each step moves the clock by ``cycle_seconds`` and runs every space's cycle
once, so hours of operation take seconds.  Phases change the simulated clouds' behaviour
(work, failures, quota) for machines created while they are active, as in reality, where a
VM's fate is decided by what it finds when it boots.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.clouds.simpilots import StorePilots
from cloudvac.config.models import SimMachinetype, SimSpace, Space
from cloudvac.engine.cycle import SpaceCycle
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.simulate.scenario import Scenario
from cloudvac.store import Store


@dataclass(frozen=True, slots=True)
class Row:
    """One machinetype of one space after one cycle."""

    hours: float
    space: str
    machinetype: str
    starting: int
    running: int
    processors: int
    actual_share: float
    target_share: float
    backoff: bool
    created: int
    deleted: int


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _behaviour(space: Space, scenario: Scenario, seconds: float
               ) -> tuple[SimSpace, dict[str, SimMachinetype]]:
    base = space.sim or SimSpace()
    space_options: dict[str, object] = {}
    mts = {}
    for name, mt in space.machinetypes.items():
        options: dict[str, object] = {}
        for phase in scenario.phases:
            if phase.active(seconds) and phase.applies(space.name, name):
                options.update(phase.mt_options)
                space_options.update(phase.space_options)
        base_mt = mt.sim or SimMachinetype()
        mts[name] = SimMachinetype.model_validate({**base_mt.model_dump(), **options}) \
            if options else base_mt
    for phase in scenario.phases:
        if phase.active(seconds) and phase.target is None:
            space_options.update(phase.space_options)
    sim = SimSpace.model_validate({**base.model_dump(), **space_options})
    return sim, mts


async def run_scenario(scenario: Scenario, start: float = 1_800_000_000.0) -> list[Row]:
    """Run ``scenario`` from the virtual time ``start`` on a throwaway store."""
    with tempfile.TemporaryDirectory(prefix="cloudvac-sim-",
                                     dir="/dev/shm" if Path("/dev/shm").is_dir() else None
                                     ) as state:
        store = Store(f"sqlite:///{state}/simulate.db")
        try:
            return await simulate(scenario, store, start)
        finally:
            store.close()


async def simulate(scenario: Scenario, store: Store, start: float) -> list[Row]:
    """Run ``scenario`` on ``store`` from the virtual time ``start``: every time written
    (records, events, heartbeats) is a virtual one."""
    settings = scenario.config.settings
    assert settings is not None
    clock = Clock(start)
    tools = CycleTools(store, EngineMetrics(), clock=clock, monotonic=clock)
    pilots = StorePilots(store)
    runners: dict[str, tuple[Space, SimCloud, SpaceCycle]] = {}
    for name, space in scenario.config.spaces.items():
        sim, mts = _behaviour(space, scenario, 0.0)
        project = SimProject(options=sim, machinetypes=mts, clock=clock)
        cloud = SimCloud(project, (name, settings.manager_id), pilots, options=sim)
        runners[name] = (space, cloud, SpaceCycle(cloud, settings, tools))
    rows: list[Row] = []
    steps = int(scenario.hours * 3600 / scenario.cycle_seconds)
    for _ in range(steps):
        seconds = clock.now - start
        for space, cloud, cycle in runners.values():
            sim, mts = _behaviour(space, scenario, seconds)
            cloud.reconfigure(sim, mts)
            report = await cycle.run(space)
            if not report.ok:
                continue
            for mt, status in report.status.items():
                rows.append(Row(
                    hours=round(seconds / 3600, 4), space=space.name, machinetype=mt,
                    starting=status.machines.get("starting", 0)
                    + status.machines.get("intent", 0),
                    running=status.machines.get("running", 0), processors=status.processors,
                    actual_share=round(status.actual_share, 4),
                    target_share=round(status.target_share, 4),
                    backoff=status.held,
                    created=report.created, deleted=report.deleted))
        clock.now += scenario.cycle_seconds
    return rows


def as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]


def run(scenario: Scenario) -> list[Row]:
    return asyncio.run(run_scenario(scenario))
