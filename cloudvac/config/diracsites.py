"""Which ``[dirac NAME]`` instances a space reports to, and its DIRAC site name in each.

A space's site in instance NAME is ``<site_prefix>.<site_name_NAME>`` if the space sets
``site_name_NAME``, else ``<site_prefix>.<site_name>`` (``config/dirac.py`` says why the
names live in the ``[space]`` section).  Errors are ``Issue``s located at the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cloudvac.config.dirac import DiracInstance, dirac_site
from cloudvac.config.ini import Issue, Section
from cloudvac.config.models import Space

SITE_NAME_KEY = ("site_name_", "site_names")
"""``site_name_<dirac>`` space options: the space's site name in one DIRAC instance."""


@dataclass(frozen=True, slots=True)
class DiracSections:
    """The valid ``[dirac NAME]`` instances, and the names of the invalid ones."""

    instances: Mapping[str, DiracInstance]
    broken: frozenset[str]


def attach_dirac(space: Space, section: Section, mt_sections: list[Section],
                 dirac: DiracSections, issues: list[Issue]) -> Space | None:
    """Resolve each machinetype's ``dirac`` instance and check the DIRAC site name."""
    used: dict[str, DiracInstance] = {}
    ok = True
    by_name = {s.key[2]: s for s in mt_sections}
    for mt in space.machinetypes.values():
        if mt.dirac is None:
            continue
        mt_section = by_name[mt.name]
        instance = dirac.instances.get(mt.dirac)
        if instance is None:
            why = "is invalid (see its errors)" if mt.dirac in dirac.broken else "is not defined"
            issues.append(Issue(mt_section.where("dirac"), mt_section.title, "dirac",
                                f"[dirac {mt.dirac}] {why}"))
            ok = False
            continue
        used[instance.name] = instance
    if not _check_sites(space, section, used, dirac, issues):
        return None
    return space.model_copy(update={"dirac_instances": used}) if ok else None


def _check_sites(space: Space, section: Section, used: Mapping[str, DiracInstance],
                 dirac: DiracSections, issues: list[Issue]) -> bool:
    """Every instance the space reports to has a valid site name (``site_name_<dirac>``,
    else ``site_name``), and every ``site_name_<dirac>`` names one of those instances."""
    good = True
    named = {mt.dirac for mt in space.machinetypes.values()}
    for name in space.site_names:
        if name not in named:
            option = SITE_NAME_KEY[0] + name
            known = name in dirac.instances or name in dirac.broken
            issues.append(Issue(section.where(option), section.title, option,
                                f"site name for [dirac {name}], but no machinetype of this "
                                "space reports to it" + ("" if known else
                                                         " and no such section exists")))
            good = False
    for instance in used.values():
        site_name = space.site_name_for(instance.name)
        option = SITE_NAME_KEY[0] + instance.name if instance.name in space.site_names \
            else "site_name"
        if site_name is None:
            issues.append(Issue(section.header, section.title, "site_name",
                                f"required when machinetypes report to DIRAC (<Site>.<cc>); "
                                f"or {SITE_NAME_KEY[0]}{instance.name} for [dirac "
                                f"{instance.name}] alone"))
            return False
        try:
            dirac_site(instance.site_prefix, site_name)
        except ValueError as exc:
            issues.append(Issue(section.where(option), section.title, option,
                                str(exc).replace("give site_name", f"give {option}")))
            good = False
    return good
