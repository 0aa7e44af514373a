"""``[dirac NAME]`` sections: one per DIRAC instance the pilots report to.

The Belle II DIRAC at KEK reads the "Setups" pilot.json format and names cloud sites
``VCYCLE.<site>.<cc>``; the GridPP multi-VO DIRAC (T2K, Hyper-K) reads the "Operations
mirror" format and names them ``CLOUD.<site>.<cc>`` (shared/reference/research-dirac.md
§1.2, §4.1).  Versions hard-coded here go stale at the VO's next upgrade, so ``version``
is optional.  Only the pilot's code (``pilot.tar``, checked against ``checksums.sha512``)
comes from ``pilot_files_url``; the pilot.json is always cloudvac's own, written from this
section (it names this space's CE and site, which the VO's published one lists only once
the CS does).

A space's site is ``<site_prefix>.<site_name>`` with the space's ``site_name_<NAME>`` (for
``[dirac NAME]``) taking precedence over its ``site_name``: a cloud is a site of each
DIRAC instance it serves, and each instance may know it by another name (the paper's
Napoli project is VCYCLE.Napoli.it in Belle II DIRAC and CLOUD.RECAS-NAPOLI.it in GridPP
DIRAC).  The names live in the ``[space]`` section, next to ``site_name``, because they
belong to the cloud, not to the DIRAC instance every space shares.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DIRAC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SITE_PART = re.compile(r"^[A-Za-z0-9_-]+$")
CS_URL = re.compile(r"^dips://[A-Za-z0-9.-]+:\d+/Configuration/Server$")


class DiracInstance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    name: str
    format: Literal["setups", "operations"] = Field(description="pilot.json format: 'setups' "
                                                    "(DIRAC <= v8, Belle II) or 'operations' "
                                                    "(DIRAC v9 Operations mirror, GridPP).")
    site_prefix: str = Field(description="DIRAC site domain: VCYCLE (Belle II) or CLOUD "
                             "(GridPP); sites are <prefix>.<site_name>.")
    setup: str = Field(description="DIRAC setup, e.g. Belle-KEK or GridPP.")
    configuration_servers: list[str] = Field(min_length=1, description="dips:// CS URLs.")
    project: str = Field("", description="Extension prefix: Belle -> BelleDIRAC; empty for "
                         "vanilla DIRAC.")
    version: str = Field("", description="DIRAC release the pilot installs; must equal the "
                         "VO's Operations Pilot/Version.")
    command_extensions: list[str] = Field(default_factory=list, description="The pilot's "
                                          "CommandExtensions (pilot.json), if any.")
    cvmfs_locations: list[str] = Field(
        default_factory=lambda: ["/cvmfs/grid.cern.ch", "/cvmfs/dirac.egi.eu"],
        description="Where the pilot looks for DIRAC in CVMFS (--CVMFS_locations).")
    pilot_files_url: str = Field("file:/cvmfs/dirac.egi.eu/pilot", description="Where the VM "
                                 "gets dirac-pilot.py and friends (file: or https: URL).")
    ce_type: str = Field("VMCloud", description="CS CEType of our CEs (no SiteDirector can "
                         "instantiate it).")
    local_ce_type: str = Field("Pool", description="Inner CE of the pilot.")
    os: str = Field("EL9", description="OS advertised in the CS snippet.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DIRAC_NAME.match(value):
            raise ValueError("dirac instance names use a-z, 0-9, '_' and '-'")
        return value

    @field_validator("site_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not SITE_PART.match(value):
            raise ValueError("site_prefix is one word of letters, digits, '_' or '-'")
        return value

    @field_validator("configuration_servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not CS_URL.match(v)]
        if bad:
            raise ValueError(f"expected dips://HOST:PORT/Configuration/Server, got {bad[0]!r}")
        return value


def dirac_site(prefix: str, site_name: str) -> str:
    """``<prefix>.<site_name>`` checked against DIRAC's rule: exactly three dot-separated
    parts of letters, digits, '_' and '-' (the last being the country code)."""
    site = f"{prefix}.{site_name}"
    parts = site.split(".")
    if len(parts) != 3 or not all(SITE_PART.match(p) for p in parts):
        raise ValueError(f"DIRAC site {site!r} must be <Domain>.<Site>.<cc>: give site_name "
                         "as <Site>.<cc>, e.g. RECAS-NAPOLI.it")
    return site
