"""Event lines and following the event log (``cloudvac/events.py``), on events made by the
real engine (``decide``) and a real SQLite store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.decide import decide
from cloudvac.engine.planner import Observation
from cloudvac.events import (
    WIDTH,
    Cursor,
    event_line,
    follow,
    lines,
    newer,
    newest,
    what,
    where,
)
from cloudvac.model.cloud import Flavor, Limits, ObservedMachine
from cloudvac.model.naming import machine_name
from cloudvac.model.records import Event, MachineRecord, SpaceHistory
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store

S = MachineState
NOW = 1_700_000_000.0
SPACE = "napoli.infn.it"
OPTS: dict[str, Any] = {"target_share": 1, "max_wallclock_seconds": 1000, "fizzle_seconds": 60,
                        "backoff_seconds": 600, "heartbeat_file": "heartbeat",
                        "heartbeat_seconds": 120, "max_starting_seconds": 300}


def space() -> Space:
    mt = Machinetype(name="belle", space=SPACE, **OPTS)
    return Space(name=SPACE, api="sim", machinetypes={"belle": mt}, flavor_names=["m1.small"],
                 processors_limit=0)


def engine_events(seen: ObservedMachine, record: MachineRecord) -> list[Event]:
    """The events the real engine records for one machine seen as ``seen``."""
    obs = Observation([seen], Limits(), {"belle": Flavor("m1.small", 1, 2048)})
    decision = decide(space(), obs, SpaceHistory(machines={record.name: record}), NOW)
    return list(decision.changes.events)


def machine(state: S, started: float | None = NOW - 500, **extra: Any
            ) -> tuple[ObservedMachine, MachineRecord]:
    name = machine_name(SPACE, "belle")
    seen = ObservedMachine(cloud_id="id-1", name=name, machinetype="belle", state=state,
                           processors=1, created_at=NOW - 600, started_at=started)
    old = MachineRecord(space=SPACE, name=name, machinetype="belle", state=S.RUNNING,
                        processors=1, created_at=NOW - 600, started_at=started, **extra)
    return seen, old


def described(events: list[Event], shutdown: ShutdownMessage | None = None) -> list[str]:
    return [what(e, shutdown) for e in events]


def test_heartbeat_lost_is_said_in_words() -> None:
    events = engine_events(*machine(S.RUNNING, heartbeat_at=NOW - 121))
    assert described(events) == ["deleted: heartbeat lost"]


def test_no_work_shutdown_code_with_its_meaning_and_the_backoff() -> None:
    seen, old = machine(S.STOPPED, shutdown=ShutdownMessage(300, "Nothing to do"),
                        heartbeat_at=NOW - 5)
    events = engine_events(seen, old)
    assert described(events) == ["running → stopped",
                                 "300 Nothing to do (no work) → backoff 600s",
                                 "deleted: stopped"]
    # with the machine's record at hand, the deletion says what the VM reported
    assert what(events[-1], old.shutdown) == "deleted after 300 Nothing to do (no work)"


def test_success_is_not_a_backoff() -> None:
    seen, old = machine(S.STOPPED, shutdown=ShutdownMessage(200, "Success"),
                        heartbeat_at=NOW - 5)
    events = engine_events(seen, old)
    assert described(events, old.shutdown) == ["running → stopped",
                                               "deleted after 200 Success (work done)"]


def test_fizzle_and_boot_failure() -> None:
    events = engine_events(*machine(S.STOPPED, started=NOW - 10))
    assert "fizzled after 10s → backoff 600s" in described(events)
    seen, old = machine(S.FAILED, started=None)
    events = engine_events(replace(seen, fault="No valid host was found"), old)
    assert described(events)[-1] == "deleted: failed to boot: No valid host was found"


def test_other_kinds_and_unknown_messages() -> None:
    def event(kind: str, message: str) -> Event:
        return Event(NOW, SPACE, "belle", "m", kind, message)

    assert what(event("create", "created with flavor m1.large (4 processors)")) == \
        "created: m1.large, 4 processors"
    assert what(event("create", "created with flavor m1.small (1 processors)")) == \
        "created: m1.small, 1 processor"
    assert what(event("listed", "first listed (adopted from its tags), state running")) == \
        "adopted: running"
    assert what(event("error", "create refused\n (QuotaExceeded)")) == \
        "error: create refused (QuotaExceeded)"
    assert what(event("delete", "deleting (killed) in state running: 100 Killed by "
                            "operator: stuck pilot")) == "deleted: killed by operator: stuck pilot"
    assert what(event("delete", "deleting (newrule) in state running: 500 Odd")) == \
        "deleted: newrule, 500 Odd (site/VM problem)"
    assert what(event("surprise", "something new")) == "surprise: something new"
    assert what(event("create", "a wording this module does not know")) == \
        "create: a wording this module does not know"


def test_line_has_time_place_and_fits_the_width() -> None:
    name = machine_name(SPACE, "belle")
    event = Event(NOW, SPACE, "belle", name, "error", "x" * 200)
    line = event_line(event, tz=UTC)
    assert line.startswith(f"22:13:20 {SPACE}/belle/{name.rsplit('-', 1)[1]} error: xxx")
    assert len(line) == WIDTH and line.endswith("…")
    assert len(event_line(event, width=60)) == 60
    assert where(Event(NOW, SPACE, "", "", "error", "")) == SPACE
    assert where(Event(NOW, SPACE, "t2k", "adopted-vm", "gone", "")) == f"{SPACE}/t2k/adopted-vm"


def test_lines_ask_for_the_shutdown_of_deletions_only() -> None:
    asked: list[str] = []

    def shutdown_of(event: Event) -> ShutdownMessage:
        asked.append(event.kind)
        return ShutdownMessage(200, "Success")

    events = [Event(NOW, SPACE, "belle", "m", "delete", "deleting (stopped) in state stopped"),
              Event(NOW, SPACE, "belle", "m", "gone", "no longer listed by the cloud")]
    out = list(lines(events, shutdown_of, tz=UTC))
    assert asked == ["delete"]
    assert out == [f"22:13:20 {SPACE}/belle/m deleted after 200 Success (work done)",
                   f"22:13:20 {SPACE}/belle/m gone"]


class Log:
    """A growing event log read the way ``Store.events`` reads: newest first, at most N."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.asked: list[int] = []

    def add(self, at: float, n: int, kind: str = "create") -> list[Event]:
        new = [Event(at, SPACE, "belle", f"m{len(self.events) + i}", kind, "") for i in range(n)]
        self.events += new
        return new

    def read(self, limit: int) -> list[Event]:
        self.asked.append(limit)
        ordered = sorted(enumerate(self.events), key=lambda p: (p[1].at, p[0]), reverse=True)
        return [e for _, e in ordered[:limit]]


def test_newer_returns_each_event_once_across_equal_times() -> None:
    log = Log()
    first = log.add(NOW, 3)
    fresh, cursor = newer(log.read, Cursor())
    assert fresh == first
    later = log.add(NOW, 2)  # same time as the cursor: new all the same
    fresh, cursor = newer(log.read, cursor)
    assert fresh == later
    assert newer(log.read, cursor)[0] == []
    assert newer(log.read, cursor)[1] == cursor


def test_newer_reads_further_back_when_all_it_got_was_new() -> None:
    log = Log()
    log.add(NOW, 1)
    _, cursor = newer(log.read, Cursor())
    burst = log.add(NOW + 1, 250)
    log.asked.clear()
    fresh, cursor = newer(log.read, cursor, first=100)
    assert fresh == burst and log.asked == [100, 200, 400]
    capped, _ = newer(log.read, Cursor(), first=10, most=40)
    assert len(capped) == 40 and capped[-1] == burst[-1]  # the newest ones are kept


def test_newest_filters_and_its_cursor_skips_what_was_not_shown() -> None:
    log = Log()
    log.add(NOW, 150, kind="listed")
    wanted = log.add(NOW + 1, 3, kind="create")
    log.add(NOW + 2, 150, kind="listed")
    shown, cursor = newest(log.read, 2, lambda e: e.kind == "create")
    assert shown == wanted[1:]
    assert newer(log.read, cursor)[0] == []
    assert newest(log.read, 0)[0] == []


def test_follow_polls_a_bounded_number_of_times_with_the_injected_sleep() -> None:
    log = Log()
    batches = [log.add(NOW, 2)]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        batches.append(log.add(NOW + len(slept), 1))

    got = list(follow(log.read, Cursor(), sleep, poll_seconds=0.25, polls=3))
    assert slept == [0.25, 0.25]
    assert got == batches[0] + batches[1] + batches[2]
    assert len(batches) == 3  # the third poll was the last: no sleep after it


def test_follow_on_a_real_store(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'cloudvac.db'}")
    try:
        def read(limit: int) -> list[Event]:
            return store.events(None, limit)

        def event(i: int) -> Event:
            return Event(NOW, SPACE, "belle", f"m{i}", "gone", "no longer listed by the cloud")

        store.add_events([event(0), event(1)])
        shown, cursor = newest(read, 1)
        assert [e.machine for e in shown] == ["m1"]
        writes = iter([[event(2)], [event(3), event(4)], []])
        got = list(follow(read, cursor, lambda _: store.add_events(next(writes)), polls=3))
        assert [e.machine for e in got] == ["m2", "m3", "m4"]
    finally:
        store.close()


@pytest.mark.parametrize("message", ["", "300", "300 Nothing to do"])
def test_abort_with_odd_text_never_raises(message: str) -> None:
    text = what(Event(NOW, SPACE, "belle", "m", "abort", message))
    assert text.startswith("backoff") or "→ backoff" in text
