"""``import-vcycle``'s conversion (``config/vcycle_import.py``) on a VCycle configuration
written in VCycle's dialect the way sites wrote theirs: a drop-in directory and
/etc/vcycle.conf overriding it, base64 passwords, application credentials, deprecated
names, a Keystone v2 URL, a vacuum pipe, user_data options and files, X.509 upload DNs, and
a space of an API cloudvac does not drive."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from cloudvac.config import load_config_dir
from cloudvac.config.ini import read_files
from cloudvac.config.vcycle_import import (
    Conversion,
    ImportRefused,
    convert,
    report,
    vcycle_files,
    write,
)

PASSWORD = "Pa55 w0rd-napoli!"
CRED_SECRET = "CREDSECRET-lal-1234"
EC2_SECRET = "EC2SECRET-aws-9876"
UNUSED_PASSWORD = "unused-lal-password"

NAPOLI = f"""\
# VCycle space for RECAS Napoli
[space napoli.infn.it]
api = openstack
api_version = 3
url = https://keystone.na.infn.it:5000/v3
project_name = jennifer2
tenancy_name = Jennifer 2
domain_name = infn
username = vcycle
password_base64 = {base64.b64encode(PASSWORD.encode()).decode()}
region = RegionOne
zones = nova-a nova-b
network_uuid = 6a0e3b52-8f1d-4c57-9d1e-0123456789ab
security_groups = default vcycle
processors_limit = 400
https_host = vcycle.na.infn.it
https_port = 8443
gocdb_sitename = INFN-NAPOLI-RECAS
shutdown_time = 1900000000
vacmon_hostport = vacmon.gridpp.ac.uk:8884
glance_api = 2
cleanup_hours = 48

[machinetype napoli.infn.it belle]
user_data = user_data_belle
root_image = image:CernVM-4
flavor_names = m1.xlarge
target_share = 2
hs06_per_processor = 10
heartbeat_file = vm-heartbeat
heartbeat_seconds = 600
https_x509dn = /DC=it/DC=infn/OU=Host/CN=vm.na.infn.it
accounting_fqan = /belle/Role=NULL/Capability=NULL
user_data_option_dirac_site = VCYCLE.Napoli.it
user_data_file_hostcert = hostcert.pem
user_data_file_hostkey = /etc/vcycle/hostkey.pem
cvmfs_proxy_machinetype = squid
max_wallclock_seconds = 172800
backoff_seconds = 600
fizzle_seconds = 600
user_data_proxy = true
bogus_option = 1

[machinetype napoli.infn.it squid]
user_data = /etc/vcycle/user_data_squid
root_image = https://repo.example.org/squid.img
flavor_name = m1.small
flavor_names = m1.medium
target_share = 0.1
heartbeat_seconds = 600

[vacuum_pipe napoli.infn.it lhcb]
vacuum_pipe_url = https://repo.example.org/lhcb.pipe
target_share = 3
x509dn = /DC=it/DC=infn/CN=lhcb-vm
"""
AWS = f"""\
[space aws.example.com]
api = ec2
url = https://ec2.eu-west-1.amazonaws.com
access_key = AKIAEXAMPLE
secret_key = {EC2_SECRET}

[machinetype aws.example.com t2k]
user_data = /etc/vcycle/user_data_t2k
target_share = 1
"""
MAIN = f"""\
[space lal.in2p3.fr]
api = openstack
api_version = 3
url = https://keystone.lal.in2p3.fr:5000/v2.0
tenancy_name = vcycle
cred_id = 0123456789abcdef
cred_secret = {CRED_SECRET}
username = nobody
password_base64 = {base64.b64encode(UNUSED_PASSWORD.encode()).decode()}
https_host = vcycle.lal.in2p3.fr

[machinetype lal.in2p3.fr t2k]
user_data = https://repo.example.org/t2k/user_data
root_image = image:CentOS-7
flavor_names = m1.large
target_share = 1

[machinetype napoli.infn.it belle]
target_share = 5
"""


@pytest.fixture
def vcycle(tmp_path: Path) -> list[Path]:
    drop_in = tmp_path / "vcycle.d"
    drop_in.mkdir()
    (drop_in / "10-napoli.conf").write_text(NAPOLI)
    (drop_in / "20-aws.conf").write_text(AWS)
    (drop_in / "README").write_text("not a .conf: not read")
    (tmp_path / "vcycle.conf").write_text(MAIN)
    return vcycle_files(tmp_path / "vcycle.conf", drop_in)


def converted(vcycle: list[Path], tmp_path: Path) -> Conversion:
    return convert(vcycle, tmp_path / "out" / "secrets", hostname="factory.example")


def options(text: str, title: str, tmp_path: Path) -> dict[str, str]:
    """The options of section ``title`` in cloudvac ``text``, as the loader reads them."""
    path = tmp_path / "read.conf"
    path.write_text(text)
    doc = read_files([path])
    return {k: v for k, (v, _) in doc.sections[tuple(title.split())].values.items()}


def notes(conversion: Conversion, option: str, section: str) -> list[str]:
    return [f"{n.kind}: {n.message}" for n in conversion.notes
            if n.option == option and n.section == section]


def test_reading_order_and_what_is_converted(vcycle: list[Path], tmp_path: Path) -> None:
    assert [p.name for p in vcycle] == ["10-napoli.conf", "20-aws.conf", "vcycle.conf"]
    conversion = converted(vcycle, tmp_path)
    assert sorted(conversion.files) == ["00-settings.conf", "10-lal.in2p3.fr.conf",
                                        "10-napoli.infn.it.conf"]
    assert conversion.spaces == ["lal.in2p3.fr", "napoli.infn.it"]
    assert "converts OpenStack spaces only" in notes(conversion, "api", "space aws.example.com")[0]


def test_space_options(vcycle: list[Path], tmp_path: Path) -> None:
    conversion = converted(vcycle, tmp_path)
    napoli = options(conversion.files["10-napoli.infn.it.conf"], "space napoli.infn.it",
                     tmp_path)
    secrets = tmp_path / "out" / "secrets"
    assert napoli == {
        "api": "openstack", "auth": "password", "auth_url": "https://keystone.na.infn.it:5000/v3",
        "project_name": "Jennifer 2", "user_domain_name": "infn", "project_domain_name": "infn",
        "username": "vcycle", "password_file": str(secrets / "napoli.infn.it.password"),
        "region_name": "RegionOne", "availability_zone": "nova-a",
        "networks": "6a0e3b52-8f1d-4c57-9d1e-0123456789ab",
        "security_groups": "default vcycle", "processors_limit": "400",
        "site_name": "INFN-NAPOLI-RECAS", "shutdown_time": "1900000000",
        "squid_machinetype": "squid:280"}
    space = "space napoli.infn.it"
    assert "tenancy_name is set too, and wins" in notes(conversion, "project_name", space)[0]
    assert notes(conversion, "zones", space)[0].startswith("changed:")
    assert notes(conversion, "shutdown_time", space)[0].startswith("note: same meaning")
    for gone in ("api_version", "vacmon_hostport", "glance_api"):
        assert notes(conversion, gone, space)[0].startswith("not carried:"), gone
    lal = options(conversion.files["10-lal.in2p3.fr.conf"], "space lal.in2p3.fr", tmp_path)
    assert lal["auth"] == "application_credential"
    assert lal["auth_url"] == "https://keystone.lal.in2p3.fr:5000/v3"
    assert lal["application_credential_id"] == "0123456789abcdef"
    assert lal["application_credential_secret_file"] == str(
        secrets / "lal.in2p3.fr.application_credential_secret")
    assert "password_file" not in lal and "username" in lal
    assert "rewritten to v3" in notes(conversion, "url", "space lal.in2p3.fr")[0]
    assert "password was unused" in notes(conversion, "password_base64", "space lal.in2p3.fr")[0]


def test_machinetype_and_pipe_options(vcycle: list[Path], tmp_path: Path) -> None:
    conversion = converted(vcycle, tmp_path)
    text = conversion.files["10-napoli.infn.it.conf"]
    files = "/var/lib/vcycle/spaces/napoli.infn.it/machinetypes/belle/files"
    belle = options(text, "machinetype napoli.infn.it belle", tmp_path)
    assert belle == {
        "user_data": f"{files}/user_data_belle", "root_image": "CernVM-4",
        "flavor_names": "m1.xlarge", "target_share": "5", "hs06_per_processor": "10",
        "heartbeat_file": "vm-heartbeat", "heartbeat_seconds": "600",
        "user_data_option_dirac_site": "VCYCLE.Napoli.it",
        "user_data_file_hostcert": f"{files}/hostcert.pem",
        "user_data_file_hostkey": "/etc/vcycle/hostkey.pem",
        "max_wallclock_seconds": "172800", "backoff_seconds": "600", "fizzle_seconds": "600",
        "accounting_fqan": "/belle/Role=NULL/Capability=NULL"}
    mt = "machinetype napoli.infn.it belle"
    assert "own token" in notes(conversion, "https_x509dn", mt)[0]
    assert "VCycle ignored it" in notes(conversion, "bogus_option", mt)[0]
    assert "no X.509 proxy" in notes(conversion, "user_data_proxy", mt)[0]
    assert "default is 3128, VCycle's was 280" in notes(conversion,
                                                        "cvmfs_proxy_machinetype", mt)[0]
    assert "Authorization: Bearer" in notes(conversion, "user_data", mt)[0]
    squid = options(text, "machinetype napoli.infn.it squid", tmp_path)
    assert squid["flavor_names"] == "m1.small" and "heartbeat_seconds" not in squid
    assert squid["root_image"] == "https://repo.example.org/squid.img"
    pipe = options(text, "vacuum_pipe napoli.infn.it lhcb", tmp_path)
    assert pipe == {"vacuum_pipe_url": "https://repo.example.org/lhcb.pipe",
                    "target_share": "3"}
    t2k = options(conversion.files["10-lal.in2p3.fr.conf"], "machinetype lal.in2p3.fr t2k",
                  tmp_path)
    assert t2k["target_share"] == "0" and "user_data" not in t2k
    assert "VCycle had 1" in conversion.files["10-lal.in2p3.fr.conf"]


def test_settings(vcycle: list[Path], tmp_path: Path) -> None:
    conversion = converted(vcycle, tmp_path)
    assert options(conversion.files["00-settings.conf"], "settings", tmp_path) == {
        "web_url": "https://vcycle.lal.in2p3.fr", "log_retention_hours": "48"}
    assert "one web_url for every space" in notes(conversion, "https_host",
                                                  "space napoli.infn.it")[0]


def test_secrets_only_in_their_files(vcycle: list[Path], tmp_path: Path) -> None:
    conversion = converted(vcycle, tmp_path)
    out = tmp_path / "out"
    written = write(conversion, out)
    shown = "\n".join([*conversion.files.values(), *report(conversion), repr(conversion)])
    for secret in (PASSWORD, CRED_SECRET, EC2_SECRET, UNUSED_PASSWORD,
                   base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in shown
    secrets = out / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    password = secrets / "napoli.infn.it.password"
    assert password.read_text() == PASSWORD + "\n"
    assert (secrets / "lal.in2p3.fr.application_credential_secret").read_text() == \
        CRED_SECRET + "\n"
    assert {stat.S_IMODE(p.stat().st_mode) for p in secrets.iterdir()} == {0o600}
    assert set(written) == {*secrets.iterdir(), *(out / n for n in conversion.files)}


def test_refuses_to_overwrite_unless_forced(vcycle: list[Path], tmp_path: Path) -> None:
    conversion = converted(vcycle, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "10-napoli.infn.it.conf").write_text("# mine\n")
    with pytest.raises(ImportRefused) as refused:
        write(conversion, out)
    assert refused.value.existing == [out / "10-napoli.infn.it.conf"]
    assert sorted(p.name for p in out.iterdir()) == ["10-napoli.infn.it.conf"]  # nothing
    write(conversion, out, force=True)
    assert (out / "10-napoli.infn.it.conf").read_text().startswith("# Converted")


def test_the_result_loads(vcycle: list[Path], tmp_path: Path) -> None:
    """Everything the loader can check without the sites' files and the network: the only
    errors left are the pipe (fetched by the daemon) and nothing else."""
    conversion = converted(vcycle, tmp_path)
    write(conversion, tmp_path / "out")
    loaded = load_config_dir(tmp_path / "out")
    assert set(loaded.spaces) == {"lal.in2p3.fr", "napoli.infn.it"}
    assert [(i.section, i.option) for i in loaded.issues] == [
        ("vacuum_pipe napoli.infn.it lhcb", "vacuum_pipe_url")]
    assert "not fetched yet" in loaded.issues[0].message


def test_report_groups_and_locates(vcycle: list[Path], tmp_path: Path) -> None:
    lines = report(converted(vcycle, tmp_path))
    titles = [line for line in lines if line and not line.startswith("  ")]
    assert [t.split(" (")[0] for t in titles] == [
        "Not carried over", "Meaning changed", "To check", "Renamed or converted",
        "Carried with the same meaning, worth knowing"]
    assert any(line.startswith(f"  {vcycle[0]}:") and "x509dn" in line for line in lines)
