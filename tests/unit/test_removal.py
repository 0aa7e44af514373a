"""Machinetypes and spaces removed from the configuration, and orphans: the pure rules
(``engine/removal.py``, ``engine/rules.py``), through ``decide`` at an injected clock."""

from __future__ import annotations

from typing import Any

from cloudvac.engine.decide import decide
from cloudvac.engine.planner import DRAIN_MIN_PER_CYCLE, Observation
from cloudvac.model.records import Removal, SpaceHistory
from cloudvac.model.states import MachineState
from tests.unit.test_planner import NOW, flavors, make_space, observed, record, run, run_at

S = MachineState
MTS = {"belle": {"target_share": 1}}


def fleet(counts: dict[str, int], **kw: Any) -> tuple[list[Any], SpaceHistory, list[str]]:
    """``counts``: machines per machinetype, created by cloudvac (no ``adopted_at``)."""
    listed, records, names = [], {}, []
    for mt, n in counts.items():
        for i in range(n):
            name = f"{mt}-{i:03d}"
            listed.append(observed(name, mt=mt))
            records[name] = record(name, mt=mt, **kw)
            names.append(name)
    return listed, SpaceHistory(machines=records), names


def with_removals(history: SpaceHistory, *removals: Removal) -> SpaceHistory:
    return SpaceHistory(machines=history.machines,
                        removals={r.machinetype: r for r in removals})


def test_small_removal_goes_ahead_and_is_drained_after_the_grace_at_the_drain_rate() -> None:
    space = make_space(MTS, removal_grace_seconds=600)
    listed, history, _ = fleet({"belle": 40, "gone": 20})  # 20 of 60: within 0.5
    first = run(space, listed, history)
    assert first.deletes == []  # noticed now: the grace starts
    rows = {r.machinetype: r for r in run_decision_rows(space, listed, history)}
    assert rows["gone"].confirmed_at == NOW and rows["gone"].machines == 20
    assert any(e.kind == "removal" and "goes ahead" in e.message for e in first.events)
    history = with_removals(history, rows["gone"])
    assert run_at(NOW + 599, space, listed, history).deletes == []
    later = run_at(NOW + 600, space, listed, history)
    assert {d.reason for d in later.deletes} == {"removed"}
    assert len(later.deletes) == DRAIN_MIN_PER_CYCLE  # the drain rate, not all 20
    assert all(d.record.machinetype == "gone" for d in later.deletes)
    assert later.deletes[0].record.shutdown is not None
    assert later.deletes[0].record.shutdown.text.startswith("Removed from the configuration")


def run_decision_rows(space: Any, listed: Any, history: SpaceHistory) -> list[Removal]:
    return list(decide(space, Observation(listed, flavors=flavors(space)), history,
                       NOW).changes.removals)


def test_removal_over_the_fraction_waits_and_never_deletes_until_confirmed() -> None:
    space = make_space(MTS, removal_grace_seconds=0)
    listed, history, _ = fleet({"belle": 4, "gone": 6})  # 6 of 10 > 0.5
    rows = run_decision_rows(space, listed, history)
    assert [(r.machinetype, r.confirmed_at) for r in rows] == [("gone", None)]
    waiting = with_removals(history, rows[0])
    for later in (NOW, NOW + 86400 * 30):  # a month: still kept, never by age
        result = run_at(later, space, listed, waiting)
        assert [d.name for d in result.deletes if d.record.machinetype == "gone"] == []
    plan = decide(space, Observation(listed, flavors=flavors(space)), waiting, NOW).plan
    assert [(w.machinetype, w.machines, w.total) for w in plan.removal.waiting] == [
        ("gone", 6, 10)]
    confirmed = with_removals(history, Removal("gone", NOW, 6, NOW + 10))
    assert len(run_at(NOW + 10, space, listed, confirmed).deletes) == 6


def test_the_config_flag_or_a_fraction_of_one_confirms() -> None:
    listed, history, _ = fleet({"belle": 1, "gone": 9})
    for options in ({"confirm_removals": True}, {"removal_confirm_fraction": 1.0}):
        rows = run_decision_rows(make_space(MTS, **options), listed, history)
        assert [(r.machinetype, r.confirmed_at) for r in rows] == [("gone", NOW)]
    assert run_decision_rows(make_space(MTS), listed, history)[0].confirmed_at is None


def test_a_machinetype_back_in_the_configuration_cancels_its_removal() -> None:
    space = make_space({"belle": {"target_share": 1}, "gone": {"target_share": 1}})
    listed, history, _ = fleet({"belle": 2, "gone": 2})
    back = with_removals(history, Removal("gone", NOW - 100, 2, NOW - 100))
    result = run(space, listed, back)
    assert result.deletes == []
    changes = decide(space, Observation(listed, flavors=flavors(space)), back, NOW).changes
    assert changes.cancelled_removals == ("gone",)
    assert any("back in the configuration" in e.message for e in changes.events)


def test_a_removal_whose_machines_are_gone_is_dropped() -> None:
    listed, history, _ = fleet({"belle": 2})
    done = with_removals(history, Removal("gone", NOW - 100, 2, NOW - 100))
    space = make_space(MTS)
    changes = decide(space, Observation(listed, flavors=flavors(space)), done, NOW).changes
    assert changes.cancelled_removals == ("gone",)


def test_whole_space_removed_creates_nothing_and_waits_for_confirmation() -> None:
    space = make_space(MTS, removal_grace_seconds=0)
    listed, history, _ = fleet({"belle": 3})
    removed = with_removals(history, Removal("*", NOW, 3))
    result = run(space, listed, removed)
    assert result.creates == [] and result.deletes == []
    assert result.status["belle"].blocked == "space removed from the configuration"
    confirmed = with_removals(history, Removal("*", NOW, 3, NOW))
    assert {d.reason for d in run(space, listed, confirmed).deletes} == {"removed"}


def test_orphans_by_age_with_orphan_seconds_and_adopted_known_ones_kept() -> None:
    space = make_space(MTS, orphan_seconds=3600)
    listed = [observed("o1", mt="other", created=NOW - 3000),
              observed("o2", mt="other", created=NOW - 4000),
              observed("k1", mt="belle", created=NOW - 90000, started=NOW - 80000)]
    history = SpaceHistory(machines={
        "o1": record("o1", mt="other", created_at=NOW - 3000, adopted_at=NOW - 60),
        "o2": record("o2", mt="other", created_at=NOW - 4000, adopted_at=NOW - 60),
        "k1": record("k1", created_at=NOW - 90000, started_at=NOW - 80000,
                     adopted_at=NOW - 60)})
    result = run(space, listed, history)
    assert [(d.name, d.reason) for d in result.deletes] == [("o2", "orphan")]
    assert result.deletes[0].record.shutdown is not None
    assert "orphan" in result.deletes[0].record.shutdown.text.lower()


def test_a_known_orphan_is_adopted_at_its_first_listing() -> None:
    """An orphan of a configured machinetype (another instance crashed after its create):
    adopted by the first cycle that lists it, kept, and counted against the limits."""
    space = make_space(MTS, processors_limit=2)
    result = run(space, [observed("x", created=NOW - 50)], SpaceHistory())
    assert result.records["x"].adopted_at == NOW and result.deletes == []
    assert len(result.creates) == 1  # one more fits the limit of 2, not two
