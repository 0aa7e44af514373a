"""The planner's memo of deletion rules (``rules.RuleMemo``): each rule's ``after`` is a
true lower bound of when it may fire, and a plan made with the memo carried from cycle to
cycle is the plan made without it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.decide import decide
from cloudvac.engine.planner import Observation
from cloudvac.engine.rules import QUIET_MARGIN, RULES, RuleContext, RuleMemo
from cloudvac.model.cloud import Flavor, Limits, ObservedMachine
from cloudvac.model.records import Drain, MachineRecord, SpaceHistory
from cloudvac.model.states import MachineState

S = MachineState
T0 = 1_700_000_000.0
SMALL = Flavor("m1.small", 1, 2048)


def make_space(**mt: Any) -> Space:
    options: dict[str, Any] = {"target_share": 1, "max_wallclock_seconds": 3000,
                               "fizzle_seconds": 60, "heartbeat_file": "heartbeat",
                               "heartbeat_seconds": 120, "max_starting_seconds": 300, **mt}
    belle = Machinetype(name="belle", space="s.example", **options)
    return Space(name="s.example", api="sim", flavor_names=["m1.small"],
                 machinetypes={"belle": belle}, orphan_seconds=900)


offsets = st.one_of(st.none(), st.integers(-4000, 100).map(float),
                    st.floats(-4000, 100, allow_nan=False))
states = st.sampled_from(list(MachineState))


@settings(max_examples=400, deadline=None)
@given(state=states, machinetype=st.sampled_from(["belle", "gone-mt"]), created=offsets,
       started=offsets, adopted=offsets, beat=offsets, killed=st.booleans(),
       drain=offsets, removed=offsets, heartbeat=st.sampled_from([None, 120, 10]),
       delta=st.floats(-5000, 5000, allow_nan=False))
def test_no_rule_fires_before_its_bound(  # noqa: PLR0913 - one argument per drawn field
        state: S, machinetype: str, created: float | None, started: float | None,
        adopted: float | None, beat: float | None, killed: bool, drain: float | None,
        removed: float | None, heartbeat: int | None, delta: float) -> None:
    space = make_space(heartbeat_file="heartbeat" if heartbeat else None,
                       heartbeat_seconds=heartbeat)

    def at(offset: float | None) -> float | None:
        return None if offset is None else T0 + offset

    record = MachineRecord(space=space.name, name="m", machinetype=machinetype, state=state,
                           created_at=at(created), started_at=at(started),
                           adopted_at=at(adopted), heartbeat_at=at(beat),
                           kill_requested_at=T0 if killed else None)
    drains = {} if drain is None else {"belle": Drain("belle", T0 + drain, 30.0)}
    gone = {} if removed is None else {"gone-mt": T0 + removed}
    base = RuleContext(space, space.machinetypes.get(machinetype), record, T0, drains, gone)
    for rule in RULES:
        if rule.states is not None and state not in rule.states:
            continue
        bound = rule.after(base)
        for now in (T0 + delta, bound - QUIET_MARGIN / 2, bound - 2 * QUIET_MARGIN):
            if now != now or abs(now) == float("inf"):
                continue
            ctx = replace(base, now=now)
            assert not (rule.applies(ctx) and now < bound - QUIET_MARGIN), (rule.name, now,
                                                                            bound)


def observed(name: str, started: float) -> ObservedMachine:
    return ObservedMachine(cloud_id=f"id-{name}", name=name, machinetype="belle",
                           state=S.RUNNING, processors=1, created_at=started - 10,
                           started_at=started)


def test_a_plan_with_the_memo_is_the_plan_without_it() -> None:
    """Machines cross their wallclock and heartbeat limits, heartbeats arrive (new
    records), a drain comes and goes, an operator kills one: cycle after cycle, the memo's
    plan deletes what the plain plan deletes, for the same reasons, and keeps the rest."""
    space = make_space()
    machines = {f"m{i}": observed(f"m{i}", T0 - 100 * i) for i in range(40)}
    records = {m.name: MachineRecord(space=space.name, name=m.name, machinetype="belle",
                                     state=S.RUNNING, cloud_id=m.cloud_id,
                                     created_at=m.created_at, started_at=m.started_at,
                                     heartbeat_at=T0) for m in machines.values()}
    memo, deleted = RuleMemo(), []
    for step in range(60):
        now = T0 + 50.0 * step
        for name in records:  # a heartbeat every 2nd, 3rd or 4th cycle (4th: too late)
            if step % (2 + int(name[1:]) % 3) == 0:
                records[name] = replace(records[name], heartbeat_at=now)
        if step == 20:
            records["m0"] = replace(records["m0"], kill_requested_at=now)
        drains = {"belle": Drain("belle", now - 100.0)} if step == 45 else {}
        history = SpaceHistory(machines=dict(records), drains=drains)
        plain = Observation(list(machines.values()), Limits(), {"belle": SMALL})
        with_memo = replace(plain, memo=memo)
        want, got = decide(space, plain, history, now), decide(space, with_memo, history, now)
        assert [(d.name, d.reason) for d in got.plan.deletes] == \
            [(d.name, d.reason) for d in want.plan.deletes], step
        assert got.plan.status == want.plan.status and got.changes == want.changes, step
        for d in want.plan.deletes:  # deleted, and gone by the next listing
            del records[d.name], machines[d.name]
            deleted.append((step, d.name, d.reason))
    reasons = {reason for _, _, reason in deleted}
    assert reasons == {"heartbeat", "killed", "drained", "wallclock"}, deleted
    assert len({step for step, _, _ in deleted}) > 5, deleted  # spread over the cycles


def test_the_memo_spares_the_walk_until_the_quiet_time() -> None:
    """A record judged once is not judged again before its quiet time, is judged again
    after it, and a new record (or a new configuration) is judged at once."""
    space = make_space()
    record = MachineRecord(space=space.name, name="m", machinetype="belle", state=S.RUNNING,
                           created_at=T0 - 10, started_at=T0, heartbeat_at=T0)
    memo = RuleMemo()
    memo.start(space, {}, {})
    ctx = memo.judge(record, T0)
    assert ctx is not None
    memo.note(ctx)
    memo.start(space, {}, {})
    assert memo.judge(record, T0 + 100) is None  # heartbeat_seconds 120: quiet till T0+120
    memo.start(space, {}, {})
    assert memo.judge(record, T0 + 120) is not None  # its quiet time came
    memo.start(space, {}, {})
    assert memo.judge(replace(record, heartbeat_at=T0 + 50), T0 + 100) is not None
    memo.start(make_space(max_wallclock_seconds=10), {}, {})
    assert memo.judge(record, T0 + 100) is not None
