"""Run a scenario: the real planner and cycle against the sim cloud on a virtual clock.

Nothing sleeps: each step moves the clock by ``cycle_seconds`` and runs every space's cycle
once, so hours of operation take seconds.  Phases change the simulated clouds' behaviour
(work, failures, quota) for machines created while they are active, as in reality, where a
VM's fate is decided by what it finds when it boots.

A run is a pure function of the scenario and its seeds (``virtual.py``): at each step the
runner moves every simulated server to the clock and writes what its pilot reported since
the last step (heartbeats in one transaction, ``BatchPilots``) before the space's cycle
reads the store; the store calls the engine hands to threads run in line; machine names
come from a seeded generator.  Two runs with the same seeds give the same rows.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.clouds.simpilots import BatchPilots
from cloudvac.config.models import SimMachinetype, SimSpace, Space
from cloudvac.engine.cycle import CycleReport, SpaceCycle
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.naming import machine_name
from cloudvac.simulate.scenario import Scenario
from cloudvac.simulate.virtual import Clock, InlineExecutor, seeded_namer, space_seed
from cloudvac.store import Store

__all__ = ["Clock", "Row", "as_dicts", "run", "run_scenario", "simulate"]


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


def _behaviour(space: Space, scenario: Scenario, seconds: float, seed: int | None = None
               ) -> tuple[SimSpace, dict[str, SimMachinetype]]:
    base = space.sim or SimSpace()
    space_options: dict[str, object] = {} if seed is None else {"seed": seed}
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


async def run_scenario(scenario: Scenario, start: float = 1_800_000_000.0,
                       seed: int | None = None) -> list[Row]:
    """Run ``scenario`` from the virtual time ``start`` on a throwaway store (``seed``: see
    ``simulate``)."""
    with tempfile.TemporaryDirectory(prefix="cloudvac-sim-",
                                     dir="/dev/shm" if Path("/dev/shm").is_dir() else None
                                     ) as state:
        store = Store(f"sqlite:///{state}/simulate.db")
        try:
            return await simulate(scenario, store, start, seed)
        finally:
            store.close()


async def simulate(scenario: Scenario, store: Store, start: float,
                   seed: int | None = None) -> list[Row]:
    """Run ``scenario`` on ``store`` from the virtual time ``start``: every time written
    (records, events, heartbeats) is a virtual one.  ``seed`` replaces every space's
    ``sim_seed`` (each space its own stream); without it, the scenario's seeds are used,
    and a space without one makes the run unrepeatable.  The running loop's default
    executor becomes an ``InlineExecutor`` (the loop is the simulation's alone)."""
    settings = scenario.config.settings
    assert settings is not None
    asyncio.get_running_loop().set_default_executor(InlineExecutor())
    seeds = _seeds(scenario, seed)
    clock = Clock(start)
    tools = CycleTools(store, EngineMetrics(), clock=clock, monotonic=clock,
                       namer=machine_name if None in seeds.values()
                       else seeded_namer(repr(sorted(seeds.items()))))
    pilots = BatchPilots(store)
    runners: dict[str, tuple[Space, SimCloud, SpaceCycle]] = {}
    for name, space in scenario.config.spaces.items():
        sim, mts = _behaviour(space, scenario, 0.0, seeds[name])
        project = SimProject(options=sim, machinetypes=mts, clock=clock)
        cloud = SimCloud(project, (name, settings.manager_id), pilots, options=sim)
        runners[name] = (space, cloud, SpaceCycle(cloud, settings, tools))
    rows: list[Row] = []
    steps = int(scenario.hours * 3600 / scenario.cycle_seconds)
    for _ in range(steps):
        seconds = clock.now - start
        for space, cloud, cycle in runners.values():
            sim, mts = _behaviour(space, scenario, seconds, seeds[space.name])
            cloud.reconfigure(sim, mts)
            cloud.project.advance()  # the pilots' reports due by now reach the store
            await cloud.project.deliver()  # before the cycle reads it
            pilots.flush()
            report = await cycle.run(space)
            if report.ok:
                rows.extend(_rows(report, round(seconds / 3600, 4), space.name))
        clock.now += scenario.cycle_seconds
    pilots.flush()  # what the last cycles' calls delivered
    return rows


def _seeds(scenario: Scenario, seed: int | None) -> dict[str, int | None]:
    """Each space's sim seed: derived from ``seed`` if given, else the scenario's own."""
    return {name: space_seed(seed, name) if seed is not None
            else (space.sim or SimSpace()).seed
            for name, space in scenario.config.spaces.items()}


def _rows(report: CycleReport, hours: float, space: str) -> list[Row]:
    return [Row(hours=hours, space=space, machinetype=mt,
                starting=status.machines.get("starting", 0) + status.machines.get("intent", 0),
                running=status.machines.get("running", 0), processors=status.processors,
                actual_share=round(status.actual_share, 4),
                target_share=round(status.target_share, 4), backoff=status.held,
                created=report.created, deleted=report.deleted)
            for mt, status in report.status.items()]


def as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]


def run(scenario: Scenario, seed: int | None = None) -> list[Row]:
    return asyncio.run(run_scenario(scenario, seed=seed))
