"""The outgoing directory read back with the ``dirq`` package ``ssmsend`` uses, the way
ssmsend reads it (``QueueSimple``: iterate, lock, get, remove), across writer restarts; cloud
records (``apel_cloud_records``) in messages of their own beside the job messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dirq.QueueSimple import QueueSimple

from cloudvac.engine.apel import write_apel
from cloudvac.model.accounting import AccountingRecord, JobCounts
from cloudvac.model.apel import CLOUD_HEADER, JOB_HEADER, ApelOptions, CloudSpace
from tests.apel_rules import parse_cloud_message, parse_message, service_level, vo_of

NOW = 1_800_000_000.0


def record(n: int, cpu: float | None = 3000.0) -> AccountingRecord:
    return AccountingRecord(
        space="cloud.example.org", machine=f"cloudvac-t2k-{n:04d}",
        vm_uuid=f"0a0b0c0d-1111-4222-8333-{n:012d}", machinetype="t2k", vo="t2k.org",
        dirac_site="CLOUD.UKI-LT2-IC-HEP.uk", processors=4, benchmark_per_processor=11.0,
        benchmark_source="flavor", started_at=NOW - 4000 + n, stopped_at=NOW - 100 + n,
        cpu_seconds=cpu, idle_seconds=None, shutdown_code=100, shutdown_text="",
        jobs=JobCounts(), fizzled=False)


def consume(path: Path) -> list[str]:
    """What ssmsend does with the queue: every element locked, read, removed."""
    queue = QueueSimple(str(path))
    out: list[str] = []
    for name in queue:
        assert queue.lock(name)
        data = queue.get(name)
        out.append(data.decode() if isinstance(data, bytes) else data)
        queue.remove(name)
    queue.purge()
    return out


def test_dirq_reads_back_v04_records_each_once(tmp_path: Path) -> None:
    out = tmp_path / "apel" / "outgoing"
    options = ApelOptions(records_per_message=3)
    first = [record(n) for n in range(7)]
    assert write_apel(first, out, options, lambda: NOW) == 7
    assert QueueSimple(str(out)).count() == 3
    got = [r for m in consume(out) for r in parse_message(m)]
    assert sorted(r["LocalJobId"] for r in got) == sorted(r.vm_uuid for r in first)
    for parsed in got:
        assert parsed["Site"] == "UKI-LT2-IC-HEP" and parsed["Queue"] == "t2k"
        assert service_level(parsed["ServiceLevel"]) == {"HEPSPEC": 11.0, "HEPscore23": 11.0}
        assert parsed["CpuDuration"] == "3000"
    # a restart after ssmsend emptied the queue: the same records again, plus one new
    # with no CPU figure
    late = dataclasses.replace(record(9, cpu=None))
    assert write_apel([*first, late], out, options, lambda: NOW + 300) == 1
    [message] = consume(out)
    [parsed] = parse_message(message)
    assert parsed["LocalJobId"] == late.vm_uuid
    assert parsed["CpuDuration"] == parsed["WallDuration"] == str(round(late.wall_seconds))
    assert QueueSimple(str(out)).count() == 0


def test_dirq_reads_back_cloud_and_job_records_each_once(tmp_path: Path) -> None:
    out = tmp_path / "apel" / "outgoing"
    options = ApelOptions(records_per_message=4,
                          clouds={"cloud.example.org": CloudSpace(cloud_type="cloudvac")})
    first = [record(n) for n in range(5)]
    assert write_apel(first, out, options, lambda: NOW) == 10
    got = consume(out)
    assert sorted(m.splitlines()[0] for m in got) == [CLOUD_HEADER] * 2 + [JOB_HEADER] * 2
    jobs = [r for m in got if m.startswith(JOB_HEADER) for r in parse_message(m)]
    clouds = [r for m in got if m.startswith(CLOUD_HEADER) for r in parse_cloud_message(m)]
    assert sorted(r["LocalJobId"] for r in jobs) == sorted(r["VMUUID"] for r in clouds) \
        == sorted(r.vm_uuid for r in first)
    for parsed in clouds:
        assert (parsed["SiteName"], parsed["Status"], vo_of(parsed["FQAN"])) == (
            "UKI-LT2-IC-HEP", "completed", "t2k.org")
        assert (parsed["CpuDuration"], parsed["CpuCount"], parsed["Benchmark"]) == (
            "3000", "4", "11.0")
    # a restart: nothing again; a new machine without a CPU figure gets both records
    late = record(9, cpu=None)
    assert write_apel([*first, late], out, options, lambda: NOW + 300) == 2
    again = consume(out)
    [job] = [r for m in again if m.startswith(JOB_HEADER) for r in parse_message(m)]
    [cloud] = [r for m in again if m.startswith(CLOUD_HEADER) for r in parse_cloud_message(m)]
    assert job["LocalJobId"] == cloud["VMUUID"] == late.vm_uuid
    assert "CpuDuration" not in cloud and job["CpuDuration"] == job["WallDuration"]
    assert write_apel([*first, late], out, options, lambda: NOW + 600) == 0
    assert QueueSimple(str(out)).count() == 0
