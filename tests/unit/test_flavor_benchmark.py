"""The flavor's benchmark (``accounting:benchmark_type``/``accounting:benchmark_value``, what
the site's own cloud accounting reports) reaches a machine's HS06 and its accounting record
when the machinetype has no ``hs06_per_processor``; config wins over it, with one warning
per (space, flavor); the sim declares it as ``NAME:VCPUS:RAM_MB:BENCHMARK[:TYPE]``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.clouds.simserver import parse_flavors
from cloudvac.config import load_config_dir
from cloudvac.config.models import SimSpace
from cloudvac.engine.accounting import build
from cloudvac.engine.observe import CloudReader
from cloudvac.engine.planner import machine_hs06
from cloudvac.model.cloud import Flavor
from cloudvac.model.errors import Misconfigured
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from tests.unit.test_planner import make_space, run

BENCHMARKED = Flavor("m1.large", 4, 8192, "3", "HEPSPEC", 11.5)


def test_sim_flavors_declare_a_benchmark_and_its_type() -> None:
    flavors = parse_flavors(["m1.small:1:2048", "m1.large:4:8192:11.5",
                             "m1.xlarge:8:16384:9.25:HEPscore23"])
    assert (flavors["m1.small"].benchmark_type, flavors["m1.small"].benchmark_value) == ("", None)
    assert (flavors["m1.large"].benchmark_type, flavors["m1.large"].benchmark_value) == (
        "HEPSPEC", 11.5)
    assert (flavors["m1.xlarge"].benchmark_type, flavors["m1.xlarge"].benchmark_value) == (
        "HEPscore23", 9.25)


@pytest.mark.parametrize("entry", ["m1:1", "m1:0:2", "m1:1:2:0", "m1:1:2:x", "m1:1:2:3:",
                                   "m1:1:2:3:T:more", "m1:1:2:nan", ":1:2:3"])
def test_bad_sim_flavors_are_refused_by_the_parser_and_the_config(entry: str,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(Misconfigured, match="NAME:VCPUS:RAM_MB"):
        parse_flavors([entry])
    (tmp_path / "a.conf").write_text(f"[space s.example]\napi = sim\nflavor_names = m1\n"
                                     f"sim_flavors = {entry}\n[machinetype s.example a]\n")
    issues = [str(i) for i in load_config_dir(tmp_path).issues]
    assert any("sim_flavors" in i and "NAME:VCPUS:RAM_MB" in i for i in issues), issues


def test_a_config_declaring_a_flavor_benchmark_loads(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("[space s.example]\napi = sim\nflavor_names = m1.b\n"
                                     "sim_flavors = m1.a:1:2048 m1.b:4:8192:11.5:HEPscore23\n"
                                     "[machinetype s.example a]\n")
    loaded = load_config_dir(tmp_path)
    assert not loaded.issues, loaded.issues
    sim = loaded.spaces["s.example"].sim
    assert sim is not None
    assert parse_flavors(sim.flavors)["m1.b"].benchmark_value == 11.5


@pytest.mark.parametrize(("config", "flavor", "hs06"), [
    (10.0, BENCHMARKED, 40.0),  # config wins
    (None, BENCHMARKED, 46.0),  # the flavor's
    (None, Flavor("m1.large", 4, 8192), None),  # unknown
    (10.0, Flavor("m1.large", 4, 8192), 40.0)])
def test_a_machines_hs06(config: float | None, flavor: Flavor, hs06: float | None) -> None:
    space = make_space({"belle": {"target_share": 1, "hs06_per_processor": config}})
    assert machine_hs06(space.machinetypes["belle"], flavor) == hs06
    creates = run(space, flavor=flavor).creates
    assert creates and all(c.hs06 == hs06 for c in creates)


def gone(hs06: float | None) -> MachineRecord:
    return MachineRecord(space="s.example", name="belle-1", machinetype="belle",
                         state=MachineState.GONE, cloud_id="uuid-1", processors=4, hs06=hs06,
                         created_at=900.0, started_at=1000.0, stopped_at=2800.0)


@pytest.mark.parametrize(("config", "row", "benchmark", "source"), [
    (10.0, 40.0, 10.0, "config"),
    (10.0, 46.0, 10.0, "config"),  # config wins over what the row says
    (None, 46.0, 11.5, "flavor"),
    (None, None, None, "")])
def test_the_accounting_records_benchmark_and_its_source(
        config: float | None, row: float | None, benchmark: float | None, source: str,
        tmp_path: Path) -> None:
    space = make_space({"belle": {"target_share": 1, "hs06_per_processor": config}})
    record = build(space, gone(row), {}, 3000.0)
    assert (record.benchmark_per_processor, record.benchmark_source) == (benchmark, source)


def test_config_and_flavor_disagreeing_is_warned_once_per_space_and_flavor(
        caplog: pytest.LogCaptureFixture) -> None:
    options = SimSpace(flavors=["m1.small:1:2048:9", "m1.large:4:8192:11.5"])
    project = SimProject(options)
    space = make_space({"belle": {"target_share": 1, "hs06_per_processor": 10.0,
                                  "flavor_names": ["m1.large"]},
                        "t2k": {"target_share": 1, "hs06_per_processor": 10.0,
                                "flavor_names": ["m1.large"]},
                        "hyperk": {"target_share": 1, "hs06_per_processor": 9.0,
                                   "flavor_names": ["m1.small"]}})
    reader = CloudReader(SimCloud(project, ("s.example", "m"), options=options), 0.0)
    caplog.set_level(logging.WARNING, logger="cloudvac.engine.observe")

    async def cycles() -> None:
        for n in range(3):
            await reader.observe(space, 1000.0 + n, 1000.0 + n)

    asyncio.run(cycles())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # m1.large, once; m1.small agrees with hyperk
    assert warnings[0].startswith("space=s.example machinetype=")
    assert "m1.large declares 11.5 HEPSPEC" in warnings[0] and "using 10" in warnings[0]
