"""APEL's rules for ``APEL-individual-job-message: v0.4`` (and, below, for
``APEL-cloud-message: v0.4``), written for the tests from APEL's
own loader (``apel/db/loader/record_factory.py``, ``apel/db/records/record.py`` and
``job.py``, ``JobRecord04``): read independently of cloudvac's formatter, so a formatter
bug is not mirrored here."""

from __future__ import annotations

HEADER = "APEL-individual-job-message: v0.4"
MANDATORY = ("Site", "LocalJobId", "WallDuration", "CpuDuration", "StartTime", "EndTime")
KNOWN = frozenset({"Site", "SubmitHost", "MachineName", "Queue", "LocalJobId", "LocalUserId",
                   "GlobalUserName", "FQAN", "VO", "VOGroup", "VORole", "WallDuration",
                   "CpuDuration", "Processors", "NodeCount", "StartTime", "EndTime",
                   "InfrastructureDescription", "InfrastructureType", "MemoryReal",
                   "MemoryVirtual", "ServiceLevelType", "ServiceLevel", "SubmitHostType",
                   "UpdateTime"})
INTEGERS = ("WallDuration", "CpuDuration", "Processors", "NodeCount", "MemoryReal",
            "MemoryVirtual", "StartTime", "EndTime")
BENCHMARKS = ("hepscore23", "hepspec", "si2k")


class Invalid(ValueError):
    pass


def service_level(text: str) -> dict[str, float]:
    """APEL's ``_clean_up_dict``: ``{type: value, ...}``, float values, no duplicate."""
    out: dict[str, float] = {}
    for element in text.strip("{}").split(","):
        key, value = (part.strip() for part in element.split(":"))
        if key in out:
            raise Invalid(f"duplicate benchmark {key}")
        out[key] = float(value)
    if not any(k.lower() in BENCHMARKS for k in out):
        raise Invalid("no valid benchmark type")
    return out


def parse_record(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.strip().splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            raise Invalid(f"line without a key-value pair: {line!r}")
        key, value = key.strip(), value.strip()
        if key not in KNOWN:
            raise Invalid(f"unknown field {key}")
        fields[key] = value
    for key in MANDATORY:
        if fields.get(key, "").lower() in ("", "none", "null"):
            raise Invalid(f"missing mandatory field {key}")
    for key in INTEGERS:
        if key in fields:
            int(fields[key])  # ValueError: not an integer
    if int(fields["EndTime"]) < int(fields["StartTime"]):
        raise Invalid("EndTime is before StartTime")
    if "ServiceLevel" in fields:
        service_level(fields["ServiceLevel"])
    return fields


def parse_message(text: str) -> list[dict[str, str]]:
    """Every record of one message, as APEL's RecordFactory splits it."""
    lines = text.strip().splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise Invalid(f"not a v0.4 job message: {lines[:1]}")
    body = "\n".join(lines[1:])
    return [parse_record(r) for r in body.split("%%") if r.strip()]


# ``APEL-cloud-message: v0.4``: APEL's ``apel/db/records/cloud.py`` (``CloudRecord``), its
# ``Record`` base (``record.py``: null spellings, int/float/datetime checks) and the server's
# ``ReplaceCloudRecord`` (``schemas/cloud.sql``: a ``completed`` record is measured at its
# EndTime).
CLOUD_HEADER = "APEL-cloud-message: v0.4"
CLOUD_MANDATORY = ("VMUUID", "SiteName")
CLOUD_MESSAGE_FIELDS = ("RecordCreateTime", "VMUUID", "SiteName", "CloudComputeService",
                        "MachineName", "LocalUserId", "LocalGroupId", "GlobalUserName", "FQAN",
                        "Status", "StartTime", "EndTime", "SuspendDuration", "WallDuration",
                        "CpuDuration", "CpuCount", "NetworkType", "NetworkInbound",
                        "NetworkOutbound", "PublicIPCount", "Memory", "Disk", "BenchmarkType",
                        "Benchmark", "StorageRecordId", "ImageId", "CloudType")
CLOUD_KNOWN = frozenset({*CLOUD_MESSAGE_FIELDS, "VO", "VOGroup", "VORole", "UpdateTime",
                         "MeasurementTime", "MeasurementMonth", "MeasurementYear"})
CLOUD_INTEGERS = ("SuspendDuration", "WallDuration", "CpuDuration", "NetworkInbound",
                  "NetworkOutbound", "PublicIPCount", "Memory", "Disk")
CLOUD_FLOATS = ("CpuCount", "Benchmark")
CLOUD_TIMES = ("RecordCreateTime", "StartTime", "EndTime")
NULLS = ("", "none", "null")


def vo_of(fqan: str) -> str | None:
    """APEL's ``parse_fqan``, VO part: ``/vo/...`` -> vo; anything else is the VO whole."""
    first = fqan.split(";")[0]
    if first.lower() in NULLS:
        return None
    return first.split("/")[1] if first.startswith("/") else first


def parse_cloud_record(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.strip().splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            raise Invalid(f"line without a key-value pair: {line!r}")
        key, value = key.strip(), value.strip()
        if key not in CLOUD_KNOWN:
            raise Invalid(f"unknown field {key}")
        fields[key] = value
    present = {k: v for k, v in fields.items() if v.lower() not in NULLS}
    for key in CLOUD_MANDATORY:
        if key not in present:
            raise Invalid(f"missing mandatory field {key}")
    for key in CLOUD_INTEGERS + CLOUD_TIMES:
        if key in present:
            int(present[key])  # ValueError: not an integer (times: Unix seconds)
    for key in CLOUD_FLOATS:
        if key in present:
            float(present[key])
    if present.get("Status") == "completed" and "EndTime" not in present:
        raise Invalid("a completed record without EndTime has no measurement time")
    if "StartTime" in present and "EndTime" in present \
            and int(present["EndTime"]) < int(present["StartTime"]):
        raise Invalid("EndTime is before StartTime")
    return fields


def parse_cloud_message(text: str) -> list[dict[str, str]]:
    """Every record of one cloud message, as APEL's RecordFactory splits it."""
    lines = text.strip().splitlines()
    if not lines or lines[0].strip() != CLOUD_HEADER:
        raise Invalid(f"not a v0.4 cloud message: {lines[:1]}")
    body = "\n".join(lines[1:])
    return [parse_cloud_record(r) for r in body.split("%%") if r.strip()]
