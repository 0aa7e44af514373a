"""VCycle's option names and what became of each in cloudvac: the one table that the
validator's suggestions, ``cloudvac import-vcycle`` and the option reference read.

``carried`` is the cloudvac option a VCycle option becomes (None: not carried over), ``note``
why not, or how its meaning changed ("" when only the name changed or nothing did).
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


VCYCLE_OPTIONS: tuple[VcycleOption, ...] = (
    VcycleOption("space", "tenancy_name", "project_name"),
    VcycleOption("space", "url", "auth_url"),
    VcycleOption("machinetype", "flavor_name", "flavor_names"),
)


def vcycle_name(section: Section, option: str) -> str | None:
    """VCycle's name for cloudvac's ``option`` of ``section`` when it differs, else None."""
    for entry in VCYCLE_OPTIONS:
        if entry.section == section and entry.carried == option and entry.vcycle != option:
            return entry.vcycle
    return None
