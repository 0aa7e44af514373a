"""The chaos suite's owner audit from the managers' lease log lines (tests/chaos/leaselog.py)."""

from __future__ import annotations

import datetime
from pathlib import Path

from tests.chaos.leaselog import lease_events, non_owner_acts

DAY = "2026-11-29 10:00:"


def line(second: str, kind: str, space: str = "s1") -> str:
    level = "WARNING" if kind == "lost" else "INFO"
    return (f"{DAY}{second} {level} cloudvac.engine.leases space={space} machinetype=- "
            f"machine=- lease {kind} by instance vm-1-abc (2 live instances, quota 1)\n")


def at(second: str) -> float:
    return datetime.datetime.strptime(DAY + second, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_acts_are_checked_against_the_newest_acquisition(tmp_path: Path) -> None:
    zero, one = tmp_path / "slot-0.log", tmp_path / "slot-1.log"
    zero.write_text(line("01,000", "acquired") + "unrelated line\n" + line("05,000", "released"))
    one.write_text(line("05,200", "acquired"))
    events = lease_events({0: [zero], 1: [one]})
    acts = [{"at": at(s), "user": u, "project": "p1"} for s, u in (
        ("02,000", "u0"),   # the owner
        ("05,100", "u0"),   # after its own release
        ("05,300", "u1"),   # the new owner, right after taking it
        ("06,000", "u0"),   # the old owner after the takeover
        ("00,500", "u1"))]  # before anybody owned it
    bad = non_owner_acts(acts, events, {"u0": 0, "u1": 1}, {"p1": "s1"})
    assert [(b["slot"], b["owner"]) for b in bad] == [(0, 0), (0, 1), (1, None)]
