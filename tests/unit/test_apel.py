"""APEL v0.4 job records: every field against APEL's rules, both benchmarks, CPU = wall only
when the VM reported nothing, and the writer's exactly-once promise across restarts.  Cloud
records (``apel_cloud_records``): the same, off by default, in messages of their own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cloudvac import __version__
from cloudvac.config import load_config_dir
from cloudvac.config.models import Machinetype, Space
from cloudvac.config.settings import Settings
from cloudvac.engine.apel import STAGING, export_apel, state_path, write_apel
from cloudvac.model.accounting import AccountingRecord, JobCounts
from cloudvac.model.apel import (
    CLOUD_HEADER,
    JOB_HEADER,
    ApelOptions,
    CloudSpace,
    NotAccountable,
    cloud_message,
    cloud_record,
    job_message,
    job_record,
)
from cloudvac.model.cloud import flavor_benchmark
from tests.apel_rules import (
    Invalid,
    parse_cloud_message,
    parse_message,
    service_level,
    vo_of,
)

NOW = 1_800_000_000.0


def record(n: int = 1, **changes: object) -> AccountingRecord:
    base = AccountingRecord(
        space="cloud.example.org", machine=f"cloudvac-belle-{n:04d}",
        vm_uuid=f"6f1c2a3b-0000-4000-8000-{n:012d}", machinetype="belle", vo="belle",
        dirac_site="VCYCLE.RAL-LCG2.uk", processors=8, benchmark_per_processor=12.5,
        benchmark_source="config", started_at=NOW - 7200.6, stopped_at=NOW - 600.2,
        cpu_seconds=40000.4, idle_seconds=10000.0, shutdown_code=100,
        shutdown_text="Shutdown requested", jobs=JobCounts(3, 1, True), fizzled=False)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


OPTIONS = ApelOptions(fqans={"cloud.example.org/belle": "/belle/Role=production"})


def fields(rec: AccountingRecord, options: ApelOptions = OPTIONS) -> dict[str, str]:
    [parsed] = parse_message(job_message([job_record(rec, options)]))
    return parsed


def test_every_field_follows_the_v04_rules() -> None:
    got = fields(record())
    assert got == {
        "Site": "RAL-LCG2", "SubmitHost": "cloud.example.org/cloudvac-belle",
        "MachineName": "cloudvac-belle-0001", "Queue": "belle",
        "LocalJobId": "6f1c2a3b-0000-4000-8000-000000000001",
        "FQAN": "/belle/Role=production", "VO": "belle",
        "WallDuration": "6600", "CpuDuration": "40000", "Processors": "8", "NodeCount": "1",
        "StartTime": str(int(NOW - 7200.6)), "EndTime": str(int(NOW - 600.2)),
        "InfrastructureDescription": "cloudvac-OpenStack", "InfrastructureType": "grid",
        "ServiceLevel": "{HEPSPEC: 12.5, HEPscore23: 12.5}"}


def test_both_benchmarks_carry_the_same_value() -> None:
    levels = service_level(fields(record(benchmark_per_processor=9.87654))["ServiceLevel"])
    assert levels == {"HEPSPEC": 9.877, "HEPscore23": 9.877}


def test_no_benchmark_means_no_service_level() -> None:
    assert "ServiceLevel" not in fields(record(benchmark_per_processor=None))


def test_cpu_is_the_vms_own_figure_and_wall_only_when_unknown() -> None:
    assert fields(record(cpu_seconds=0.0))["CpuDuration"] == "0"
    unknown = fields(record(cpu_seconds=None))
    assert unknown["CpuDuration"] == unknown["WallDuration"] == "6600"


def test_options_override_site_and_submit_host() -> None:
    options = ApelOptions(submit_host="vcycle.example.org", sites={"cloud.example.org": "UKI-X"},
                          infrastructure_description="cloudvac-EC2")
    got = fields(record(), options)
    assert (got["Site"], got["SubmitHost"], got["InfrastructureDescription"]) == (
        "UKI-X", "vcycle.example.org", "cloudvac-EC2")
    assert "FQAN" not in got


@pytest.mark.parametrize("changes", [{"dirac_site": ""}, {"dirac_site": "VCYCLE.Napoli"},
                                     {"vm_uuid": ""}, {"stopped_at": NOW - 9000}])
def test_records_apel_would_refuse_are_not_made(changes: dict[str, object]) -> None:
    with pytest.raises(NotAccountable):
        job_record(record(**changes), OPTIONS)  # type: ignore[arg-type]


def test_a_value_cannot_break_the_message() -> None:
    got = fields(record(machinetype="belle\n%%\nSite: X"))
    assert got["Queue"] == "belle % Site: X" and got["Site"] == "RAL-LCG2"


def test_the_rules_reject_what_apel_rejects() -> None:
    good = job_record(record(), OPTIONS)
    with pytest.raises(Invalid):
        parse_message(job_message([good.replace("Site: RAL-LCG2\n", "")]))
    with pytest.raises(ValueError, match="invalid literal"):
        parse_message(job_message([good.replace("CpuDuration: 40000", "CpuDuration: 4e4")]))
    with pytest.raises(Invalid):
        parse_message(job_message([good.replace("HEPSPEC", "HEPscore23")]))
    with pytest.raises(Invalid):
        parse_message(good)  # no header


def messages(outgoing: Path) -> list[str]:
    return [p.read_text() for p in sorted(outgoing.glob("[0-9a-f]" * 8 + "/" + "[0-9a-f]" * 14))]


def test_messages_hold_at_most_n_records(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    options = dataclasses.replace(OPTIONS, records_per_message=2)
    assert write_apel([record(n) for n in range(5)], out, options, lambda: NOW) == 5
    sizes = [len(parse_message(m)) for m in messages(out)]
    assert sorted(sizes) == [1, 2, 2]
    assert all(m.startswith(JOB_HEADER + "\n") and m.endswith("%%\n") for m in messages(out))


def test_a_restart_writes_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    first = [record(n) for n in range(3)]
    assert write_apel(first, out, OPTIONS, lambda: NOW) == 3
    assert write_apel(first, out, OPTIONS, lambda: NOW + 60) == 0
    assert write_apel([*first, record(7), record(7)], out, OPTIONS, lambda: NOW + 120) == 1
    ids = [r["LocalJobId"] for m in messages(out) for r in parse_message(m)]
    assert sorted(ids) == sorted({r.vm_uuid for r in [*first, record(7)]})


def test_a_message_staged_before_a_crash_is_published_once(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    staging = out / STAGING
    staging.mkdir(parents=True)
    (staging / "a.msg").write_text(job_message([job_record(record(1), OPTIONS)]))
    (staging / "b.part").write_text(job_message([job_record(record(2), OPTIONS)])[:50])
    assert write_apel([record(1), record(2)], out, OPTIONS, lambda: NOW) == 1
    ids = sorted(r["LocalJobId"] for m in messages(out) for r in parse_message(m))
    assert ids == [record(1).vm_uuid, record(2).vm_uuid]
    assert list(staging.iterdir()) == []


def test_the_state_forgets_old_records_and_old_records_are_not_written(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    write_apel([record(1)], out, OPTIONS, lambda: NOW)
    later = NOW + 90 * 86400
    assert json.loads(state_path(out).read_text())["written"]
    assert write_apel([record(1), record(2)], out, OPTIONS, lambda: later) == 0
    fresh = record(3, started_at=later - 100, stopped_at=later - 10)
    assert write_apel([fresh], out, OPTIONS, lambda: later) == 1
    assert list(json.loads(state_path(out).read_text())["written"]) == [fresh.vm_uuid]


def test_the_configuration_drives_the_export(tmp_path: Path) -> None:
    mt = Machinetype(name="belle", space="cloud.example.org", target_share=1,
                     accounting_fqan="/belle/Role=production/Capability=NULL")
    space = Space(name="cloud.example.org", api="sim", flavor_names=["m1.small"],
                  site_name="RECAS-NAPOLI.it", machinetypes={"belle": mt})
    off = Settings(state_dir=tmp_path)
    assert export_apel(off, space, [record()], lambda: NOW) == 0
    assert not list(tmp_path.iterdir())
    on = Settings(state_dir=tmp_path, apel_outgoing_dir=tmp_path / "out",
                  apel_submit_host="cloudvac.example.org")
    other = record(2, space="elsewhere")
    assert export_apel(on, space, [record(1, site="RECAS-NAPOLI.it"), other],
                       lambda: NOW) == 1
    [got] = [r for m in messages(tmp_path / "out") for r in parse_message(m)]
    assert (got["Site"], got["FQAN"], got["SubmitHost"]) == (
        "RECAS-NAPOLI", "/belle/Role=production/Capability=NULL", "cloudvac.example.org")


@pytest.mark.parametrize(("specs", "expected"), [
    ({"accounting:benchmark_type": "HEPscore23", "accounting:benchmark_value": "15.3"},
     ("HEPscore23", 15.3)),
    ({"accounting:benchmark_value": "nope"}, ("", None)),
    ({"accounting:benchmark_value": "0"}, ("", None)),
    (None, ("", None))])
def test_flavor_benchmark_reads_casos_extra_specs(specs: object,
                                                  expected: tuple[str, float | None]) -> None:
    assert flavor_benchmark(specs) == expected


CLOUD = CloudSpace(service="cloud.example.org", local_group="4d2f0e5c9a",
                   cloud_type="cloudvac/0.1.0 (OpenStack)", images={"belle": "el9-belle"})
CLOUDY = dataclasses.replace(OPTIONS, clouds={"cloud.example.org": CLOUD})


def cloud_fields(rec: AccountingRecord, options: ApelOptions = CLOUDY) -> dict[str, str]:
    [parsed] = parse_cloud_message(cloud_message([cloud_record(rec, options)]))
    return parsed


def test_every_cloud_field_follows_the_v04_rules() -> None:
    got = cloud_fields(record(site="RAL-LCG2.uk"))
    assert got == {
        "VMUUID": "6f1c2a3b-0000-4000-8000-000000000001", "SiteName": "RAL-LCG2",
        "CloudComputeService": "cloud.example.org", "MachineName": "cloudvac-belle-0001",
        "LocalGroupId": "4d2f0e5c9a", "FQAN": "/belle/Role=production", "Status": "completed",
        "StartTime": str(int(NOW - 7200.6)), "EndTime": str(int(NOW - 600.2)),
        "WallDuration": "6600", "CpuDuration": "40000", "CpuCount": "8",
        "BenchmarkType": "HEPscore23", "Benchmark": "12.5", "ImageId": "el9-belle",
        "CloudType": "cloudvac/0.1.0 (OpenStack)"}
    assert vo_of(got["FQAN"]) == "belle"  # what APEL files the record under


def test_a_cloud_record_leaves_out_what_cloudvac_does_not_know() -> None:
    bare = dataclasses.replace(CLOUDY, fqans={}, clouds={"cloud.example.org": CloudSpace()})
    got = cloud_fields(record(cpu_seconds=None, benchmark_per_processor=None), bare)
    assert not {"CpuDuration", "BenchmarkType", "Benchmark", "LocalGroupId", "ImageId",
                "LocalUserId", "GlobalUserName", "Memory", "Disk"} & set(got)
    assert (got["CloudComputeService"], got["FQAN"], vo_of(got["FQAN"])) == (
        "cloud.example.org", "belle", "belle")


@pytest.mark.parametrize("changes", [{"dirac_site": ""}, {"vm_uuid": ""},
                                     {"stopped_at": NOW - 9000}, {"space": "elsewhere"}])
def test_cloud_records_apel_would_refuse_are_not_made(changes: dict[str, object]) -> None:
    with pytest.raises(NotAccountable):
        cloud_record(record(**changes), CLOUDY)  # type: ignore[arg-type]


def test_the_cloud_rules_reject_what_apel_rejects() -> None:
    good = cloud_record(record(), CLOUDY)
    for broken in (good.replace(record().vm_uuid, "NULL"),
                   good.replace("SiteName: RAL-LCG2\n", ""),
                   good.replace(f"EndTime: {int(NOW - 600.2)}\n", ""),
                   good.replace("Status: completed", "Status: completed\nQueue: belle")):
        with pytest.raises(Invalid):
            parse_cloud_message(cloud_message([broken]))
    with pytest.raises(ValueError, match="invalid literal"):
        parse_cloud_message(cloud_message([good.replace("WallDuration: 6600",
                                                        "WallDuration: 6600.5")]))
    with pytest.raises(Invalid):
        parse_cloud_message(job_message([good]))


def headers(outgoing: Path) -> list[str]:
    return sorted(m.splitlines()[0] for m in messages(outgoing))


def test_no_cloud_record_without_the_option(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    assert write_apel([record(n) for n in range(3)], out, OPTIONS, lambda: NOW) == 3
    assert headers(out) == [JOB_HEADER]


def test_cloud_records_are_their_own_messages_each_written_once(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    first = [record(n) for n in range(3)]
    assert write_apel(first[:2], out, OPTIONS, lambda: NOW) == 2  # before the option
    assert write_apel(first, out, CLOUDY, lambda: NOW + 60) == 1 + 3
    assert write_apel(first, out, CLOUDY, lambda: NOW + 120) == 0  # a restart
    assert headers(out) == [CLOUD_HEADER, JOB_HEADER, JOB_HEADER]
    jobs = [r["LocalJobId"] for m in messages(out) if m.startswith(JOB_HEADER)
            for r in parse_message(m)]
    clouds = [r["VMUUID"] for m in messages(out) if m.startswith(CLOUD_HEADER)
              for r in parse_cloud_message(m)]
    assert sorted(jobs) == sorted(clouds) == sorted(r.vm_uuid for r in first)
    assert sorted(json.loads(state_path(out).read_text())["written"]) == sorted(
        [*(r.vm_uuid for r in first), *(f"cloud:{r.vm_uuid}" for r in first)])


def test_a_cloud_message_staged_before_a_crash_is_published_once(tmp_path: Path) -> None:
    out = tmp_path / "outgoing"
    (out / STAGING).mkdir(parents=True)
    (out / STAGING / "c.msg").write_text(cloud_message([cloud_record(record(1), CLOUDY)]))
    assert write_apel([record(1)], out, CLOUDY, lambda: NOW) == 1  # its job record only
    assert headers(out) == [CLOUD_HEADER, JOB_HEADER]
    assert write_apel([record(1)], out, CLOUDY, lambda: NOW + 60) == 0


def cloud_space(enabled: bool) -> Space:
    mt = Machinetype(name="belle", space="cloud.example.org", target_share=1, vo="belle",
                     root_image="el9-belle")
    return Space(name="cloud.example.org", api="sim", flavor_names=["m1.small"],
                 site_name="RECAS-NAPOLI.it", machinetypes={"belle": mt},
                 apel_cloud_records=enabled)


def test_the_space_option_drives_cloud_records(tmp_path: Path) -> None:
    on = Settings(state_dir=tmp_path, apel_outgoing_dir=tmp_path / "out")
    rec = record(1, site="RECAS-NAPOLI.it")
    assert export_apel(on, cloud_space(False), [rec], lambda: NOW) == 1
    assert export_apel(on, cloud_space(True), [rec], lambda: NOW) == 1
    [cloud] = [m for m in messages(tmp_path / "out") if m.startswith(CLOUD_HEADER)]
    [got] = parse_cloud_message(cloud)
    assert (got["SiteName"], got["FQAN"], got["ImageId"], got["CloudType"]) == (
        "RECAS-NAPOLI", "belle", "el9-belle", f"cloudvac/{__version__} (simulated)")
    assert "LocalGroupId" not in got


@pytest.mark.parametrize(("settings", "warned"), [("", True),
                                                  ("apel_outgoing_dir = /var/spool/x", False)])
def test_validate_warns_of_cloud_records_with_nowhere_to_go(tmp_path: Path, settings: str,
                                                            warned: bool) -> None:
    (tmp_path / "a.conf").write_text(
        f"[settings]\n{settings}\n\n[space s.example]\napi = sim\nflavor_names = m1.small\n"
        "apel_cloud_records = true\n\n[machinetype s.example a]\ntarget_share = 1\n")
    loaded = load_config_dir(tmp_path)
    assert loaded.issues == [] and loaded.spaces["s.example"].apel_cloud_records
    found = [w for w in loaded.warnings if w.option == "apel_cloud_records"]
    assert [(w.location.line, "apel_outgoing_dir" in w.message) for w in found] == (
        [(7, True)] if warned else [])
