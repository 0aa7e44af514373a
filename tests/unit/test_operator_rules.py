"""The operator's levers in the pure planner: drains with a grace, kills, the per-cycle share
of drain deletions, the new meaning of ``shutdown_time``; the MJF ``shutdowntime`` a drain
publishes; what status says of foreign usage."""

from __future__ import annotations

from typing import Any

import pytest

from cloudvac.model.cloud import Limits
from cloudvac.model.records import Drain, ProjectRoom, SpaceHistory, drain_deadline
from cloudvac.model.states import ShutdownMessage
from cloudvac.web.mjf import job_features, machine_features
from tests.unit.test_planner import MT_OPTS, NOW, S, make_space, observed, record, run, run_at

MTS: dict[str, dict[str, Any]] = {"belle": MT_OPTS, "t2k": MT_OPTS}


def history(names: list[str], drains: dict[str, Drain], mt: str = "belle",
            **extra: Any) -> SpaceHistory:
    return SpaceHistory(machines={n: record(n, mt=mt, heartbeat_at=NOW, **extra)
                                  for n in names}, drains=drains)


@pytest.mark.parametrize(("drain", "deleted"), [
    (Drain("belle", NOW - 100, 200), False),  # grace not over: the pilot finishes
    (Drain("belle", NOW - 100, 100), True),  # deadline reached
    (Drain("*", NOW - 100, 200), False),
    (Drain("*", NOW - 300, 200), True),
    (Drain("t2k", NOW - 300, 0), False),  # another machinetype's drain
])
def test_a_drain_deletes_only_once_its_grace_has_passed(drain: Drain, deleted: bool) -> None:
    space = make_space(MTS)
    result = run(space, [observed("m")], history(["m"], {drain.machinetype: drain}))
    assert [d.reason for d in result.deletes] == (["drained"] if deleted else [])
    if deleted:
        assert result.deletes[0].message == ShutdownMessage(100, "Drained by operator")
    # from the drain on, the drained machinetypes create nothing
    drained = {"belle", "t2k"} if drain.machinetype == "*" else {drain.machinetype}
    assert not drained & {c.machinetype for c in result.creates}
    assert {n for n, st in result.status.items() if "drained" in st.blocked} == drained


def test_the_earlier_of_space_and_machinetype_drain_decides() -> None:
    drains = {"*": Drain("*", NOW - 10, 1000), "belle": Drain("belle", NOW - 10, 5)}
    assert drain_deadline(drains, "belle") == NOW - 5
    assert drain_deadline(drains, "t2k") == NOW + 990
    assert drain_deadline({}, "belle") is None
    result = run(make_space(MTS), [observed("m"), observed("n", mt="t2k")],
                 SpaceHistory(machines={"m": record("m", heartbeat_at=NOW),
                                        "n": record("n", mt="t2k", heartbeat_at=NOW)},
                              drains=drains))
    assert [(d.name, d.reason) for d in result.deletes] == [("m", "drained")]


@pytest.mark.parametrize(("seen", "extra", "reason"), [
    (observed("m", S.STOPPED), {}, "stopped"),  # ended by itself: cleaned as usual
    (observed("m", started=NOW - 500), {"heartbeat_at": NOW - 200}, "heartbeat"),
    (observed("m", started=NOW - 1001), {}, "wallclock"),
])
def test_a_machines_own_reason_comes_before_the_drain(seen: Any, extra: dict[str, Any],
                                                      reason: str) -> None:
    hist = SpaceHistory(machines={"m": record("m", seen.state, **{"heartbeat_at": NOW,
                                                                   **extra})},
                        drains={"*": Drain("*", NOW - 10, 0)})
    assert [d.reason for d in run(make_space(MTS), [seen], hist).deletes] == [reason]


@pytest.mark.parametrize(("machines", "per_cycle"), [(4, 4), (30, 10), (248, 25)])
def test_a_drain_deletes_a_tenth_of_the_space_per_cycle_at_most(machines: int,
                                                               per_cycle: int) -> None:
    """At least 10 a cycle; a tenth of the space's machines (here 248 + 2) when that is
    more; a stopped machine or a kill is never held back by that share."""
    space = make_space(MTS)
    names = [f"m{i:03d}" for i in range(machines)]
    seen = [observed(n) for n in names]
    hist = history(names, {"*": Drain("*", NOW - 10, 0)})
    extra = {"x": record("x", S.STOPPED, heartbeat_at=NOW), "k": record(
        "k", heartbeat_at=NOW, kill_requested_at=NOW - 1, kill_reason="bad node")}
    hist = SpaceHistory(machines={**hist.machines, **extra}, drains=hist.drains)
    result = run(space, [*seen, observed("x", S.STOPPED), observed("k")], hist)
    reasons = [d.reason for d in result.deletes]
    assert reasons.count("drained") == per_cycle
    assert reasons.count("stopped") == 1 and reasons.count("killed") == 1
    # the next cycle takes the next share (the deleted ones are being deleted now)
    left = {r.name: r for r in result.records.values()}
    later = run_at(NOW + 60, space, seen, SpaceHistory(
        machines={**hist.machines, **left}, drains=hist.drains))
    assert [d.reason for d in later.deletes].count("drained") == min(
        per_cycle, machines - per_cycle)


@pytest.mark.parametrize("state", [S.RUNNING, S.STARTING, S.UNKNOWN])
def test_a_kill_deletes_at_the_next_cycle_with_the_reason_and_no_backoff(state: S) -> None:
    hist = SpaceHistory(machines={"m": record("m", state, heartbeat_at=NOW, started_at=NOW - 5,
                                              kill_requested_at=NOW - 1,
                                              kill_reason="suspected bad node")})
    result = run(make_space(MTS), [observed("m", state, started=NOW - 5)], hist)
    (deletion,) = result.deletes
    assert deletion.reason == "killed"
    assert deletion.message == ShutdownMessage(100, "Killed by operator: suspected bad node")
    assert "suspected bad node" in deletion.event.message
    assert result.aborts == {}  # an operator's kill is no reason for the VO to back off


def test_a_kill_already_being_deleted_waits_for_the_delete_retry() -> None:
    hist = SpaceHistory(machines={"m": record("m", heartbeat_at=NOW, kill_requested_at=NOW - 9,
                                              delete_requested_at=NOW - 5)})
    assert run(make_space(MTS), [observed("m")], hist).deletes == []


@pytest.mark.parametrize("where", ["space", "machinetype"])
def test_a_passed_shutdown_time_stops_creation_and_deletes_nothing(where: str) -> None:
    """VCycle's meaning: no new machines after it.  Running machines are not deleted when
    it passes (they were, with "100 Passed shutdowntime"); they end at their wallclock."""
    at = {"shutdown_time": NOW - 1}
    space = make_space({"belle": {**MT_OPTS, **at}}) if where == "machinetype" else \
        make_space({"belle": MT_OPTS}, **at)
    hist = history(["m", "old"], {})
    seen = [observed("m"), observed("old", started=NOW - 1001)]
    result = run(space, seen, hist)
    assert [(d.name, d.reason) for d in result.deletes] == [("old", "wallclock")]
    assert result.creates == []
    assert result.status["belle"].blocked.endswith("shutdown_time passed")


def test_mjf_shutdowntime_is_the_drain_deadline_when_earlier() -> None:
    space = make_space({"belle": {**MT_OPTS, "max_wallclock_seconds": 7200}},
                       shutdown_time=NOW + 60)
    mt = space.machinetypes["belle"]
    rec = record("m", started_at=NOW - 100)
    wallclock_end = str(int(NOW - 100 + 7200))
    # shutdown_time stops creations only: it is not published to running machines
    assert machine_features(space, mt, rec)["shutdowntime"] == wallclock_end
    drained = machine_features(space, mt, rec, NOW + 600)
    assert drained["shutdowntime"] == str(int(NOW + 600))
    assert job_features(space, mt, rec, NOW + 600)["shutdowntime_job"] == str(int(NOW + 600))
    # a drain whose deadline is after the wallclock end changes nothing
    assert machine_features(space, mt, rec, NOW + 10**6)["shutdowntime"] == wallclock_end


@pytest.mark.parametrize(("room", "blocked"), [
    (ProjectRoom(0, foreign_processors=10, room_processors=2, room_instances=5,
                 smallest_processors=4), True),
    (ProjectRoom(0, 10, 4, 5, 4), False),
    (ProjectRoom(0, 0, None, 0, 1), True),  # foreign servers fill the instance quota
    (ProjectRoom(0, 0, None, None, 1), False),  # no quota
    (ProjectRoom(0, 99, 0, 0, 0), False),  # no machinetype creates: nothing to say
])
def test_foreign_usage_that_leaves_no_room_is_said(room: ProjectRoom, blocked: bool) -> None:
    assert room.blocked is blocked
    assert bool(room.note()) is blocked
    if blocked and room.room_processors is not None:
        assert "10 processors" in room.note() and "smallest flavor (4)" in room.note()


def test_the_planner_counts_foreign_usage_against_the_space_limit() -> None:
    """What the room note explains: foreign processors fill the space too."""
    space = make_space({"belle": {"target_share": 1}}, processors_limit=4)
    result = run(space, limits=Limits(foreign_processors=4))
    assert result.creates == [] and result.status["belle"].blocked == \
        "space processors_limit reached"
