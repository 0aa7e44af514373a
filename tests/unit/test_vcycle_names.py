"""The table of VCycle's options (``config/vcycle_names.py``): complete, pointing at options
that exist, and read the same way by the validator's hints and the option reference."""

from __future__ import annotations

import pytest

from cloudvac.config.models import Machinetype, SimMachinetype, SimSpace, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.pipecache import REFRESH, SHARE, URL
from cloudvac.config.settings import Settings
from cloudvac.config.vcycle_names import VCYCLE_OPTIONS, entries, hint, vcycle_name

# Every option of VCycle 3.0, transcribed from its code (shared.py, openstack_api.py and
# the other connectors) as the research notes list them, section 2.2 to 2.6.
VCYCLE_SPACE = ["api", "api_version", "processors_limit", "max_processors", "flavor_names",
                "volume_gb_per_processor", "shutdown_time", "gocdb_sitename",
                "vacmon_hostport", "https_host", "https_port", "cleanup_hours"]
VCYCLE_OPENSTACK = ["url", "project_name", "tenancy_name", "domain_name", "glance_api",
                    "username", "password_base64", "cred_id", "cred_secret", "region",
                    "zones", "security_groups", "network_uuid", "usercert", "userkey"]
VCYCLE_OTHER_APIS = {
    "ec2": ["url", "access_key", "secret_key", "version", "region", "service"],
    "google": ["project_id", "zones", "client_email", "private_key"],
    "occi": ["tenancy_name", "url", "proxy", "username", "password"],
    "azure": ["tenancy_name", "subscription", "certificate", "location", "pfx", "username",
              "password"],
    "dbce": ["tenancy_name", "url", "key", "version", "network"],
    "creamce": ["url"],
}
VCYCLE_MACHINETYPE = [
    "user_data", "backoff_seconds", "fizzle_seconds", "max_wallclock_seconds", "target_share",
    "processors_limit", "max_starting_processors", "flavor_names", "flavor_name",
    "min_processors", "max_processors", "cpu_per_machine", "processors_per_machine",
    "mb_per_processor", "hs06_per_processor", "disk_gb_per_processor", "accounting_fqan",
    "root_image", "cernvm_signing_dn", "root_public_key", "https_x509dn", "x509dn",
    "heartbeat_file", "heartbeat_seconds", "cvmfs_proxy_machinetype", "user_data_option_x",
    "user_data_file_x", "user_data_proxy", "legacy_proxy", "machinetype_path",
    "log_joboutputs", "log_machineoutputs", "machineoutputs_days", "joboutputs_days",
    "remote_joboutputs_url", "remote_joboutputs_cert", "remote_joboutputs_key",
    "user_data_proxy_cert", "user_data_proxy_key"]
VCYCLE_PIPE = ["vacuum_pipe_url", "target_share"]
CLOUDVAC = {
    "settings": set(Settings.model_fields),
    "space": set(Space.model_fields) | set(OpenStackSpace.model_fields)
    | {"sim_" + f for f in SimSpace.model_fields},
    "machinetype": set(Machinetype.model_fields)
    | {"sim_" + f for f in SimMachinetype.model_fields},
    "vacuum_pipe": {URL, REFRESH, SHARE},
}


def test_every_vcycle_option_has_a_row() -> None:
    missing = [("space", o) for o in VCYCLE_SPACE if not entries("space", o)]
    missing += [("space", o) for o in VCYCLE_OPENSTACK if not entries("space", o, "openstack")]
    missing += [(f"space api={api}", o) for api, names in VCYCLE_OTHER_APIS.items()
                for o in names if not [e for e in entries("space", o) if e.api == api]]
    missing += [("machinetype", o) for o in VCYCLE_MACHINETYPE if not entries("machinetype", o)]
    missing += [("vacuum_pipe", o) for o in VCYCLE_PIPE if not entries("vacuum_pipe", o)]
    assert missing == []


def test_rows_point_at_options_that_exist_and_say_why_not() -> None:
    for row in VCYCLE_OPTIONS:
        if row.carried is None:
            assert row.note, f"{row.vcycle}: say why it is not carried"
            continue
        option = row.carried.replace("*", "")
        known = CLOUDVAC[row.target_section]
        assert option in known or row.carried.endswith("*"), (row.vcycle, row.carried)
        if row.changed:
            assert row.note, f"{row.vcycle}: say how the meaning changed"


def test_accounting_fqan_is_carried_for_apel() -> None:
    assert "accounting_fqan" in Machinetype.model_fields
    assert [e.carried for e in entries("machinetype", "accounting_fqan")] == ["accounting_fqan"]


@pytest.mark.parametrize(("section", "option", "vcycle"), [
    ("space", "auth_url", "url"),
    ("space", "password_file", "password_base64"),
    ("space", "application_credential_id", "cred_id"),
    ("space", "user_domain_name", "domain_name"),
    ("space", "squid_machinetype", "cvmfs_proxy_machinetype"),
    ("space", "site_name", "gocdb_sitename"),
    ("settings", "web_url", "https_host, https_port"),
    ("settings", "log_retention_hours", "cleanup_hours"),
    ("space", "project_name", None),  # VCycle's own name (tenancy_name was its alias)
    ("machinetype", "flavor_names", None),
    ("machinetype", "user_data_option_X", None),
    ("machinetype", "vo", None),
])
def test_vcycle_name_for_the_reference(section: str, option: str, vcycle: str | None) -> None:
    assert vcycle_name(section, option) == vcycle  # type: ignore[arg-type]


@pytest.mark.parametrize(("section", "option", "words"), [
    ("space", "tenancy_name", "tenancy_name is VCycle's name: use project_name"),
    ("space", "url", "use auth_url"),
    ("space", "password_base64", "use password_file"),
    ("space", "domain_name", "use user_domain_name and project_domain_name"),
    ("space", "https_host", "use web_url in [settings]"),
    ("space", "secret_key", "(api = ec2), not carried over"),
    ("machinetype", "cvmfs_proxy_machinetype", "use squid_machinetype in [space]"),
    ("machinetype", "x509dn", "own token"),
    ("vacuum_pipe", "x509dn", "own token"),
])
def test_hints_know_vcycle(section: str, option: str, words: str) -> None:
    said = hint(section, option)
    assert said is not None and words in said


def test_no_hint_for_what_vcycle_did_not_have() -> None:
    assert hint("space", "processors_limt") is None
    assert hint("machinetype", "user_data_option_x") is None
    assert hint("dirac", "url") is None
