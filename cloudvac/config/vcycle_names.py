"""VCycle's option names and what became of each in cloudvac: the one table that the
validator's suggestions, ``cloudvac import-vcycle`` and the option reference read.

One row per VCycle option (per target, when one VCycle option becomes two cloudvac ones):
``section`` is VCycle's section, ``carried`` the cloudvac option it becomes (None: not
carried over), ``into`` cloudvac's section when it is not VCycle's one, ``note`` why it is
not carried, or how it is converted, or how its meaning changed ("" when only the name
changed or nothing did), ``changed`` whether cloudvac's option means something else than
VCycle's (the note says what), ``api`` the VCycle connector the option belongs to (None:
every space), ``secret`` whether the value is a secret (never written into a .conf, never
printed).  A name ending in ``*`` stands for every option with that prefix.

Sources: VCycle 3.0 (``shared.py``, ``openstack/openstack_api.py``, the other connectors),
as described option by option in the project's research notes on VCycle, section 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Section = Literal["settings", "space", "machinetype", "vacuum_pipe"]


@dataclass(frozen=True, slots=True)
class VcycleOption:
    section: Section
    vcycle: str
    carried: str | None
    note: str = ""
    changed: bool = False
    into: Section | None = None
    api: str | None = None
    secret: bool = False

    @property
    def target_section(self) -> Section:
        """cloudvac's section of ``carried``."""
        return self.into or self.section

    def matches(self, option: str) -> bool:
        return _match(self.vcycle, option)


def _match(pattern: str, option: str) -> bool:
    return option.startswith(pattern[:-1]) if pattern.endswith("*") else option == pattern


_O = VcycleOption
NO_API = ("spaces with api = {api} are not converted: cloudvac drives OpenStack (and its "
          "simulator) only")
NO_EFFECT = "had no effect in VCycle 3 either (deprecated there, only logged)"
TOKEN = ("VMs upload heartbeats, shutdown_message and logs with their own token (given in "
         "user_data, sent as 'Authorization: Bearer'), not with an X.509 client certificate: "
         "nothing to configure")


def _other_api(api: str, *names: str, secret: tuple[str, ...] = ()) -> tuple[VcycleOption, ...]:
    return tuple(_O("space", n, None, NO_API.format(api=api), api=api, secret=n in secret)
                 for n in names)


VCYCLE_OPTIONS: tuple[VcycleOption, ...] = (
    # -- [space NAME], every connector (BaseSpace) ------------------------------------------
    _O("space", "api", "api", "openstack is carried; " + NO_API.format(
        api="ec2, google, occi, azure, dbce or creamce")),
    _O("space", "api_version", None, "cloudvac speaks Keystone v3 only; import-vcycle "
       "rewrites a v2 url (.../v2.0) to v3 (.../v3)"),
    _O("space", "processors_limit", "processors_limit"),
    _O("space", "max_processors", "processors_limit", "VCycle's deprecated alias of "
       "processors_limit"),
    _O("space", "flavor_names", "flavor_names"),
    _O("space", "volume_gb_per_processor", None, "cloudvac's boot_volume_gb (a [space] "
       "option with api = openstack) is one size per VM, not per processor: set it to this "
       "value times the flavor's vCPUs"),
    _O("space", "shutdown_time", "shutdown_time", "same meaning: no new machines after it, "
       "running ones finish (VCycle's bug that failed every creation while it was set is "
       "gone)"),
    _O("space", "gocdb_sitename", "site_name", "fills ##user_data_site## as before; when a "
       "machinetype reports to a [dirac] instance it also makes the DIRAC site name "
       "(<prefix>.<site_name>, which wants <Site>.<cc>); no APEL records are written",
       changed=True),
    _O("space", "vacmon_hostport", None, "cloudvac sends no VacMon messages: it serves "
       "Prometheus metrics at /metrics on the operator's door"),
    _O("space", "https_host", "web_url", "VMs reach cloudvac's own web service (no Apache): "
       "web_url = https://HOST:PORT in [settings], one for every space; it also needs "
       "web_listen and web_tls_cert/web_tls_key", changed=True, into="settings"),
    _O("space", "https_port", "web_url", "the port of web_url in [settings] (see https_host)",
       changed=True, into="settings"),
    _O("space", "cleanup_hours", "log_retention_hours", "one value for every space, in "
       "[settings]: uploaded files of ended machines are removed after it", into="settings"),
    # -- [space NAME] with api = openstack ---------------------------------------------------
    _O("space", "url", "auth_url", "Keystone v3 only: import-vcycle rewrites .../v2.0 to "
       ".../v3", api="openstack"),
    _O("space", "project_name", "project_name", api="openstack"),
    _O("space", "tenancy_name", "project_name", "VCycle's deprecated alias of project_name "
       "(it won over project_name when both were set)", api="openstack"),
    _O("space", "domain_name", "user_domain_name", "VCycle used one domain for the user and "
       "the project", api="openstack"),
    _O("space", "domain_name", "project_domain_name", "VCycle used one domain for the user "
       "and the project", api="openstack"),
    _O("space", "glance_api", None, "cloudvac never uploads images, so it needs no Glance "
       "version: root_image names an image already in Glance", api="openstack"),
    _O("space", "username", "username", api="openstack"),
    _O("space", "password_base64", "password_file", "secrets are never written in cloudvac's "
       "configuration: import-vcycle decodes it into a file of mode 0600", api="openstack",
       secret=True),
    _O("space", "cred_id", "application_credential_id", "with auth = application_credential",
       api="openstack"),
    _O("space", "cred_secret", "application_credential_secret_file", "secrets are never "
       "written in cloudvac's configuration: import-vcycle writes it to a file of mode 0600",
       api="openstack", secret=True),
    _O("space", "region", "region_name", api="openstack"),
    _O("space", "zones", "availability_zone", "one zone: VCycle picked one of several at "
       "random per VM, import-vcycle carries the first", changed=True, api="openstack"),
    _O("space", "security_groups", "security_groups", api="openstack"),
    _O("space", "network_uuid", "networks", "one network id as before; cloudvac's default "
       "'auto' is the project's network, as VCycle's was", api="openstack"),
    _O("space", "usercert", None, "X.509 authentication to OpenStack was disabled in VCycle "
       "too", api="openstack"),
    _O("space", "userkey", None, "X.509 authentication to OpenStack was disabled in VCycle "
       "too", api="openstack"),
    # -- [space NAME] of the other connectors ----------------------------------------------
    *_other_api("ec2", "url", "access_key", "secret_key", "version", "region", "service",
                secret=("secret_key",)),
    *_other_api("google", "project_id", "zones", "client_email", "private_key",
                secret=("private_key",)),
    *_other_api("occi", "tenancy_name", "url", "proxy", "username", "password",
                secret=("password",)),
    *_other_api("azure", "tenancy_name", "subscription", "certificate", "location", "pfx",
                "username", "password", secret=("password", "pfx")),
    *_other_api("dbce", "tenancy_name", "url", "key", "version", "network", secret=("key",)),
    *_other_api("creamce", "url"),
    # -- [machinetype SPACE NAME] --------------------------------------------------------------
    _O("machinetype", "user_data", "user_data", "a local template (VCycle's ##user_data_*## "
       "placeholders work; import-vcycle makes a relative path absolute under VCycle's "
       "machinetype files/) or builtin:NAME; URLs are not fetched (download the template); "
       "its uploads must send the VM's token", changed=True),
    _O("machinetype", "backoff_seconds", "backoff_seconds"),
    _O("machinetype", "fizzle_seconds", "fizzle_seconds"),
    _O("machinetype", "max_wallclock_seconds", "max_wallclock_seconds"),
    _O("machinetype", "target_share", "target_share"),
    _O("machinetype", "processors_limit", "processors_limit"),
    _O("machinetype", "max_starting_processors", "max_starting_processors"),
    _O("machinetype", "flavor_names", "flavor_names"),
    _O("machinetype", "flavor_name", "flavor_names", "VCycle's deprecated alias of "
       "flavor_names"),
    _O("machinetype", "min_processors", "min_processors"),
    _O("machinetype", "max_processors", "max_processors"),
    _O("machinetype", "cpu_per_machine", None, "had no effect in VCycle (min_processors' "
       "default overwrote it); set min_processors if that is what you meant"),
    _O("machinetype", "processors_per_machine", None, "had no effect in VCycle "
       "(min_processors' default overwrote it); set min_processors if that is what you "
       "meant"),
    _O("machinetype", "mb_per_processor", "mb_per_processor"),
    _O("machinetype", "hs06_per_processor", "hs06_per_processor", "also weighs the target "
       "shares (HS06 instead of processors), not only MJF", changed=True),
    _O("machinetype", "disk_gb_per_processor", None, NO_API.format(api="google"),
       api="google"),
    _O("machinetype", "accounting_fqan", "accounting_fqan", "the FQAN of cloudvac's APEL "
       "records (apel_outgoing_dir in [settings])"),
    _O("machinetype", "root_image", "root_image", "an image name or id in Glance: cloudvac "
       "never downloads or uploads images. import-vcycle turns image:NAME into NAME and "
       "keeps a URL or path, the name of the image VCycle uploaded from it", changed=True),
    _O("machinetype", "cernvm_signing_dn", None, "cloudvac uploads no images, so there is "
       "no signature to check (the check was broken in VCycle)"),
    _O("machinetype", "root_public_key", None, "make a key pair of it (openstack keypair "
       "create --public-key FILE NAME) and set key_name = NAME in [space]"),
    _O("machinetype", "https_x509dn", None, TOKEN, changed=True),
    _O("machinetype", "x509dn", None, TOKEN, changed=True),
    _O("machinetype", "heartbeat_file", "heartbeat_file"),
    _O("machinetype", "heartbeat_seconds", "heartbeat_seconds"),
    _O("machinetype", "cvmfs_proxy_machinetype", "squid_machinetype", "a [space] option in "
       "cloudvac, whose default port is 3128 (VCycle's was 280): import-vcycle writes "
       "VCycle's port", changed=True, into="space"),
    _O("machinetype", "user_data_option_*", "user_data_option_*"),
    _O("machinetype", "user_data_file_*", "user_data_file_*", "import-vcycle makes a "
       "relative path absolute under VCycle's machinetype files/"),
    _O("machinetype", "user_data_proxy", None, "cloudvac makes no X.509 proxy for "
       "user_data: give the pilot host_cert_file/host_key_file or pilot_proxy_file "
       "(builtin:NAME templates)"),
    _O("machinetype", "legacy_proxy", None, "cloudvac makes no X.509 proxy for user_data "
       "(see user_data_proxy)"),
    _O("machinetype", "machinetype_path", None, "VCycle's own directory of the machinetype; "
       "import-vcycle resolves relative paths against it"),
    _O("machinetype", "log_joboutputs", None, NO_EFFECT + "; cloudvac keeps uploaded files "
       "for log_retention_hours"),
    _O("machinetype", "log_machineoutputs", None, NO_EFFECT),
    _O("machinetype", "machineoutputs_days", None, NO_EFFECT),
    _O("machinetype", "joboutputs_days", None, NO_EFFECT),
    _O("machinetype", "remote_joboutputs_url", None, NO_EFFECT),
    _O("machinetype", "remote_joboutputs_cert", None, NO_EFFECT),
    _O("machinetype", "remote_joboutputs_key", None, NO_EFFECT),
    _O("machinetype", "user_data_proxy_cert", None, NO_EFFECT),
    _O("machinetype", "user_data_proxy_key", None, NO_EFFECT),
    # -- [vacuum_pipe SPACE PREFIX]: its other options are machinetype options, set in every
    # machinetype of the pipe (the [machinetype] rows above apply to them) ----------------
    _O("vacuum_pipe", "vacuum_pipe_url", "vacuum_pipe_url", "https:// only (plain http only "
       "to a loopback address); the daemon fetches the document, so validate reports the "
       "pipe as not fetched yet until cloudvac run has fetched it once", changed=True),
    _O("vacuum_pipe", "target_share", "target_share", "the pipe's total, shared among its "
       "machinetypes by the pipe's own shares, as in VCycle"),
)


def entries(section: Section, option: str, api: str | None = None) -> tuple[VcycleOption, ...]:
    """The rows for VCycle's ``option`` of ``section`` in a space of ``api`` (rows of
    every connector: ``api`` None; rows of every api match any)."""
    found = [e for e in VCYCLE_OPTIONS if e.section == section and e.matches(option)]
    if api is not None:
        found = [e for e in found if e.api in (None, api)]
    return tuple(found)


def vcycle_name(section: Section, option: str) -> str | None:
    """VCycle's name for cloudvac's ``option`` of ``section`` when it differs, else None."""
    rows = [e for e in VCYCLE_OPTIONS if e.target_section == section and e.carried is not None
            and e.api in (None, "openstack") and _match(e.carried, option)]
    if not rows or any(_match(e.vcycle, option) for e in rows):
        return None
    names = [e.vcycle for e in rows if "deprecated alias" not in e.note]
    return ", ".join(dict.fromkeys(names or [rows[0].vcycle]))


def hint(section: str, option: str) -> str | None:
    """What to say about ``option``, unknown in cloudvac's ``section``, when it is VCycle's:
    the option to use instead, or why it has no counterpart; None when VCycle had no
    such option either."""
    if section not in ("space", "machinetype", "vacuum_pipe"):
        return None
    rows = entries(section, option)  # type: ignore[arg-type]
    if not rows and section == "vacuum_pipe":  # a pipe's options are machinetype options
        rows = entries("machinetype", option)
    own = [e for e in rows if e.api in (None, "openstack")] or list(rows)
    if not own:
        return None
    first = own[0]
    if first.carried is None:
        where = f" (api = {first.api})" if first.api not in (None, "openstack") else ""
        return f"{option} is VCycle's option{where}, not carried over: {first.note}"
    targets = " and ".join(dict.fromkeys(e.carried for e in own if e.carried))
    if _match(first.carried, option) and first.into is None:
        return None
    place = f" in [{first.into}]" if first.into else ""
    return f"{option} is VCycle's name: use {targets}{place}" + (
        f"; {first.note}" if first.note else "")
