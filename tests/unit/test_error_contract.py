"""The error contract: adapters translate only their libraries' exceptions; anything else
is a bug that fails the space's cycle visibly (traceback logged, counted), never a silent
retry.  Rendering errors share one class the cycle catches by name."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import msgspec
import pytest
from keystoneauth1 import exceptions as ks_exc

from cloudvac.clouds.factory import CloudFactory
from cloudvac.clouds.openstack import OpenStackCloud
from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.context.errors import RenderError
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.cycle import SpaceCycle
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.errors import Retryable
from cloudvac.model.observer import NullObserver
from cloudvac.model.states import MachineState
from cloudvac.store import Store


def openstack_space(tmp_path: Path) -> Space:
    secret = tmp_path / "password"
    secret.write_text("not-a-real-password\n")
    os.chmod(secret, 0o600)
    options = OpenStackSpace(auth="password", auth_url="http://127.0.0.1:9/v3",
                             username="u", password_file=secret, project_name="p")
    mt = Machinetype(name="belle", space="o.example", target_share=1)
    return Space(name="o.example", api="openstack", openstack=options,
                 flavor_names=["m1.small"], machinetypes={"belle": mt})


def test_library_errors_are_translated_and_bugs_are_not(tmp_path: Path) -> None:
    cloud = OpenStackCloud(openstack_space(tmp_path), Settings(), NullObserver())

    def raising(exc: BaseException) -> object:
        def call() -> object:
            raise exc
        return asyncio.run(cloud._call("list", call))

    try:
        with pytest.raises(Retryable, match="cannot reach the cloud"):
            raising(ks_exc.ConnectFailure("refused"))
        with pytest.raises(Retryable, match="not what Nova sends"):
            raising(msgspec.DecodeError("truncated"))
        with pytest.raises(KeyError):  # a bug: not translated, not retried
            raising(KeyError("servers"))
    finally:
        asyncio.run(cloud.close())


class BuggyRenderer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, space: Space, mt: Machinetype, name: str) -> str:
        raise self.error


def sim_space() -> Space:
    mt = Machinetype(name="belle", space="s.example", target_share=1)
    return Space(name="s.example", api="sim", flavor_names=["m1.small"],
                 processors_limit=2, machinetypes={"belle": mt})


def run_cycle(tmp_path: Path, render: BuggyRenderer) -> tuple[Store, SpaceCycle]:
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    tools = CycleTools(store, EngineMetrics(), render=render)
    cloud = SimCloud(SimProject(), ("s.example", "cloudvac"))
    return store, SpaceCycle(cloud, Settings(state_dir=tmp_path), tools)


def test_a_render_error_refuses_the_machinetype_without_an_intent(tmp_path: Path) -> None:
    store, cycle = run_cycle(tmp_path, BuggyRenderer(RenderError("s.example/belle: bad")))
    report = asyncio.run(cycle.run(sim_space()))
    assert report.ok and report.created == 0 and report.create_failures == 1
    assert [m for m in store.machines() if m.state is MachineState.INTENT] == []
    errors = [e.message for e in store.events() if e.kind == "error"]
    assert errors == ["user_data not rendered: s.example/belle: bad"]
    store.close()


def test_a_bug_while_rendering_fails_the_cycle_visibly(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Not a RenderError: a bug.  The daemon logs its traceback, counts it as a crash and
    records the error; nothing is created."""
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    config = tmp_path / "conf"
    config.mkdir()
    (config / "00.conf").write_text(f"[settings]\nstate_dir = {tmp_path}\ncycle_seconds = 0.2\n")
    (config / "10.conf").write_text("[space s.example]\napi = sim\nflavor_names = m1.small\n"
                                    "processors_limit = 2\n[machinetype s.example belle]\n"
                                    "target_share = 1\n")
    metrics = EngineMetrics()
    tools = CycleTools(store, metrics, render=BuggyRenderer(KeyError("vo")))
    daemon = Daemon(ConfigSource(config), Settings(state_dir=tmp_path), tools,
                    CloudFactory(metrics))
    caplog.set_level(logging.ERROR, "cloudvac")
    asyncio.run(daemon.run(cycles=1))
    crashes = metrics.cycles.labels("s.example", "crash")._value.get()
    assert crashes == 1
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)
    assert any("internal error KeyError" in e.message for e in store.events())
    assert [m for m in store.machines() if m.state is MachineState.INTENT] == []
    store.close()
