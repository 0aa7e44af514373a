"""Who owned a space when, from the managers' own logs, to audit the sim's record of
creates and deletes (``/_sim/state?audit=1``: time, user, project).

Every lease change is logged by the keeper (``engine/leases.py``) with its millisecond
timestamp: ``space=S ... lease acquired|released|lost by instance I``.  An instance logs
an acquisition after the round that made it committed, and cycles a space only after
that round: so each of its acts on the space comes after that line.  An act is the
owner's when the newest acquisition of its space logged before it is its own slot's
(from any of the slot's processes) and the slot did not release the space in between.
This is exact where the lease samples (every 0.2-0.6 s) are not: a space released by one
instance, taken by another and acted on within one sampling gap looked like a non-owner
act.  Its blind spot is the time between another instance's acquisition and its log line
(one round, milliseconds): an act by the old owner in it is not caught.
"""

from __future__ import annotations

import bisect
import datetime
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ cloudvac\.engine\.leases "
                   r"space=(\S+) .* lease (acquired|released|lost) by instance ")

Event = tuple[float, str, int]  # (time, kind, slot)


def lease_events(logs: Mapping[int, Iterable[Path]]) -> dict[str, list[Event]]:
    """Per space, the lease events of every slot's processes (``slot -> log files``), in
    time order."""
    events: dict[str, list[Event]] = {}
    for slot, paths in logs.items():
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                found = _LINE.match(line)
                if found is None:
                    continue
                stamp, space, kind = found.groups()
                at = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events.setdefault(space, []).append((at, kind, slot))
    for series in events.values():
        series.sort()
    return events


def non_owner_acts(audit: Iterable[Mapping[str, Any]], events: Mapping[str, list[Event]],
                   user_slot: Mapping[str, int], space_of: Mapping[str, str]
                   ) -> list[dict[str, Any]]:
    """The audited acts (``at``, ``user``, ``project``) not made by the space's owner."""
    bad = []
    for op in audit:
        space, slot = space_of[op["project"]], user_slot[op["user"]]
        series = events.get(space, [])
        before = series[:bisect.bisect_right(series, (op["at"], "~", 1 << 30))]
        acquired = [e for e in before if e[1] == "acquired"]
        owner = acquired[-1][2] if acquired else None
        released = owner == slot and any(
            e[1] == "released" and e[2] == slot and e[0] > acquired[-1][0] for e in before)
        if owner != slot or released:
            bad.append({**op, "space": space, "slot": slot, "owner": owner,
                        "events_before": before[-4:]})
    return bad
