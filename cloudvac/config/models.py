"""Typed configuration: ``[space NAME]``, ``[machinetype SPACE NAME]`` (``[settings]``:
``settings.py``).

Option names follow VCycle's where the meaning is the same.  The models are the truth
about options, defaults and limits; the admin guide's option tables are generated from
them (``Field(description=...)``).  Every model forbids unknown options, so a typo is an
error naming the option rather than a silently ignored line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cloudvac.config.dirac import DiracInstance
from cloudvac.config.ec2 import Ec2Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.paths import AbsolutePath, Template
from cloudvac.config.proxies import normalize_proxy_list
from cloudvac.config.settings import ConfigModel, Seconds
from cloudvac.model.layout import FILE_NAME, SHUTDOWN_FILE
from cloudvac.model.naming import MACHINETYPE_NAME, SPACE_NAME

ImageFamily = Literal["el9", "el8", "cernvm4"]
"""The image a machinetype boots (``context/families.py``: what each needs)."""


class SimSpace(ConfigModel):
    """``sim_*`` options of a space with ``api = sim``: the embedded simulated cloud."""

    quota_processors: int | None = Field(None, ge=0, description="Cores the simulated project "
                                         "may use (its Nova quota); unlimited if unset.")
    quota_instances: int | None = Field(None, ge=0, description="Servers it may hold.")
    boot_seconds: float = Field(5.0, ge=0, description="Mean time from create to running.")
    failure_rate: float = Field(0.0, ge=0, le=1, description="Fraction of creates that end in "
                                "the failed state (cloud ERROR).")
    unschedulable_flavors: list[str] = Field(default_factory=list, description="Flavors whose "
                                             "servers always end in ERROR (no valid host).")
    api_latency_seconds: float = Field(0.0, ge=0, description="Delay added to every API call.")
    fail_api: bool = Field(False, description="Every API call raises Retryable (outage test).")
    seed: int | None = Field(None, description="Random seed, for reproducible runs.")
    flavors: list[str] = Field(
        default_factory=lambda: ["m1.small:1:2048", "m1.medium:2:4096", "m1.large:4:8192",
                                 "m1.xlarge:8:16384"],
        description="Simulated flavors as NAME:VCPUS:RAM_MB[:BENCHMARK[:TYPE]]; BENCHMARK "
                    "per processor and TYPE (default HEPSPEC) play the flavor's "
                    "accounting:benchmark_value and accounting:benchmark_type extra specs.")

    @field_validator("flavors")
    @classmethod
    def _flavors(cls, value: list[str]) -> list[str]:
        for number, entry in enumerate(value, start=1):
            parts = entry.split(":")
            if not 3 <= len(parts) <= 5 or not parts[0] or not parts[1].isdigit() \
                    or not parts[2].isdigit() or int(parts[1]) < 1 \
                    or not all(p.replace(".", "", 1).isdigit() for p in parts[3:4]) \
                    or any(float(p) <= 0 for p in parts[3:4]) or not all(parts[4:5]):
                raise ValueError(
                    f"flavor {number} is not NAME:VCPUS:RAM_MB[:BENCHMARK[:TYPE]]")
        return value


class SimMachinetype(ConfigModel):
    """``sim_*`` options of a machinetype in a simulated space: how its pilots behave."""

    job_seconds: float = Field(60.0, gt=0, description="Mean time a pilot runs jobs.")
    no_work_probability: float = Field(0.0, ge=0, le=1, description="Chance a pilot finds no "
                                       "work and ends early with 300.")
    error_probability: float = Field(0.0, ge=0, le=1, description="Chance a pilot ends with a "
                                     "500/600 error code.")
    heartbeat_period_seconds: float = Field(10.0, gt=0, description="How often simulated "
                                            "pilots heartbeat.")


class Machinetype(ConfigModel):
    """One ``[machinetype SPACE NAME]`` section: a VM profile, normally one per VO."""

    name: str
    space: str
    vo: str | None = Field(None, description="Virtual organisation of the pilots.")
    target_share: float = Field(0.0, ge=0, description="Relative share of the space's HS06; "
                                "0 means never create. Shares need not sum to 1.")
    processors_limit: int | None = Field(None, ge=0, description="Cap on this machinetype's "
                                         "processors in any state.")
    max_starting_processors: int | None = Field(None, ge=0, description="Cap on processors "
                                                "of machines still starting.")
    min_processors: int = Field(1, ge=1, description="Smallest acceptable flavor vCPU count.")
    max_processors: int | None = Field(None, ge=1, description="Largest acceptable flavor "
                                       "vCPU count.")
    flavor_names: list[str] = Field(default_factory=list, description="Candidate flavors, "
                                    "first fit wins; default: the space's flavor_names.")
    root_image: str | None = Field(None, description="Image name or id to boot.")
    image_family: ImageFamily = Field("el9", description="What root_image is: el9 (default), "
                                      "el8 (stock EL cloud images) or cernvm4 (legacy).")
    user_data: Template | None = Field(None, description="user_data template: builtin:NAME "
                                       "or a path.")
    hs06_per_processor: float | None = Field(None, gt=0, description="Benchmark per processor; "
                                             "weights shares, MJF and accounting.")
    accounting_fqan: str | None = Field(None, pattern=r"^/[^\s]+$", description="FQAN of "
                                        "the pilots in APEL records, e.g. "
                                        "/belle/Role=production/Capability=NULL.")
    mb_per_processor: int = Field(2048, ge=1, description="MB per processor: MJF's max_rss_bytes; "
                                  "dirac-cs's MaxRAM when the flavor's RAM is unknown.")
    max_wallclock_seconds: Seconds = Field(86400, description="Delete running machines older "
                                           "than this.")
    max_starting_seconds: Seconds | None = Field(None, description="Delete machines starting "
                                                 "longer than this; default: the space's.")
    fizzle_seconds: Seconds = Field(600, description="A machine that stops sooner than this "
                                    "(without a 100/200 code) sets the backoff.")
    backoff_seconds: Seconds = Field(3600, description="No new machines this long after an "
                                     "abort (codes 300-699 or a fizzle).")
    vm_unreachable_poweroff_seconds: Seconds = Field(
        14400, description="The in-VM agent ends its pilot and powers the VM off when the "
        "manager has not answered it for this long, or answers that it no longer knows or "
        "accepts the VM (401/403/404/410): a dead manager, a revoked token or a deleted "
        "project cannot leave VMs running. Long enough to ride out a manager restart or a "
        "network outage; at least three heartbeat periods; 0 disables.")
    vm_deadline_grace_seconds: Seconds = Field(
        3600, description="The in-VM agent ends its pilot and powers the VM off at the "
        "latest max_wallclock_seconds + this after its user_data was rendered (its creation), "
        "even if the manager never deletes it; longer than the slowest boot, so that the "
        "manager's own deletion normally comes first.")
    heartbeat_file: str | None = Field(None, pattern=FILE_NAME.pattern,
                                       description="File VMs upload to say they are alive "
                                       "(default: heartbeat).")
    heartbeat_seconds: Seconds | None = Field(None, description="Staleness limit: delete "
                                              "running machines whose heartbeat_file is "
                                              "older than this; unset or 0 disables.")
    heartbeat_period_seconds: int | None = Field(None, ge=1, description="How often the "
                                                 "in-VM agent uploads heartbeat_file; default "
                                                 "heartbeat_seconds / 3 within 10-300 "
                                                 "(60 without a staleness limit).")
    heartbeat_list_seconds: int | None = Field(None, ge=1, description="Heartbeat lists "
                                               "(and squid discovery) show VMs that "
                                               "heartbeated within this; default "
                                               "heartbeat_seconds, else 3600.")
    shutdown_time: float | None = Field(None, description="Unix time: no new machines after "
                                        "it; running ones carry on (VCycle's meaning).")
    dirac: str | None = Field(None, description="The [dirac NAME] instance its pilots "
                              "report to.")
    host_cert_file: Path | None = Field(None, description="Host certificate (PEM) for the "
                                        "pilot, registered as GenericPilot in the VO's CS.")
    host_key_file: Path | None = Field(None, description="Its private key (mode 0600).")
    pilot_proxy_file: Path | None = Field(None, description="A pilot proxy instead of a host "
                                          "certificate (VM lifetime <= proxy lifetime).")
    block_metadata: bool = Field(True, description="Block 169.254.169.254 once the VM has "
                                 "read its user_data, so payloads cannot read the secrets.")
    cvmfs_repositories: list[str] | None = Field(None, description="CVMFS repositories; "
                                                 "default: the VO's and the common ones.")
    pilot_options: list[str] = Field(default_factory=list, description="Extra '-o /Path=value'"
                                     " options for dirac-pilot.py.")
    user_data_options: dict[str, str] = Field(default_factory=dict, description="From "
                                              "user_data_option_X: replaces "
                                              "##user_data_option_X## in templates.")
    user_data_files: dict[str, AbsolutePath] = Field(default_factory=dict, description="From "
                                             "user_data_file_X: file contents for "
                                             "##user_data_option_X## / ##user_data_file_X##.")
    sim: SimMachinetype | None = None

    @field_validator("pilot_options")
    @classmethod
    def _pilot_options(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.match(r"^/[A-Za-z0-9_/]+=\S+$", v)]
        if bad:
            raise ValueError(f"pilot options are /Path=value; option {value.index(bad[0]) + 1} "
                             "is not")
        return value

    @field_validator("user_data_options", "user_data_files")
    @classmethod
    def _placeholder_names(cls, value: dict[str, object]) -> dict[str, object]:
        bad = [k for k in value if not re.match(r"^[a-z0-9_]+$", k)]
        if bad:
            raise ValueError(f"user_data option names use a-z, 0-9 and '_', got {bad[0]!r}")
        return value

    @field_validator("heartbeat_file")
    @classmethod
    def _heartbeat_file(cls, value: str | None) -> str | None:
        if value == SHUTDOWN_FILE:
            raise ValueError(f"{SHUTDOWN_FILE} is the VM's shutdown message, not a heartbeat")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MACHINETYPE_NAME.match(value):
            raise ValueError("machinetype names use a-z, 0-9 and '-' (at most 32 characters)")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> Machinetype:
        if self.max_processors is not None and self.max_processors < self.min_processors:
            raise ValueError(f"max_processors ({self.max_processors}) is below min_processors "
                             f"({self.min_processors})")
        if bool(self.heartbeat_seconds) and not self.heartbeat_file:
            raise ValueError("heartbeat_seconds needs heartbeat_file")
        if 0 < self.vm_unreachable_poweroff_seconds < 3 * self.heartbeat_period:
            # Fewer chances to be heard would power healthy VMs off after a missed beat or two.
            raise ValueError(f"vm_unreachable_poweroff_seconds "
                             f"({self.vm_unreachable_poweroff_seconds}) must be 0 or at least "
                             f"three heartbeat periods ({3 * self.heartbeat_period})")
        return self

    @property
    def heartbeat_check(self) -> bool:
        """Whether the staleness limit applies (``heartbeat_file`` and ``heartbeat_seconds``)."""
        return bool(self.heartbeat_file and self.heartbeat_seconds)

    @property
    def heartbeat_period(self) -> int:
        """Seconds between two heartbeats of the in-VM agent."""
        if self.heartbeat_period_seconds is not None:
            return self.heartbeat_period_seconds
        return max(10, min(300, (self.heartbeat_seconds or 180) // 3))

    @property
    def heartbeat_list_horizon(self) -> int:
        """VMs that heartbeated within this many seconds are listed as alive."""
        if self.heartbeat_list_seconds is not None:
            return self.heartbeat_list_seconds
        return self.heartbeat_seconds or 3600

    def share_weight(self, processors: int) -> float:
        """Share weight of one machine: its HS06 if the machinetype has a benchmark, else
        its processors.  The same for new and old machines (VCycle mixed the two)."""
        hs06 = self.hs06_per_processor
        return processors * hs06 if hs06 else float(processors)

    def hs06_of(self, processors: int) -> float | None:
        """The HS06 of a machine with ``processors``, if the machinetype has a benchmark."""
        hs06 = self.hs06_per_processor
        return processors * hs06 if hs06 else None


class Space(ConfigModel):
    """One ``[space NAME]`` section with its machinetypes."""

    name: str
    api: Literal["sim", "openstack", "ec2"] = Field(description="Cloud adapter: sim, "
                                                   "openstack or ec2.")
    processors_limit: int | None = Field(None, ge=0, description="Cap on processors of all "
                                         "machines in the space's project, including servers "
                                         "cloudvac does not own there (other users, other "
                                         "spaces on the same project); the cloud's quota also "
                                         "applies.")
    max_starting_processors: int | None = Field(None, ge=0, description="Cap on processors "
                                                "of starting machines in the space.")
    creation_burst_processors: int | None = Field(
        None, ge=1, description="Processors created per cycle at most; default 10% of "
        "processors_limit (at least one machine).")
    flavor_names: list[str] = Field(default_factory=list, description="Candidate flavors of "
                                    "machinetypes that give none of their own.")
    max_starting_seconds: Seconds = Field(3600, description="Default for machinetypes.")
    delete_retry_seconds: Seconds = Field(300, description="Wait before repeating a delete "
                                          "that did not take effect.")
    intent_seconds: Seconds = Field(600, description="How long an unanswered create still "
                                    "counts against limits before it is forgotten.")
    quota_reread_seconds: Seconds = Field(600, description="While the cloud's quota leaves "
                                          "no room for any machine and this space's own "
                                          "usage is unchanged, read the quota (OpenStack "
                                          "/limits) again only this often; 0: every cycle.")
    shutdown_time: float | None = Field(None, description="Unix time: no new machines after "
                                        "it; running ones carry on (VCycle's meaning).")
    orphan_seconds: Seconds = Field(86400, description="A server with this space's tags "
                                    "whose machinetype is in no configuration (and was never "
                                    "created by this store) is deleted once this old.")
    removal_confirm_fraction: float = Field(
        0.5, gt=0, le=1, description="Machines of machinetypes removed from the "
        "configuration (or of the whole space) are drained; a removal that would delete more "
        "than this fraction of the space's machines waits for `cloudvac confirm-removal` or "
        "confirm_removals; 1 disables the guard.")
    confirm_removals: bool = Field(False, description="Confirm every removal of this space "
                                   "at once, whatever removal_confirm_fraction says.")
    removal_grace_seconds: Seconds = Field(3600, description="Machines of a removed (and "
                                           "confirmed) machinetype or space are deleted this "
                                           "long after the confirmation, at the drain rate.")
    site_name: str | None = Field(None, description="<Site>.<cc> (GOCDB name and country), "
                                  "e.g. RECAS-NAPOLI.it: DIRAC sites are <prefix>.<site_name> "
                                  "in every [dirac] without a site_name_<dirac>.")
    site_names: dict[str, str] = Field(default_factory=dict, description="From "
                                       "site_name_<dirac>: the <Site>.<cc> of this space in "
                                       "[dirac <dirac>] only, over site_name. A space option, "
                                       "not a [dirac] one: the name belongs to this cloud, "
                                       "and one project serving two DIRACs may have two "
                                       "(VCYCLE.Napoli.it in Belle II, CLOUD.RECAS-NAPOLI.it "
                                       "in GridPP).")
    apel_cloud_records: bool = Field(
        False, description="Also write an APEL cloud record (APEL-cloud-message v0.4) for "
        "each finished machine of this space, into apel_outgoing_dir, beside its job record. "
        "Only for a cloud without accounting of its own: never enable it where cASO or the "
        "site's cloud accounting reports this project, or its VMs are counted twice.")
    squid_proxies: list[str] = Field(default_factory=list, description="CVMFS proxies of this "
                                     "cloud, http://host[:port] (port 3128 if not given; "
                                     "written so); '|' balances within a group, ';' fails "
                                     "over between groups.")
    squid_machinetype: str | None = Field(None, pattern=r"^[a-z0-9-]+(:\d{1,5})?$",
                                          description="NAME[:PORT] of a machinetype whose "
                                          "heartbeating VMs are used as squids (port 3128).")
    dirac_instances: dict[str, DiracInstance] = Field(default_factory=dict, description=""
                                                      "Filled by the loader from [dirac] "
                                                      "sections the machinetypes name.")
    sim: SimSpace | None = None
    openstack: OpenStackSpace | None = None
    ec2: Ec2Space | None = None
    machinetypes: dict[str, Machinetype] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SPACE_NAME.match(value):
            raise ValueError("space names are DNS-like: a-z, 0-9, '.' and '-'")
        return value

    @field_validator("squid_proxies")
    @classmethod
    def _squid_proxies(cls, value: list[str]) -> list[str]:
        return [normalize_proxy_list(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> Space:
        if not self.machinetypes:
            raise ValueError("a space needs at least one [machinetype SPACE NAME] section")
        bare = [n for n, mt in self.machinetypes.items() if not self.flavors_for(mt)]
        if bare:
            raise ValueError(f"no flavor_names for machinetype(s) {', '.join(bare)}: set "
                             "flavor_names in the space or in each machinetype")
        if self.api == "openstack" and self.openstack is None:
            raise ValueError("api = openstack needs auth_url and credentials")
        if self.api == "ec2" and self.ec2 is None:
            raise ValueError("api = ec2 needs region and credentials")
        return self

    @model_validator(mode="before")
    @classmethod
    def _sim_defaults(cls, data: object) -> object:
        """A sim space without sim_* options gets the simulator's defaults."""
        if isinstance(data, dict) and data.get("api") == "sim" and data.get("sim") is None:
            return {**data, "sim": SimSpace()}
        return data

    def burst_processors(self, largest_machine: int) -> int:
        """Processors the planner may start this cycle (VCycle: ceil(10 % of the limit))."""
        if self.creation_burst_processors is not None:
            return max(self.creation_burst_processors, largest_machine)
        if self.processors_limit is None:
            return max(largest_machine, 64)
        return max(math.ceil(0.1 * self.processors_limit), largest_machine)

    def starting_seconds(self, mt: Machinetype) -> int:
        return mt.max_starting_seconds if mt.max_starting_seconds is not None \
            else self.max_starting_seconds

    def flavors_for(self, mt: Machinetype) -> list[str]:
        return mt.flavor_names or self.flavor_names

    def site_name_for(self, dirac: str) -> str | None:
        """The ``<Site>.<cc>`` of this space in DIRAC instance ``dirac``."""
        return self.site_names.get(dirac, self.site_name)
