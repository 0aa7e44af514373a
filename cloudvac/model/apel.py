"""APEL individual job records (``APEL-individual-job-message: v0.4``), and optionally cloud
records, from accounting records.

Pure: an ``AccountingRecord`` in, message text out; ``engine/apel.py`` writes the messages
into the outgoing directory ``ssmsend`` reads.  One record per finished machine, as the
grid's job accounting expects from a VM-based site (VCycle did the same): the VM is the job.

The format follows APEL's own parser (``apel/db/records/job.py``, ``JobRecord04``): the
header line, then ``Key: value`` lines, each record closed by a ``%%`` line.  Mandatory:
Site, LocalJobId, WallDuration, CpuDuration, StartTime, EndTime.  Durations are whole
seconds, times Unix seconds (integers).  ``ServiceLevel`` is a dictionary of benchmark type
to the per-processor value, ``{HEPSPEC: 10.0, HEPscore23: 10.0}``: both types carry the same
value (HEPscore23 replaced HS06 on the same scale); APEL's loader takes the first of
hepscore23, hepspec, si2k it finds.  One message holds at most ``RECORDS_PER_MESSAGE``
records (the APEL client's unloader default; its maximum is 5000).

Cloud records (``APEL-cloud-message: v0.4``, APEL's ``apel/db/records/cloud.py``,
``CloudRecord``) only for the spaces in ``ApelOptions.clouds`` (the per-space option
``apel_cloud_records``, off by default: the site's own cloud accounting, cASO, reports its
projects, and a second record of the same VM would count it twice).  Mandatory: VMUUID,
SiteName.  Status ``completed`` (APEL then measures the record at its EndTime); the VO is
what APEL derives from FQAN (a bare VO name is taken whole, as cASO writes it).  Fields
cloudvac does not know (LocalUserId, GlobalUserName, SuspendDuration, network, Memory,
Disk, StorageRecordId) are left out, and so is CpuDuration when the VM reported none.
A message holds one record type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cloudvac.model.accounting import AccountingRecord

JOB_HEADER = "APEL-individual-job-message: v0.4"
CLOUD_HEADER = "APEL-cloud-message: v0.4"
CLOUD_KEY_PREFIX = "cloud:"
"""Written-state key of a cloud record: the prefix and the VMUUID (a job record's key is
its LocalJobId alone), so each record type of one VM is written once."""
CLOUD_MANDATORY = ("VMUUID", "SiteName")
CLOUD_STATUS = "completed"
CLOUD_BENCHMARK_TYPE = "HEPscore23"
"""A cloud record holds one benchmark.  Cloud records are only written where no cASO reports
the project, so there is no site benchmark type to agree with; HEPscore23 is WLCG's current
benchmark, and the value is on HS06's scale, as in the job records' ServiceLevel."""
RECORD_END = "%%"
RECORDS_PER_MESSAGE = 1000
MAX_RECORDS_PER_MESSAGE = 5000
MANDATORY = ("Site", "LocalJobId", "WallDuration", "CpuDuration", "StartTime", "EndTime")
BENCHMARK_TYPES = ("HEPSPEC", "HEPscore23")
INFRASTRUCTURE_TYPE = "grid"
INFRASTRUCTURE_DESCRIPTION = "cloudvac-OpenStack"


class NotAccountable(ValueError):
    """This record cannot become an APEL record (the text says why)."""


@dataclass(frozen=True, slots=True)
class CloudSpace:
    """A space whose machines also get cloud records: ``service`` its CloudComputeService
    (default the space's name), ``local_group`` its LocalGroupId (the OpenStack project),
    ``cloud_type`` its CloudType, ``images`` machinetype -> ImageId (its root_image)."""

    service: str = ""
    local_group: str = ""
    cloud_type: str = "cloudvac"
    images: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApelOptions:
    """What the writer adds to each record.  ``sites``: space -> APEL (GOCDB) site name,
    over the record's own (see ``site_of``).  ``fqans``: ``space/machinetype`` -> the FQAN
    its pilots run under (``engine/apel.py`` builds both from the configuration).
    ``submit_host`` empty: ``SPACE/cloudvac-MACHINETYPE`` (VCycle's form).  ``clouds``:
    space -> ``CloudSpace`` for the spaces that also get cloud records (none by default)."""

    submit_host: str = ""
    infrastructure_description: str = INFRASTRUCTURE_DESCRIPTION
    records_per_message: int = RECORDS_PER_MESSAGE
    sites: Mapping[str, str] = field(default_factory=dict)
    fqans: Mapping[str, str] = field(default_factory=dict)
    clouds: Mapping[str, CloudSpace] = field(default_factory=dict)


def gocdb_site(dirac_site: str) -> str | None:
    """The GOCDB part of a DIRAC site name ``<prefix>.<Site>.<cc>``, else None."""
    parts = dirac_site.split(".")
    return parts[1] if len(parts) == 3 and all(parts) else None


def site_of(record: AccountingRecord, options: ApelOptions) -> str | None:
    """``options.sites``, else the GOCDB name of the space's ``site_name`` (``<Site>.<cc>``),
    else the middle part of the DIRAC site."""
    named = record.site.rsplit(".", 1)[0] if "." in record.site else record.site
    return options.sites.get(record.space) or named or gocdb_site(record.dirac_site)


def cpu_seconds(record: AccountingRecord) -> tuple[int, bool]:
    """The CPU duration to report and whether it is real: what the VM reported (user +
    system of the pilot's process tree, all processors), or, when it reported nothing, the
    wall time (what VCycle always wrote)."""
    if record.cpu_seconds is not None and record.cpu_seconds >= 0:
        return round(record.cpu_seconds), True
    return round(record.wall_seconds), False


def service_level(benchmark: float) -> str:
    value = repr(round(benchmark, 3))
    return "{" + ", ".join(f"{kind}: {value}" for kind in BENCHMARK_TYPES) + "}"


def _clean(value: object) -> str:
    """One line, no record separator: a value never breaks the message's structure."""
    return " ".join(str(value).replace(RECORD_END, "%").split())


def _checked_site(record: AccountingRecord, options: ApelOptions) -> str:
    """The record's APEL site; raises ``NotAccountable`` for what APEL would refuse."""
    site = site_of(record, options)
    if not site:
        raise NotAccountable(f"no APEL site: space {record.space} has no site_name and the "
                             f"DIRAC site {record.dirac_site!r} is not <prefix>.<Site>.<cc>")
    if not record.vm_uuid:
        raise NotAccountable("no VM UUID")
    if record.stopped_at < record.started_at or record.started_at <= 0:
        raise NotAccountable(f"times out of order ({record.started_at}, {record.stopped_at})")
    return site


def job_fields(record: AccountingRecord, options: ApelOptions) -> list[tuple[str, str]]:
    """The record's ``(key, value)`` lines in APEL's order; raises ``NotAccountable``."""
    site = _checked_site(record, options)
    fqan = options.fqans.get(f"{record.space}/{record.machinetype}", "")
    cpu, _ = cpu_seconds(record)
    fields: list[tuple[str, object]] = [
        ("Site", site),
        ("SubmitHost", options.submit_host or f"{record.space}/cloudvac-{record.machinetype}"),
        ("MachineName", record.machine), ("Queue", record.machinetype),
        ("LocalJobId", record.vm_uuid), ("FQAN", fqan), ("VO", record.vo),
        ("WallDuration", round(record.wall_seconds)), ("CpuDuration", cpu),
        ("Processors", max(1, record.processors)), ("NodeCount", 1),
        ("StartTime", int(record.started_at)), ("EndTime", int(record.stopped_at)),
        ("InfrastructureDescription", options.infrastructure_description),
        ("InfrastructureType", INFRASTRUCTURE_TYPE)]
    if record.benchmark_per_processor is not None and record.benchmark_per_processor > 0:
        fields.append(("ServiceLevel", service_level(record.benchmark_per_processor)))
    return [(key, _clean(value)) for key, value in fields if _clean(value)]


def job_record(record: AccountingRecord, options: ApelOptions) -> str:
    """One record's lines, each ending in a newline, without the ``%%`` line."""
    return "".join(f"{key}: {value}\n" for key, value in job_fields(record, options))


def cloud_fields(record: AccountingRecord, options: ApelOptions) -> list[tuple[str, str]]:
    """The cloud record's ``(key, value)`` lines in APEL's order; raises ``NotAccountable``
    (also when the record's space does not have cloud records)."""
    cloud = options.clouds.get(record.space)
    if cloud is None:
        raise NotAccountable(f"space {record.space} does not write cloud records")
    site = _checked_site(record, options)
    cpu, real = cpu_seconds(record)
    benchmark = record.benchmark_per_processor
    level = repr(round(benchmark, 3)) if benchmark is not None and benchmark > 0 else ""
    fields: list[tuple[str, object]] = [
        ("VMUUID", record.vm_uuid), ("SiteName", site),
        ("CloudComputeService", cloud.service or record.space),
        ("MachineName", record.machine), ("LocalGroupId", cloud.local_group),
        ("FQAN", options.fqans.get(f"{record.space}/{record.machinetype}", "") or record.vo),
        ("Status", CLOUD_STATUS),
        ("StartTime", int(record.started_at)), ("EndTime", int(record.stopped_at)),
        ("WallDuration", round(record.wall_seconds)), ("CpuDuration", cpu if real else ""),
        ("CpuCount", max(1, record.processors)),
        ("BenchmarkType", CLOUD_BENCHMARK_TYPE if level else ""), ("Benchmark", level),
        ("ImageId", cloud.images.get(record.machinetype, "")),
        ("CloudType", cloud.cloud_type)]
    return [(key, _clean(value)) for key, value in fields if _clean(value)]


def cloud_record(record: AccountingRecord, options: ApelOptions) -> str:
    """One cloud record's lines, each ending in a newline, without the ``%%`` line."""
    return "".join(f"{key}: {value}\n" for key, value in cloud_fields(record, options))


def message(header: str, records: Iterable[str]) -> str:
    """A whole message: the header, then each record followed by a ``%%`` line."""
    return header + "\n" + "".join(f"{text}{RECORD_END}\n" for text in records)


def job_message(records: Iterable[str]) -> str:
    return message(JOB_HEADER, records)


def cloud_message(records: Iterable[str]) -> str:
    return message(CLOUD_HEADER, records)


def chunks(items: list[str], size: int) -> list[list[str]]:
    size = min(max(1, size), MAX_RECORDS_PER_MESSAGE)
    return [items[i:i + size] for i in range(0, len(items), size)]


def cloud_key(vm_uuid: str) -> str:
    return CLOUD_KEY_PREFIX + vm_uuid


def written_ids(text: str) -> list[tuple[str, int]]:
    """``(key, EndTime)`` of every record in one of our messages (for recovery): the key is
    the LocalJobId of a job record, ``cloud_key(VMUUID)`` of a cloud record."""
    cloud = text.startswith(CLOUD_HEADER + "\n")
    id_field = "VMUUID" if cloud else "LocalJobId"
    found: list[tuple[str, int]] = []
    job, end = "", 0
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key == id_field:
            job = cloud_key(value.strip()) if cloud else value.strip()
        elif key == "EndTime":
            end = int(value.strip() or 0)
        elif line.strip() == RECORD_END and job:
            found.append((job, end))
            job, end = "", 0
    return found
