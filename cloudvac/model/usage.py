"""What accounting records add up to over a time window, grouped (``cloudvac accounting``).

Pure arithmetic on ``AccountingRecord``s.  A machine's time is split at the window's
edges: only the part of its run inside ``[since, until)`` counts, so adjacent windows never
count an hour twice.  Per group:

* ``machines``: machines with some of their run inside the window;
* ``wall_hours``: machine hours inside; ``processor_hours``: the same times processors;
* ``cpu_hours``: the VM's reported CPU time, prorated by the share of the run inside
  (machines that reported none are left out of it and of ``cpu_efficiency``, the CPU
  hours over the processor hours of the machines that reported);
* ``khs06_hours``: benchmark x processors x hours inside, in kHS06 hours (machines without
  a benchmark add nothing); ``average_khs06``: that over the window's length;
* jobs (production / user) and shutdown codes: a machine's, counted in the window where
  it ended (they cannot be split).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cloudvac.model.accounting import AccountingRecord

HOUR = 3600.0


class GroupBy(enum.Enum):
    VO = "vo"
    SITE = "site"
    MACHINETYPE = "machinetype"
    SPACE = "space"
    DIRAC_SITE = "dirac-site"

    def key(self, record: AccountingRecord) -> str:
        if self is GroupBy.MACHINETYPE:
            return f"{record.space}/{record.machinetype}"
        value = {GroupBy.VO: record.vo, GroupBy.SITE: record.site, GroupBy.SPACE: record.space,
                 GroupBy.DIRAC_SITE: record.dirac_site}[self]
        return value or "-"


@dataclass(frozen=True, slots=True)
class Usage:
    """One group's figures over the window (see the module doc)."""

    group: str
    machines: int
    wall_hours: float
    processor_hours: float
    cpu_hours: float
    cpu_efficiency: float | None
    khs06_hours: float
    average_khs06: float
    jobs_production: int
    jobs_user: int
    shutdown_codes: Mapping[str, int] = field(default_factory=dict)
    """Code ('-' for none) -> machines that ended with it inside the window."""


@dataclass(slots=True)
class _Sums:
    machines: int = 0
    wall: float = 0.0
    processor: float = 0.0
    cpu: float = 0.0
    cpu_processor: float = 0.0
    khs06: float = 0.0
    production: int = 0
    user: int = 0
    codes: Counter[str] = field(default_factory=Counter)

    def add(self, record: AccountingRecord, since: float, until: float) -> None:
        start, stop = record.started_at, record.stopped_at
        inside = max(0.0, min(stop, until) - max(start, since))
        if inside > 0 or since <= start < until:
            self.machines += 1
        share = inside / (stop - start) if stop > start else 0.0
        self.wall += inside
        self.processor += inside * record.processors
        if record.cpu_seconds is not None:
            self.cpu += record.cpu_seconds * share
            self.cpu_processor += inside * record.processors
        if record.benchmark_per_processor is not None:
            self.khs06 += record.benchmark_per_processor * record.processors * inside / 1000.0
        if since < stop <= until or (stop == start and since <= stop < until):
            self.production += record.jobs.production
            self.user += record.jobs.user
            code = record.shutdown_code
            self.codes["-" if code is None else str(code)] += 1

    def usage(self, group: str, window_hours: float) -> Usage:
        return Usage(
            group=group, machines=self.machines, wall_hours=self.wall / HOUR,
            processor_hours=self.processor / HOUR, cpu_hours=self.cpu / HOUR,
            cpu_efficiency=self.cpu / self.cpu_processor if self.cpu_processor > 0 else None,
            khs06_hours=self.khs06 / HOUR,
            average_khs06=self.khs06 / HOUR / window_hours if window_hours > 0 else 0.0,
            jobs_production=self.production, jobs_user=self.user,
            shutdown_codes=dict(sorted(self.codes.items())))


def window_of(records: Iterable[AccountingRecord], since: float | None,
              until: float | None, now: float) -> tuple[float, float]:
    """The window: ``since`` (default: the earliest start) to ``until`` (default: now)."""
    starts = [r.started_at for r in records]
    start = since if since is not None else (min(starts) if starts else now)
    return start, until if until is not None else max(now, start)


def usage(records: Iterable[AccountingRecord], by: GroupBy, since: float,
          until: float) -> list[Usage]:
    """One ``Usage`` per group with a machine in ``[since, until)``, by group name; then
    the total, as group ``TOTAL``, when there is any."""
    groups: dict[str, _Sums] = {}
    total = _Sums()
    for record in records:
        start, stop = record.started_at, record.stopped_at
        if start >= until or stop < since or (stop == since and stop > start):
            continue  # nothing of it inside
        groups.setdefault(by.key(record), _Sums()).add(record, since, until)
        total.add(record, since, until)
    hours = (until - since) / HOUR
    found = [groups[name].usage(name, hours) for name in sorted(groups)]
    return [*found, total.usage("TOTAL", hours)] if found else []
