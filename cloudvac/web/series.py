"""Running machines and kHS06 over time, per VO and per site, for the dashboard's plots.

Computed from the machines' own records (start and end times, HS06) in the store rather
than from samples a process keeps: the history survives a page reload, a restart of the
daemon and a separate ``cloudvac web`` host, and costs no extra state or sampler to keep
consistent.  The store keeps ended machines for 30 days (``service.HISTORY_SECONDS``); the
plots show at most the last ``MAX_WINDOW_SECONDS``, starting at the first machine seen
running in it (a young installation, such as the demo, fills its plots at once).  One
sweep over the records, sorted once: O(machines · log machines).

Pure: the caller reads the records and the configuration, and gives the time.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cloudvac.config.models import Space
from cloudvac.model.records import MachineRecord

POINTS = 120
MAX_WINDOW_SECONDS = 86400.0
MIN_WINDOW_SECONDS = 30.0
EMPTY_WINDOW_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Series:
    """Stacked values of several groups (VOs, sites) at the same times."""

    title: str
    unit: str
    times: tuple[float, ...]
    values: Mapping[str, tuple[float, ...]]
    """Group -> its value at each of ``times``, groups in the order to stack them."""

    def peak(self, group: str) -> float:
        return max(self.values[group], default=0.0)


@dataclass(frozen=True, slots=True)
class Interval:
    start: float
    end: float
    machine: MachineRecord


def running_intervals(machines: Sequence[MachineRecord]) -> list[Interval]:
    """When each machine ran: from its start to its end (still running: no end)."""
    found: list[Interval] = []
    for m in machines:
        if m.started_at is None:
            continue
        ended = m.ended_at
        end = float("inf") if ended is None else ended
        if end > m.started_at:
            found.append(Interval(m.started_at, end, m))
    return found


def sample_times(intervals: Sequence[Interval], now: float,
                 points: int = POINTS) -> tuple[float, ...]:
    """``points`` times, evenly spaced up to ``now``, from the first start among machines
    still running within the last ``MAX_WINDOW_SECONDS`` (an hour back when none)."""
    earliest = now - MAX_WINDOW_SECONDS
    starts = [i.start for i in intervals if i.end > earliest]
    since = max(earliest, min(starts)) if starts else now - EMPTY_WINDOW_SECONDS
    since = min(since, now - MIN_WINDOW_SECONDS)
    step = (now - since) / (points - 1)
    return (*(since + k * step for k in range(points - 1)), now)


def stacked(intervals: Sequence[Interval], times: Sequence[float],
            group: Callable[[MachineRecord], str],
            weight: Callable[[MachineRecord], float]) -> dict[str, tuple[float, ...]]:
    """Per group, the sum of ``weight`` over its machines running at each time."""
    changes: dict[str, list[tuple[float, float]]] = {}
    for i in intervals:
        w = weight(i.machine)
        steps = changes.setdefault(group(i.machine), [])
        steps.append((i.start, w))
        if i.end != float("inf"):
            steps.append((i.end, -w))
    result: dict[str, tuple[float, ...]] = {}
    for name in sorted(changes):
        steps = sorted(changes[name])
        keys = [t for t, _ in steps]
        totals: list[float] = []
        running = 0.0
        for _, delta in steps:
            running += delta
            totals.append(running)
        values = []
        for t in times:
            k = bisect.bisect_right(keys, t)  # changes at or before t count
            values.append(round(totals[k - 1], 6) if k else 0.0)
        result[name] = tuple(values)
    return result


def vo_of(spaces: Mapping[str, Space]) -> Callable[[MachineRecord], str]:
    """A machine's VO (its machinetype's ``vo``, else the machinetype's name)."""
    def vo(m: MachineRecord) -> str:
        space = spaces.get(m.space)
        mt = space.machinetypes.get(m.machinetype) if space is not None else None
        return mt.vo if mt is not None and mt.vo else m.machinetype
    return vo


def site_of(spaces: Mapping[str, Space]) -> Callable[[MachineRecord], str]:
    """A machine's site (its space's ``site_name``, else the space's name)."""
    def site(m: MachineRecord) -> str:
        space = spaces.get(m.space)
        return space.site_name if space is not None and space.site_name else m.space
    return site


def khs06(m: MachineRecord) -> float:
    return (m.hs06 or 0.0) / 1000.0


def plots(machines: Sequence[MachineRecord], spaces: Mapping[str, Space],
          now: float) -> list[Series]:
    """kHS06 and running machines, per VO and per site, over the same times."""
    intervals = running_intervals(machines)
    times = sample_times(intervals, now)
    intervals = [i for i in intervals if i.end > times[0]]  # the rest add nothing
    found = []
    for by, group in (("VO", vo_of(spaces)), ("site", site_of(spaces))):
        found.append(Series(f"kHS06 delivered per {by}", "kHS06", times,
                            stacked(intervals, times, group, khs06)))
        found.append(Series(f"Running machines per {by}", "machines", times,
                            stacked(intervals, times, group, lambda _: 1.0)))
    return found
