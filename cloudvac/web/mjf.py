"""Machine/Job Features (HSF-TN-2016-02) for one machine, from its record and config.

Values are strings, as MJF files are; a key with no value for this machine is absent (the
web answers 404 for it, as a missing MJF file would be).

``shutdowntime`` (and ``shutdowntime_job``) is when the machine will be deleted: its start
plus ``max_wallclock_seconds``, or, while an operator's drain covers it, the drain's
deadline (drain time + grace) when that is earlier, so its pilot takes no job that cannot
end by then.  Undrained, it is the wallclock end again.  ``shutdown_time`` (space or
machinetype) is not published: it stops creations only, and running machines carry on to
their wallclock end.
"""

from __future__ import annotations

from cloudvac.config.models import Machinetype, Space
from cloudvac.model.records import MachineRecord

MIB = 1024 * 1024
GRACE_SECONDS = 600  # how long before shutdowntime a payload is told to stop (grace_secs)


def _shutdowntime(mt: Machinetype | None, record: MachineRecord,
                  drain_deadline: float | None) -> int | None:
    candidates = [drain_deadline] if drain_deadline is not None else []
    if mt is not None and record.created_at is not None:
        start = record.started_at or record.created_at
        candidates.append(start + mt.max_wallclock_seconds)
    return int(min(candidates)) if candidates else None


def machine_features(space: Space, mt: Machinetype | None, record: MachineRecord,
                     drain_deadline: float | None = None) -> dict[str, str]:
    """``drain_deadline``: when a drain covering the machine ends (``Store.drain_deadline``),
    or None."""
    processors = record.processors
    values = {"total_cpu": str(processors), "jobslots": "1", "grace_secs": str(GRACE_SECONDS)}
    hs06 = record.hs06 if record.hs06 is not None else (
        processors * mt.hs06_per_processor if mt and mt.hs06_per_processor else None)
    if hs06 is not None:
        values["hs06"] = f"{hs06:g}"
    shutdown = _shutdowntime(mt, record, drain_deadline)
    if shutdown is not None:
        values["shutdowntime"] = str(shutdown)
    return values


def job_features(space: Space, mt: Machinetype | None, record: MachineRecord,
                 drain_deadline: float | None = None) -> dict[str, str]:
    processors = record.processors
    values = {"allocated_cpu": str(processors), "job_id": record.name}
    if record.started_at is not None or record.created_at is not None:
        values["jobstart_secs"] = str(int(record.started_at or record.created_at or 0))
    if mt is not None:
        values["wall_limit_secs"] = str(mt.max_wallclock_seconds)
        values["cpu_limit_secs"] = str(mt.max_wallclock_seconds * processors)
        values["max_rss_bytes"] = str(mt.mb_per_processor * processors * MIB)
        if mt.hs06_per_processor:
            values["hs06_job"] = f"{mt.hs06_per_processor * processors:g}"
    shutdown = _shutdowntime(mt, record, drain_deadline)
    if shutdown is not None:
        values["shutdowntime_job"] = str(shutdown)
    return values
