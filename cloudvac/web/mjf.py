"""Machine/Job Features (HSF-TN-2016-02) for one machine, from its record and config.

Values are strings, as MJF files are; a key with no value for this machine is absent (the
web answers 404 for it, as a missing MJF file would be).
"""

from __future__ import annotations

from cloudvac.config.models import Machinetype, Space
from cloudvac.model.records import MachineRecord

MIB = 1024 * 1024
GRACE_SECONDS = 600  # how long before shutdowntime a payload is told to stop (grace_secs)


def _shutdowntime(space: Space, mt: Machinetype | None, record: MachineRecord,
                  drained_at: float | None) -> int | None:
    candidates = [t for t in (space.shutdown_time, mt.shutdown_time if mt else None,
                              drained_at) if t is not None]
    if mt is not None and record.created_at is not None:
        start = record.started_at or record.created_at
        candidates.append(start + mt.max_wallclock_seconds)
    return int(min(candidates)) if candidates else None


def machine_features(space: Space, mt: Machinetype | None, record: MachineRecord,
                     drained_at: float | None = None) -> dict[str, str]:
    processors = record.processors
    values = {"total_cpu": str(processors), "jobslots": "1", "grace_secs": str(GRACE_SECONDS)}
    hs06 = record.hs06 if record.hs06 is not None else (
        processors * mt.hs06_per_processor if mt and mt.hs06_per_processor else None)
    if hs06 is not None:
        values["hs06"] = f"{hs06:g}"
    shutdown = _shutdowntime(space, mt, record, drained_at)
    if shutdown is not None:
        values["shutdowntime"] = str(shutdown)
    return values


def job_features(space: Space, mt: Machinetype | None, record: MachineRecord,
                 drained_at: float | None = None) -> dict[str, str]:
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
    shutdown = _shutdowntime(space, mt, record, drained_at)
    if shutdown is not None:
        values["shutdowntime_job"] = str(shutdown)
    return values
