"""A server first listed after its VM powered off still started (found by the chaos suite,
tests/chaos: a 6 s job ran between two listings, and its machine was never accounted,
because the adapter dropped Nova's ``launched_at`` unless the server was ACTIVE)."""

from __future__ import annotations

import datetime

import msgspec

from cloudvac.clouds import nova
from cloudvac.clouds.novalist import observe
from cloudvac.model.states import MachineState

T0 = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
OURS = {"cloudvac:space": "sp", "cloudvac:manager": "m1", "cloudvac:machinetype": "belle"}


def server(status: str, launched: float | None) -> nova.Server:
    doc = {"id": "s1", "name": "cloudvac-abc-s1", "status": status, "updated": "2026-11-25T12:"
           "01:00Z", "created": "2026-11-25T11:59:00Z", "metadata": OURS, "flavor": {"vcpus": 1},
           "OS-SRV-USG:launched_at": None if launched is None else
           datetime.datetime.fromtimestamp(launched, datetime.UTC).strftime(
               "%Y-%m-%dT%H:%M:%S.%f")}
    return msgspec.convert(doc, nova.Server)


def test_a_stopped_server_keeps_its_launch_time() -> None:
    seen = observe(server("SHUTOFF", T0))
    assert seen.state is MachineState.STOPPED
    assert seen.started_at == T0


def test_a_running_server_has_its_launch_time_and_a_building_one_none() -> None:
    assert observe(server("ACTIVE", T0)).started_at == T0
    assert observe(server("BUILD", None)).started_at is None
