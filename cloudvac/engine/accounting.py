"""One accounting record per finished machine, written when the cycle finds it gone.

A machine is accounted once it is gone (its row's state ``gone``) and had started: from its
``MachineRecord`` (times, processors, cloud id, shutdown message), its machinetype's
configuration (VO, DIRAC site per DIRAC instance, HS06 per processor, ``fizzle_seconds``)
and what the VM uploaded (its joboutputs, in the store: ``Store.joboutputs``, so the
instance that owns the space reads what any instance took):

* ``cpu_totals``: ``<user seconds> <system seconds> <idle seconds>`` (the agent's
  ``cpu_totals``: the pilot's process tree, and ``/proc/stat`` idle over the pilot's run;
  ``-`` for a value it could not read).  CPU time is user + system; missing or malformed:
  unknown (None), never a guess.
* ``pilot.log``: the DIRAC JobAgent announces each job it takes as ``Received JobID=N,
  JobType=T`` (DIRAC v7 to v9); ``User`` jobs are user work, every other type production.
  No log: the counts are unknown (``JobCounts.known`` False).

The benchmark per processor is the machinetype's ``hs06_per_processor`` (source
``config``) when it is set; else the machine row's ``hs06`` over its processors, which the
planner set at creation from the flavor's ``accounting:benchmark_value`` extra spec
(``planner.machine_hs06``: with no ``hs06_per_processor`` that is the only way a row gets
an HS06), source ``flavor``; else unknown (source '').  A row created while the
machinetype still had ``hs06_per_processor``, accounted after the option was removed, is
reported as ``flavor`` too: the row does not record where its HS06 came from.

``account_ended`` runs in the cycle after its machine rows are written, and only in a
cycle that marked a machine gone: it accounts every gone machine of the space without a
record (``Store.unaccounted``), so a record a crash skipped is written by the next such
cycle, and the store's insert keeps the first one (exactly once).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from cloudvac.config.models import Machinetype, Space
from cloudvac.context.dirac import site_of
from cloudvac.model.accounting import AccountingRecord, JobCounts
from cloudvac.model.layout import CPU_TOTALS_FILE, PILOT_LOG_FILE
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.store.leases import Fence

log = logging.getLogger("cloudvac.engine.accounting")
_RECEIVED = re.compile(rb"Received\b[^\n]*?JobID=(\d+),?\s*JobType=([A-Za-z0-9_.-]+)")
_DEFAULT_FIZZLE = 600.0


def cpu_totals(data: bytes | None) -> tuple[float | None, float | None]:
    """(user + system, idle) seconds from a ``cpu_totals`` upload; None where unknown."""
    if data is None:
        return None, None
    fields = data.decode("ascii", "replace").split()
    if len(fields) < 2:
        return None, None

    def number(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if value >= 0 and value == value and value != float("inf") else None

    user, system = number(fields[0]), number(fields[1])
    idle = number(fields[2]) if len(fields) > 2 else None
    cpu = None if user is None or system is None else user + system
    return cpu, idle


def job_counts(data: bytes | None) -> JobCounts:
    """Jobs the JobAgent took, by kind, from a pilot log; unknown without a log."""
    if data is None:
        return JobCounts()
    kinds: dict[bytes, bool] = {}
    for match in _RECEIVED.finditer(data):
        kinds[match.group(1)] = match.group(2).lower() == b"user"
    user = sum(kinds.values())
    return JobCounts(production=len(kinds) - user, user=user, known=True)


def dirac_site(space: Space, mt: Machinetype | None) -> str:
    """The DIRAC site the machinetype's pilots report as, '' if none or not resolvable."""
    instance = space.dirac_instances.get(mt.dirac) if mt is not None and mt.dirac else None
    if instance is None:
        return ""
    try:
        return site_of(instance, space)
    except ValueError:
        return ""


def _benchmark(mt: Machinetype | None, record: MachineRecord,
               processors: int) -> tuple[float | None, str]:
    """(HS06 per processor, its source): see the module doc."""
    if mt is not None and mt.hs06_per_processor is not None:
        return mt.hs06_per_processor, "config"
    if record.hs06:
        return record.hs06 / processors, "flavor"
    return None, ""


UPLOADS = (CPU_TOTALS_FILE, PILOT_LOG_FILE)
"""The uploads an accounting record is built from."""


def build(space: Space, record: MachineRecord, uploads: Mapping[str, bytes],
          now: float) -> AccountingRecord:
    """The accounting record of ``record``, a machine that ended (see the module doc);
    ``uploads``: the machine's files of ``UPLOADS`` (file -> body), the missing ones not
    uploaded."""
    mt = space.machinetypes.get(record.machinetype)
    started = record.started_at if record.started_at is not None else now
    stopped = record.ended_at or record.shutdown_at or now
    stopped = max(stopped, started)
    cpu, idle = cpu_totals(uploads.get(CPU_TOTALS_FILE))
    processors = max(record.processors, 1)
    benchmark, source = _benchmark(mt, record, processors)
    fizzle = float(mt.fizzle_seconds) if mt is not None else _DEFAULT_FIZZLE
    message = record.shutdown
    return AccountingRecord(
        space=space.name, machine=record.name, vm_uuid=record.cloud_id,
        machinetype=record.machinetype, vo=(mt.vo or "") if mt is not None else "",
        dirac_site=dirac_site(space, mt), processors=processors,
        benchmark_per_processor=benchmark,
        benchmark_source=source,
        started_at=started, stopped_at=stopped, cpu_seconds=cpu, idle_seconds=idle,
        shutdown_code=message.code if message is not None else None,
        shutdown_text=message.text if message is not None else "",
        jobs=job_counts(uploads.get(PILOT_LOG_FILE)),
        fizzled=stopped - started < fizzle, site=space.site_name or "")


def account_ended(store: Store, space: Space, changed: Sequence[MachineRecord],
                  now: float, fence: Fence | None = None) -> int:
    """Write the records of ``space``'s gone machines that have none, if ``changed`` (this
    cycle's written machine rows) marked any machine gone; how many were new (their
    uploads read from the store).  With
    ``fence`` (the space's lease): written only while it holds, else LeaseLost."""
    if not any(r.state is MachineState.GONE for r in changed):
        return 0
    records = [build(space, r, store.joboutputs(space.name, r.name, UPLOADS), now)
               for r in store.unaccounted(space.name)]
    written = store.record_accounting(records, now) if fence is None else \
        store.record_accounting_fenced(fence, records, now)
    for r in records:
        log.info("space=%s machinetype=%s machine=%s accounted: %.0fs wall, %s CPU s, "
                 "%d processors, code %s", r.space, r.machinetype, r.machine, r.wall_seconds,
                 "?" if r.cpu_seconds is None else f"{r.cpu_seconds:.0f}", r.processors,
                 r.shutdown_code)
    return written
