"""Table-driven tests of the pure planner (injected clock, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.decide import Decision, decide
from cloudvac.engine.planner import Observation
from cloudvac.model.cloud import Flavor, Limits, ObservedMachine
from cloudvac.model.records import Drain, MachineRecord, SpaceHistory
from cloudvac.model.states import MachineState, ShutdownMessage

S = MachineState
NOW = 1_000_000.0
SMALL = Flavor("m1.small", 1, 2048)
LARGE = Flavor("m1.large", 4, 8192)


def make_space(mts: dict[str, dict[str, Any]] | None = None, **space: Any) -> Space:
    mts = mts if mts is not None else {"belle": {"target_share": 1}}
    machinetypes = {n: Machinetype(name=n, space="s.example", **o) for n, o in mts.items()}
    space.setdefault("flavor_names", ["m1.small"])
    return Space(name="s.example", api="sim", machinetypes=machinetypes, **space)


def observed(name: str, state: S = S.RUNNING, mt: str = "belle", created: float = NOW - 100,
             started: float | None = NOW - 90) -> ObservedMachine:
    """A 1-processor machine (``replace()`` it for more, or a fault)."""
    return ObservedMachine(cloud_id=f"id-{name}", name=name, machinetype=mt, state=state,
                           processors=1, created_at=created,
                           started_at=started if state is not S.STARTING else None)


def record(name: str, state: S = S.RUNNING, mt: str = "belle", **kw: Any) -> MachineRecord:
    base: dict[str, Any] = {"processors": 1, "created_at": NOW - 100, "started_at": NOW - 90}
    base.update(kw)
    return MachineRecord(space="s.example", name=name, machinetype=mt, state=state, **base)


def flavors(space: Space, flavor: Flavor = SMALL) -> dict[str, Flavor]:
    return {n: flavor for n in space.machinetypes}


class Result:
    """One decision, flattened for assertions."""

    def __init__(self, decision: Decision) -> None:
        self.creates = list(decision.plan.creates)
        self.deletes = list(decision.plan.deletes)
        self.status = decision.plan.status
        self.aborts = dict(decision.changes.aborts)
        self.records = {r.name: r for r in decision.changes.records}
        self.events = list(decision.changes.events)


def run(space: Space, machines: list[ObservedMachine] | None = None,
        history: SpaceHistory | None = None, limits: Limits | None = None,
        flavor: Flavor = SMALL) -> Result:
    """The decision at ``NOW``."""
    obs = Observation(machines or [], limits or Limits(), flavors(space, flavor))
    return Result(decide(space, obs, history or SpaceHistory(), NOW))


def run_at(now: float, space: Space, machines: list[ObservedMachine],
           history: SpaceHistory) -> Result:
    """The decision at ``now`` (the small flavor, no cloud limits)."""
    obs = Observation(machines, Limits(), flavors(space))
    return Result(decide(space, obs, history, now))


def intent(name: str, created: float, mt: str = "belle", processors: int = 1,
           hs06: float | None = None) -> MachineRecord:
    return MachineRecord(space="s.example", name=name, machinetype=mt, state=S.INTENT,
                         processors=processors, hs06=hs06, created_at=created)


# --- deletion rules -----------------------------------------------------------------------

MT_OPTS: dict[str, Any] = {"target_share": 1, "max_wallclock_seconds": 1000,
                           "fizzle_seconds": 60, "heartbeat_file": "heartbeat",
                           "heartbeat_seconds": 120, "max_starting_seconds": 300}

DELETION_TABLE = [
    # id, observed machine, record extras, drained, expected rule (None = kept)
    ("running-fresh", observed("m", started=NOW - 50), {}, frozenset(), None),
    ("stopped", observed("m", S.STOPPED), {}, frozenset(), "stopped"),
    ("failed", replace(observed("m", S.FAILED), fault="No valid host"), {}, frozenset(),
     "failed"),
    ("starting-ok", observed("m", S.STARTING, created=NOW - 200), {}, frozenset(), None),
    ("starting-too-long", observed("m", S.STARTING, created=NOW - 400), {}, frozenset(),
     "starting_too_long"),
    ("wallclock", observed("m", started=NOW - 1001), {"heartbeat_at": NOW - 1}, frozenset(),
     "wallclock"),
    ("heartbeat-lost", observed("m", started=NOW - 500), {"heartbeat_at": NOW - 121},
     frozenset(), "heartbeat"),
    ("heartbeat-never", observed("m", started=NOW - 500), {"heartbeat_at": None}, frozenset(),
     "heartbeat"),
    ("heartbeat-ok", observed("m", started=NOW - 500), {"heartbeat_at": NOW - 119},
     frozenset(), None),
    ("heartbeat-grace", observed("m", started=NOW - 100), {"heartbeat_at": None}, frozenset(),
     None),
    ("drained-mt", observed("m"), {"heartbeat_at": NOW}, frozenset({"belle"}), "drained"),
    ("drained-space", observed("m", S.STARTING), {}, frozenset({"*"}), "drained"),
    ("drained-other", observed("m"), {"heartbeat_at": NOW}, frozenset({"t2k"}), None),
    ("unknown-state-old", observed("m", S.UNKNOWN, created=NOW - 5000), {}, frozenset(),
     "unknown_state"),
    ("unknown-state-new", observed("m", S.UNKNOWN, created=NOW - 10), {}, frozenset(), None),
    ("cloud-deleting", observed("m", S.DELETING), {}, frozenset(), None),
    ("delete-pending", observed("m", S.STOPPED), {"delete_requested_at": NOW - 10},
     frozenset(), None),
    ("delete-retry", observed("m", S.STOPPED), {"delete_requested_at": NOW - 400},
     frozenset(), "stopped"),
]


@pytest.mark.parametrize(("seen", "extra", "drained", "expected"),
                         [row[1:] for row in DELETION_TABLE],
                         ids=[row[0] for row in DELETION_TABLE])
def test_deletion_rules(seen: ObservedMachine, extra: dict[str, Any], drained: frozenset[str],
                        expected: str | None) -> None:
    space = make_space({"belle": MT_OPTS})
    hist = SpaceHistory(machines={"m": record("m", seen.state, **extra)},
                        drains={n: Drain(n, NOW - 1) for n in drained})  # grace over
    result = run(space, [seen], hist)
    reasons = [d.reason for d in result.deletes]
    assert reasons == ([expected] if expected else [])


def test_shutdown_time_of_machinetype_stops_creation_and_deletes_nothing() -> None:
    """VCycle's meaning: no new machines after it; running ones go on to their wallclock."""
    space = make_space({"belle": {**MT_OPTS, "shutdown_time": NOW - 1}})
    hist = SpaceHistory(machines={"m": record("m", heartbeat_at=NOW)})
    result = run(space, [observed("m")], hist)
    assert result.deletes == [] and result.creates == []
    assert result.status["belle"].blocked == "shutdown_time passed"


def test_future_shutdown_time_does_not_break_creation() -> None:
    """VCycle bug: a space shutdown_time in the future made every creation fail."""
    space = make_space(shutdown_time=NOW + 3600)
    assert len(run(space).creates) > 0


def test_orphan_machinetype_only_reaped_by_age_or_stop() -> None:
    """Adopted machines of a machinetype in no configuration: orphans, deleted once
    orphan_seconds old (since the cloud created them); tests/unit/test_removal.py has
    the rest."""
    space = make_space()
    young = observed("a", mt="gone-vo", created=NOW - 100)
    old = observed("b", mt="gone-vo", created=NOW - 90000)
    hist = SpaceHistory(machines={
        "a": record("a", mt="gone-vo", adopted_at=NOW - 50, created_at=NOW - 100),
        "b": record("b", mt="gone-vo", adopted_at=NOW - 50, created_at=NOW - 90000)})
    result = run(space, [young, old], hist)
    assert [(d.name, d.reason) for d in result.deletes] == [("b", "orphan")]


def test_delete_records_stop_and_own_message_for_accounting() -> None:
    """VCycle never saw machines it killed as stopped (no accounting): we record the end."""
    space = make_space({"belle": MT_OPTS})
    hist = SpaceHistory(machines={"m": record("m", heartbeat_at=NOW)})
    result = run(space, [observed("m", started=NOW - 2000)], hist)
    update = result.records["m"]
    assert update.stopped_at == NOW and update.delete_requested_at == NOW
    assert update.shutdown == ShutdownMessage(700, "Exceeded max_wallclock_seconds")


# --- shutdown codes, fizzle and backoff ---------------------------------------------------

CODE_TABLE = [
    # code (None = no message), seconds run before stopping, abort expected
    (100, 10, False), (200, 10, False), (200, 5000, False),
    (300, 5000, True), (400, 5000, True), (500, 5000, True), (600, 5000, True),
    (700, 10, True), (700, 5000, False), (None, 10, True), (None, 5000, False),
]


@pytest.mark.parametrize(("code", "ran", "abort"), CODE_TABLE)
def test_shutdown_codes_and_fizzle(code: int | None, ran: float, abort: bool) -> None:
    space = make_space({"belle": {"target_share": 1, "fizzle_seconds": 600}})
    message = ShutdownMessage(code, "text") if code else None
    hist = SpaceHistory(machines={"m": record("m", started_at=NOW - ran, shutdown=message)})
    result = run(space, [observed("m", S.STOPPED, started=NOW - ran)], hist)
    assert ("belle" in result.aborts) is abort
    assert [d.reason for d in result.deletes] == ["stopped"]
    if abort:
        assert result.creates == [] and result.status["belle"].blocked.startswith("backoff")


@pytest.mark.parametrize(("adopted", "abort"), [(True, False), (False, True)])
def test_a_silent_short_life_is_no_evidence_when_adopted(adopted: bool, abort: bool) -> None:
    """A machine that stopped soon after it started and said nothing fizzled, unless it was
    adopted: then what it said went with the store that was lost."""
    space = make_space({"belle": {"target_share": 1, "fizzle_seconds": 600}})
    hist = SpaceHistory(machines={"m": record(
        "m", started_at=NOW - 10, adopted_at=NOW - 5 if adopted else None)})
    result = run(space, [observed("m", S.STOPPED, started=NOW - 10)], hist)
    assert ("belle" in result.aborts) is abort
    assert [d.reason for d in result.deletes] == ["stopped"]


def test_machine_that_vanished_is_gone_after_two_listings_and_evaluated_once() -> None:
    """One listing can miss a server (moving from its build request into its cell between
    two pages): the first miss only marks it; the second makes it gone, judged once."""
    space = make_space({"belle": {"target_share": 1, "fizzle_seconds": 600}})
    hist = SpaceHistory(machines={"m": record("m", started_at=NOW - 10)})
    first = run(space, [], hist)
    missing = first.records["m"]
    assert missing.state is S.RUNNING and missing.missing_since == NOW
    assert first.aborts == {} and [e.kind for e in first.events] == ["missing"]
    assert first.status["belle"].machines == {"running": 1}  # still holds capacity
    second = run_at(NOW + 60, space, [], SpaceHistory(machines={"m": missing}))
    update = second.records["m"]
    assert update.state is S.GONE and update.stopped_at == NOW + 60
    assert "belle" in second.aborts
    hist2 = SpaceHistory(machines={"m": record("m", S.STOPPED, stopped_at=NOW - 5)})
    assert run(space, [observed("m", S.STOPPED)], hist2).aborts == {}


def test_a_machine_listed_again_is_no_longer_missing() -> None:
    space = make_space()
    hist = SpaceHistory(machines={"m": record("m", heartbeat_at=NOW, missing_since=NOW - 60)})
    result = run(space, [observed("m")], hist)
    assert result.records["m"].missing_since is None
    assert result.records["m"].state is S.RUNNING


def test_a_machine_we_deleted_is_gone_at_its_first_absence() -> None:
    space = make_space()
    hist = SpaceHistory(machines={"m": record("m", S.STOPPED, stopped_at=NOW - 30,
                                              delete_requested_at=NOW - 20)})
    result = run(space, [], hist)
    assert result.records["m"].state is S.GONE


def test_adopted_machines_get_a_fresh_grace() -> None:
    """A lost store must never delete healthy VMs: a running VM adopted without a
    heartbeat, and a VM starting for longer than max_starting_seconds, are kept; their
    clocks run from the adoption.  The wallclock still counts from the cloud's start."""
    space = make_space({"belle": {**MT_OPTS, "max_wallclock_seconds": 10_000}})
    beating = observed("a", started=NOW - 5000, created=NOW - 5010)
    starting = observed("b", S.STARTING, created=NOW - 5000)
    ancient = observed("c", started=NOW - 10_001, created=NOW - 10_010)
    first = run(space, [beating, starting, ancient])
    assert [(d.name, d.reason) for d in first.deletes] == [("c", "wallclock")]
    adopted = {n: r for n, r in first.records.items() if n != "c"}
    assert all(r.adopted_at == NOW for r in adopted.values())
    events = [e for e in first.events if e.kind == "listed"]
    assert len(events) == 3 and all("adopted" in e.message for e in events)
    # Within the grace nothing changes; past it, the usual rules apply again.
    later = run_at(NOW + 100, space, [beating, starting], SpaceHistory(machines=adopted))
    assert later.deletes == []
    expired = run_at(NOW + 400, space, [beating, starting], SpaceHistory(machines=adopted))
    assert {d.name: d.reason for d in expired.deletes} == {"a": "heartbeat",
                                                          "b": "starting_too_long"}


BACKOFF = {"target_share": 1, "backoff_seconds": 1000, "fizzle_seconds": 100}
BACKOFF_TABLE = [
    # seconds since abort, machines running (with their age), creates expected
    ("inside-backoff", 500, [], 0),
    ("probe-window-empty", 1050, [], 1),
    ("probe-window-unproven", 1050, [50], 0),
    ("probe-window-proven", 1050, [150], 1),  # still one at a time inside the window
    ("after-window", 1200, [], 10),
]


@pytest.mark.parametrize(("since", "ages", "expected"), [r[1:] for r in BACKOFF_TABLE],
                         ids=[r[0] for r in BACKOFF_TABLE])
def test_backoff_window(since: float, ages: list[float], expected: int) -> None:
    space = make_space({"belle": BACKOFF}, creation_burst_processors=10)
    machines = [observed(f"m{i}", started=NOW - age) for i, age in enumerate(ages)]
    hist = SpaceHistory(machines={m.name: record(m.name, started_at=m.started_at)
                                  for m in machines}, last_abort={"belle": NOW - since})
    assert len(run(space, machines, hist).creates) == expected


def test_quota_refusal_never_sets_backoff() -> None:
    space = make_space()
    result = run(space, limits=Limits(free_processors=0))
    assert result.creates == [] and result.aborts == {}
    assert result.status["belle"].blocked == "cloud quota: no free cores"
    assert result.status["belle"].backoff_until is None


# --- limits -------------------------------------------------------------------------------

def test_burst_defaults_to_ten_percent_of_limit() -> None:
    assert len(run(make_space(processors_limit=200)).creates) == 20


def test_starting_processors_counted_once() -> None:
    """VCycle counted new machines' processors twice against max_starting_processors."""
    space = make_space({"belle": {"target_share": 1, "max_starting_processors": 8}})
    assert len(run(space, flavor=LARGE).creates) == 2


LIMIT_TABLE = [
    ("space-limit", {"processors_limit": 10}, Limits(), 9, "space processors_limit reached"),
    ("foreign-usage", {"processors_limit": 10}, Limits(foreign_processors=5), 4,
     "space processors_limit reached"),
    ("cloud-cores", {}, Limits(free_processors=3), 3, "cloud quota: no free cores"),
    ("cloud-instances", {}, Limits(free_instances=2), 2, "cloud quota: no free instances"),
    ("cloud-ram", {}, Limits(free_ram_mb=4096), 2, "cloud quota: no free RAM"),
    ("space-starting", {"max_starting_processors": 2}, Limits(), 2,
     "space max_starting_processors reached"),
]


@pytest.mark.parametrize(("space_opts", "limits", "expected", "blocked"),
                         [r[1:] for r in LIMIT_TABLE], ids=[r[0] for r in LIMIT_TABLE])
def test_limits(space_opts: dict[str, Any], limits: Limits, expected: int, blocked: str) -> None:
    space = make_space(creation_burst_processors=100, **space_opts)
    hist = SpaceHistory(machines={"m": record("m", heartbeat_at=NOW)})
    result = run(space, [observed("m")], hist, limits=limits)
    assert len(result.creates) == expected
    assert result.status["belle"].blocked == blocked


def test_stale_listing_never_exceeds_limit() -> None:
    """Creates not yet listed (intents) count; repeated cycles with a stale listing stay put."""
    space = make_space(processors_limit=20, creation_burst_processors=100)
    intents: dict[str, MachineRecord] = {}
    for cycle in range(5):
        result = decide(space, Observation([], Limits(), flavors(space)),
                        SpaceHistory(machines=intents), NOW + cycle)
        for i, create in enumerate(result.plan.creates):
            name = f"c{cycle}-{i}"
            intents[name] = intent(name, NOW + cycle, create.machinetype,
                                   create.flavor.processors)
    assert sum(i.processors for i in intents.values()) == 20


def test_expired_intent_is_forgotten() -> None:
    space = make_space(intent_seconds=600)
    result = run(space, history=SpaceHistory(machines={"x": intent("x", NOW - 601)}))
    assert result.records["x"].state is S.GONE
    assert result.records["x"].stopped_at is None  # never ran: no end, no abort
    assert result.aborts == {}
    assert any(e.kind == "intent-expired" for e in result.events)


def test_young_intent_counts_as_starting_until_listed() -> None:
    space = make_space(intent_seconds=600, processors_limit=3, creation_burst_processors=10)
    result = run(space, history=SpaceHistory(machines={"x": intent("x", NOW - 599)}))
    assert "x" not in result.records  # nothing to write: still waiting for the listing
    assert len(result.creates) == 2
    assert result.status["belle"].starting_processors == 3


def test_listed_intent_resolves_and_unknown_listed_machine_is_adopted() -> None:
    space = make_space()
    result = run(space, [observed("a", S.STARTING), observed("b")],
                 SpaceHistory(machines={"a": intent("a", NOW - 5, hs06=10.0)}))
    messages = {e.machine: e.message for e in result.events if e.kind == "listed"}
    assert "adopted" in messages["b"] and "created" in messages["a"]
    assert set(result.records) == {"a", "b"}
    assert result.records["a"].state is S.STARTING and result.records["a"].hs06 == 10.0
    assert result.records["a"].cloud_id == "id-a"


@dataclass(frozen=True)
class SpaceLimits:
    """The space's own limits in the property test below (None: no limit)."""

    processors: int
    burst: int
    max_starting: int | None
    belle: int | None  # processors_limit of machinetype belle


@settings(max_examples=150, deadline=None)
@given(
    own=st.builds(SpaceLimits, processors=st.integers(0, 60), burst=st.integers(1, 40),
                  max_starting=st.none() | st.integers(0, 20),
                  belle=st.none() | st.integers(0, 30)),
    cloud=st.builds(Limits, free_processors=st.none() | st.integers(0, 60),
                    foreign_processors=st.integers(0, 20)),
    running=st.lists(st.tuples(st.sampled_from(["belle", "t2k", "hyperk"]), st.integers(1, 4),
                               st.sampled_from([S.RUNNING, S.STARTING, S.STOPPED])),
                     max_size=15),
)
def test_property_creates_never_exceed_any_limit(
        own: SpaceLimits, cloud: Limits, running: list[tuple[str, int, S]]) -> None:
    limit, burst, max_starting, mt_limit = own.processors, own.burst, own.max_starting, own.belle
    free, foreign = cloud.free_processors, cloud.foreign_processors
    mts: dict[str, dict[str, Any]] = {"belle": {"target_share": 2, "processors_limit": mt_limit},
                                      "t2k": {"target_share": 1}, "hyperk": {"target_share": 1}}
    space = make_space(mts, processors_limit=limit, creation_burst_processors=burst,
                       max_starting_processors=max_starting)
    machines = [replace(observed(f"m{i}", state, mt, started=NOW - 5000), processors=p)
                for i, (mt, p, state) in enumerate(running)]
    hist = SpaceHistory(machines={m.name: record(m.name, m.state, m.machinetype,
                                                 processors=m.processors, heartbeat_at=NOW)
                                  for m in machines})
    result = run(space, machines, hist, limits=cloud)
    new = sum(c.flavor.processors for c in result.creates)
    existing = sum(m.processors for m in machines)
    if new:
        assert existing + foreign + new <= limit
        assert new <= max(burst, 1)
        assert free is None or new <= free
        starting = sum(m.processors for m in machines if m.state is S.STARTING)
        assert max_starting is None or starting + new <= max_starting
        belle_new = sum(c.flavor.processors for c in result.creates if c.machinetype == "belle")
        belle_old = sum(m.processors for m in machines if m.machinetype == "belle")
        assert mt_limit is None or belle_new == 0 or belle_old + belle_new <= mt_limit


# --- shares -------------------------------------------------------------------------------

def simulate(space: Space, cycles: int, flavor_for: dict[str, Flavor], lifetime: float = 30.0,
             step: float = 10.0) -> dict[str, float]:
    """Run the planner against a tiny in-test cloud where machines live ``lifetime`` s."""
    machines: dict[str, ObservedMachine] = {}
    counter = 0
    now = NOW
    for _ in range(cycles):
        for name, m in list(machines.items()):
            if m.started_at is None:
                machines[name] = replace(m, state=S.RUNNING, started_at=now)
            elif now - m.started_at > lifetime:
                machines[name] = replace(m, state=S.STOPPED)
        hist = SpaceHistory(machines={
            n: record(n, m.state, m.machinetype, processors=m.processors,
                      started_at=m.started_at, shutdown=ShutdownMessage(200, "ok"))
            for n, m in machines.items()})
        result = decide(space, Observation(list(machines.values()), Limits(), flavor_for),
                        hist, now).plan
        for d in result.deletes:
            machines.pop(d.name)
        for c in result.creates:
            counter += 1
            name = f"v{counter}"
            machines[name] = ObservedMachine(name, name, c.machinetype, S.STARTING,
                                             c.flavor.processors, created_at=now)
        now += step
    return {n: s.actual_share for n, s in result.status.items()}


def test_shares_converge_weighted_by_hs06() -> None:
    """belle VMs are 4-core, 10 HS06/core; t2k 1-core, 20 HS06/core; targets 2:1:1."""
    mts = {"belle": {"target_share": 2, "hs06_per_processor": 10},
           "t2k": {"target_share": 1, "hs06_per_processor": 20},
           "hyperk": {"target_share": 1, "hs06_per_processor": 10}}
    space = make_space(mts, processors_limit=200, creation_burst_processors=40)
    shares = simulate(space, 30, {"belle": LARGE, "t2k": SMALL, "hyperk": SMALL})
    assert shares["belle"] == pytest.approx(0.5, abs=0.06)
    assert shares["t2k"] == pytest.approx(0.25, abs=0.06)
    assert shares["hyperk"] == pytest.approx(0.25, abs=0.06)


def test_plan_is_deterministic() -> None:
    space = make_space({"a": {"target_share": 1}, "b": {"target_share": 1}})
    first = run(space)
    assert [c.machinetype for c in first.creates] == [c.machinetype for c in run(space).creates]
    assert {c.machinetype for c in first.creates} == {"a", "b"}


def test_a_store_that_went_backwards_deletes_nothing_on_old_evidence() -> None:
    """A restored store holds heartbeats older than the VMs' real ones: every listed
    machine is treated as adopted, so the stale heartbeat kills nothing."""
    space = make_space({"belle": MT_OPTS})
    stale = record("m", heartbeat_at=NOW - 3000, started_at=NOW - 500)
    plain = run(space, [observed("m", started=NOW - 500)], SpaceHistory(machines={"m": stale}))
    assert [d.reason for d in plain.deletes] == ["heartbeat"]  # what a real stale VM gets
    restored = run(space, [observed("m", started=NOW - 500)],
                   SpaceHistory(machines={"m": stale}, restored=True))
    assert restored.deletes == [] and restored.records["m"].adopted_at == NOW
    assert any(e.kind == "error" and "went backwards" in e.message for e in restored.events)
