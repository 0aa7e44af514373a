"""Load a drop-in directory of ``*.conf`` files into validated models.

Contract: ``load_config_dir`` never raises for bad content.  It returns every space it
could validate, the names of spaces it could not, and one ``Issue`` per problem with
file, line, section and option.  A problem in one space never hides another space; a
problem in ``[settings]`` makes ``settings`` ``None`` (the daemon keeps its last good one).
Values are never copied into messages, because some options hold secrets.

Every problem in one run: each section is validated whatever its neighbours' state (a
space whose OpenStack options or machinetypes are invalid is still checked, with a
stand-in in their place; a section with a syntax error is still validated; secret files
are checked from the option's text even when the model failed), and a model's
cross-option rules are checked even when one of its options failed (``validation.py``).
Unknown options are answered with VCycle's name for them first (``vcycle_names``).
Warnings for valid configurations that would do nothing or harm: ``checks.py``.

Files that lose their content.  A file that cannot be read (permissions, I/O error, not
UTF-8) or holds nothing but blanks cannot say which spaces it defined, so the loader
takes ``previous``, the ``LoadedConfig`` of the last load, whose ``sources`` (and
``settings_sources``) remember which files each space's sections came from:

* a space with a section in a file now unreadable or empty is in ``broken`` (never in
  ``spaces``), with an error ``Issue`` located at that file naming the space, and keeps
  its ``sources``, so the next load still knows (the caller keeps the space's last good
  configuration, as for any broken space);
* ``[settings]`` likewise: ``settings`` is ``None`` when a file that held it is lost, or,
  without ``previous``, when ``[settings]`` was read nowhere and some file is unreadable
  (it may be in that file: starting on defaults could mean another database);
* an empty file that held nothing known is a warning; an unreadable one is always an
  error at the file (``unreadable`` lists them).

So "the operator removed the space" is: its sections deleted from a file that still has
content, or its file deleted; an emptied file (a truncated write, a full disk, a
``> file`` by mistake) keeps the space on its last good configuration until the file
is restored or deleted.  Without ``previous`` (``validate``, the first load at start-up)
nothing can be attributed: the issues are all there is.

A section repeated in another file is merged (later files override earlier ones, as
configparser does); it is reported as a warning in ``warnings``, never refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudvac.config.checks import (
    MACHINETYPE_SECRETS,
    OPENSTACK_SECRETS,
    advice,
    check_secrets,
)
from cloudvac.config.dirac import DiracInstance
from cloudvac.config.diracsites import SITE_NAME_KEY, DiracSections, attach_dirac
from cloudvac.config.ec2 import EC2_SECRETS, Ec2Space
from cloudvac.config.ini import IniDocument, Issue, Location, Section, read_files
from cloudvac.config.models import Machinetype, SimMachinetype, SimSpace, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.pipecache import expand_pipes
from cloudvac.config.settings import Settings
from cloudvac.config.validation import PLACEHOLDER_KEYS, validate_model

__all__ = ["DEFAULT_CONFIG_DIR", "LIST_OPTIONS", "MACHINETYPE_SECRETS", "OPENSTACK_SECRETS",
           "PLACEHOLDER_KEYS", "SECTION_KINDS", "LoadedConfig", "build", "config_files",
           "load_config_dir"]

DEFAULT_CONFIG_DIR = Path("/etc/cloudvac.d")
LIST_OPTIONS = frozenset({"flavor_names", "sim_flavors", "sim_unschedulable_flavors",
                          "networks", "security_groups", "squid_proxies", "cvmfs_repositories",
                          "pilot_options", "configuration_servers", "command_extensions",
                          "cvmfs_locations", "image_owners", "security_group_ids"})
SECTION_KINDS = ("[settings], [dirac NAME], [space NAME], [machinetype SPACE NAME] and "
                 "[vacuum_pipe SPACE PREFIX]")


@dataclass(slots=True)
class LoadedConfig:
    settings: Settings | None
    spaces: dict[str, Space] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    """Spaces named in the files that failed validation, and spaces that had a section in
    a file now unreadable or empty (see the module docstring)."""
    issues: list[Issue] = field(default_factory=list)
    """Errors: something was refused."""
    files: list[Path] = field(default_factory=list)
    dirac: dict[str, DiracInstance] = field(default_factory=dict)
    warnings: list[Issue] = field(default_factory=list)
    """Worth telling the operator, nothing refused (a section repeated across files, an
    empty file that held nothing known, a configuration that would do nothing or harm:
    ``checks.py``)."""
    unreadable: list[Path] = field(default_factory=list)
    """Files that could not be read or decoded (each also an issue)."""
    empty: list[Path] = field(default_factory=list)
    """Files with nothing but blanks."""
    sources: dict[str, frozenset[Path]] = field(default_factory=dict)
    """For every space in ``spaces`` or ``broken``: the files its ``[space]`` and
    ``[machinetype]`` sections came from (carried over from ``previous`` for a space
    broken by a lost file).  Pass this LoadedConfig as the next load's ``previous``."""
    settings_sources: frozenset[Path] = frozenset()
    """The files ``[settings]`` came from, likewise."""
    sections: dict[tuple[str, ...], Section] = field(default_factory=dict)
    """Every section read, by key (``("machinetype", SPACE, NAME)``): where its options are,
    for checks made after loading (``cloudvac validate``'s trial renders)."""

    def issues_for(self, space: str) -> list[Issue]:
        return [i for i in self.issues if _space_of(i.section) == space]


def config_files(directory: Path) -> list[Path]:
    """The ``*.conf`` files of ``directory`` in alphanumeric order."""
    return sorted(p for p in directory.glob("*.conf") if p.is_file())


def load_config_dir(directory: Path, previous: LoadedConfig | None = None) -> LoadedConfig:
    """Load ``directory``; ``previous``: the caller's last load (see the module docstring)."""
    if not directory.is_dir():
        issue = Issue(Location(directory, 0), None, None, "configuration directory not found")
        return LoadedConfig(settings=None, issues=[issue])
    files = config_files(directory)
    if not files:
        issue = Issue(Location(directory, 0), None, None, "no *.conf files in directory")
        return LoadedConfig(settings=None, issues=[issue], files=files)
    return build(read_files(files), previous)


@dataclass(slots=True)
class _Sections:
    """The sections of a document by kind."""

    settings: Section | None = None
    dirac: dict[str, Section] = field(default_factory=dict)
    spaces: dict[str, Section] = field(default_factory=dict)
    machinetypes: dict[str, list[Section]] = field(default_factory=dict)
    """By space name."""


def build(doc: IniDocument, previous: LoadedConfig | None = None) -> LoadedConfig:
    """Validate ``doc``; ``previous``: see the module docstring."""
    result = LoadedConfig(settings=None, issues=list(doc.issues), files=list(doc.files),
                          warnings=list(doc.warnings), unreadable=list(doc.unreadable),
                          empty=list(doc.empty))
    expand_pipes(doc, result.issues, result.warnings)  # [vacuum_pipe] -> [machinetype]
    result.sections = dict(doc.sections)
    sections = _sort(doc, result.issues)
    result.settings = _settings(sections.settings, doc, result.issues)
    if sections.settings is not None:
        result.settings_sources = frozenset(sections.settings.files)
    dirac = _dirac(sections.dirac, doc, result.issues)
    result.dirac = dict(dirac.instances)
    for space_name, mts in sections.machinetypes.items():
        if space_name not in sections.spaces:
            result.issues.extend(Issue(s.header, s.title, None, f"no [space {space_name}] "
                                       "section defines this space") for s in mts)
            _machinetypes(space_name, mts, result.issues)  # their own errors, in this run
    for name, section in sections.spaces.items():
        mts = sections.machinetypes.get(name, [])
        space = _space(name, section, mts, (doc, dirac, result.issues))
        if space is None:
            result.broken.add(name)
        else:
            result.spaces[name] = space
        result.sources[name] = frozenset(section.files.union(*(s.files for s in mts)))
    _lost_files(doc, previous, result)
    result.warnings.extend(advice(result.settings, sections.settings, result.spaces,
                                  doc.sections))
    return result


def _lost_files(doc: IniDocument, previous: LoadedConfig | None, result: LoadedConfig) -> None:
    """Break the spaces (and ``[settings]``) that had sections in a file now unreadable or
    empty; warn about empty files that held nothing known (module docstring)."""
    lost = {path: "cannot be read" for path in doc.unreadable}
    lost |= {path: "is empty" for path in doc.empty}
    if not lost:
        return
    known = previous.sources if previous is not None else {}
    held: set[Path] = set()
    for name, files in sorted(known.items()):
        gone = sorted(files & lost.keys())
        if not gone:
            continue
        result.spaces.pop(name, None)
        result.broken.add(name)
        result.sources[name] = files | result.sources.get(name, frozenset())
        held.update(gone)
        result.issues.extend(
            Issue(Location(path, 0), f"space {name}", None, f"this file {lost[path]} and "
                  "held sections of this space: keeping its last good configuration until "
                  "the file is restored (or deleted, to stop managing the space)")
            for path in gone)
    held.update(_lost_settings(doc, previous, result, lost))
    result.warnings.extend(Issue(Location(path, 0), None, None, "the file is empty")
                           for path in doc.empty if path not in held)


def _lost_settings(doc: IniDocument, previous: LoadedConfig | None, result: LoadedConfig,
                   lost: Mapping[Path, str]) -> set[Path]:
    """Make ``settings`` None if ``[settings]`` may have been in a lost file; the files
    that held it."""
    if previous is not None:
        gone = set(previous.settings_sources & lost.keys())
    elif result.settings_sources:
        gone = set()
    else:
        gone = set(doc.unreadable)  # nothing is known: any unreadable file may hold it
    if not gone:
        return set()
    result.settings = None
    if previous is not None:
        result.settings_sources |= previous.settings_sources
    result.issues.extend(
        Issue(Location(path, 0), "settings", None, f"this file {lost[path]} and may hold "
              "[settings]: keeping the last good settings (none at start-up)")
        for path in sorted(gone))
    return gone


def _sort(doc: IniDocument, issues: list[Issue]) -> _Sections:
    found = _Sections()
    for key, section in doc.sections.items():
        kind = key[0]
        if kind == "settings" and len(key) == 1:
            found.settings = section
        elif kind == "dirac" and len(key) == 2:
            found.dirac[key[1]] = section
        elif kind == "space" and len(key) == 2:
            found.spaces[key[1]] = section
        elif kind == "machinetype" and len(key) == 3:
            found.machinetypes.setdefault(key[1], []).append(section)
        else:
            issues.append(Issue(section.header, section.title, None,
                                f"unknown section; expected {SECTION_KINDS}"))
    return found


def _dirac(sections: Mapping[str, Section], doc: IniDocument, issues: list[Issue]) -> DiracSections:
    instances: dict[str, DiracInstance] = {}
    for name, section in sections.items():
        instance = validate_model(DiracInstance, {"name": name, **_plain(section)}, section,
                                  issues)
        if instance is not None and not _tainted([section], doc):
            instances[name] = instance
    return DiracSections(instances, frozenset(sections) - frozenset(instances))


def _tainted(sections: Iterable[Section], doc: IniDocument) -> list[Issue]:
    found: list[Issue] = []
    for section in sections:
        found += doc.tainted.get(section.key, [])
        for path in section.files:
            found += doc.tainted_files.get(path, [])
    return found


def _settings(section: Section | None, doc: IniDocument, issues: list[Issue]) -> Settings | None:
    if section is None:
        return Settings()
    settings = validate_model(Settings, _plain(section), section, issues)
    return settings if not _tainted([section], doc) else None


def _machinetypes(space: str, sections: list[Section],
                  issues: list[Issue]) -> tuple[dict[str, Machinetype], bool]:
    """The valid machinetypes of ``space``, and whether all of them were valid."""
    ok = True
    machinetypes: dict[str, Machinetype] = {}
    for section in sections:
        values, sim = _split_sim(section)
        for prefix, target in PLACEHOLDER_KEYS:
            keys = [k for k in values if k.startswith(prefix)]
            if keys:
                values[target] = {k[len(prefix):]: values.pop(k) for k in keys}
        data: dict[str, Any] = {"name": section.key[2], "space": space, **values}
        if sim:
            data["sim"] = validate_model(SimMachinetype, sim, section, issues, "sim_")
            ok = ok and data["sim"] is not None
            data["sim"] = data["sim"] or SimMachinetype.model_construct()
        mt = validate_model(Machinetype, data, section, issues)
        private = check_secrets(section, MACHINETYPE_SECRETS, issues)
        if mt is None or not private:
            ok = False
        else:
            machinetypes[mt.name] = mt
    return machinetypes, ok


def _space_options(section: Section, issues: list[Issue]) -> tuple[dict[str, Any], bool]:
    """The space's own options with its cloud's (``openstack``, ``sim``) validated, and
    whether those were valid (if not, a stand-in takes their place, so that the space's
    other options are checked in the same run)."""
    values, sim = _split_sim(section)
    ok = True
    prefix, target = SITE_NAME_KEY
    names = [k for k in values if k.startswith(prefix)]
    if names:
        values[target] = {k[len(prefix):]: values.pop(k) for k in names}
    api = values.get("api")
    if api != "sim":  # openstack, ec2, or a wrong api that its error names
        model, secrets = (Ec2Space, EC2_SECRETS) if api == "ec2" \
            else (OpenStackSpace, OPENSTACK_SECRETS)
        fields = model.model_fields if api in ("openstack", "ec2") \
            else {**OpenStackSpace.model_fields, **Ec2Space.model_fields}
        cloud = {k: values.pop(k) for k in list(values) if k in fields}
        if api in ("openstack", "ec2"):
            checked = validate_model(model, cloud, section, issues)
            ok = check_secrets(section, secrets, issues) and checked is not None
            values[api] = checked or model.model_construct()
    if sim and values.get("api") != "sim":
        first = "sim_" + min(sim)
        issues.append(Issue(section.where(first), section.title, first,
                            "sim_* options are only valid with api = sim"))
        ok = False
    elif sim:
        checked_sim = validate_model(SimSpace, sim, section, issues, "sim_")
        ok = ok and checked_sim is not None
        values["sim"] = checked_sim or SimSpace.model_construct()
    return values, ok


def _space(name: str, section: Section, mt_sections: list[Section],
           context: tuple[IniDocument, DiracSections, list[Issue]]) -> Space | None:
    """The valid space, or None; every problem of the space and its machinetypes is in
    ``issues`` either way (``context``: the document, its DIRAC instances, the issues)."""
    doc, dirac, issues = context
    machinetypes, ok = _machinetypes(name, mt_sections, issues)
    values, cloud_ok = _space_options(section, issues)
    ok = ok and cloud_ok and not _tainted([section, *mt_sections], doc)
    every = {**{s.key[2]: _stand_in(name, s) for s in mt_sections}, **machinetypes}
    space = validate_model(Space, {"name": name, **values, "machinetypes": every}, section,
                           issues)
    if space is None:  # the DIRAC references are still checked, in this run
        space = Space.model_construct(name=name, api="sim", site_name=values.get("site_name"),
                                      site_names=values.get("site_names", {}))
        ok = False
    space = attach_dirac(space.model_copy(update={"machinetypes": every}), section,
                         mt_sections, dirac, issues)
    return space if ok and space is not None else None


def _stand_in(space: str, section: Section) -> Machinetype:
    """An invalid machinetype's place in its space's own checks: its flavors and its DIRAC
    instance count (a valid space holds only valid machinetypes: no stand-in remains)."""
    flavors, dirac = section.values.get("flavor_names"), section.values.get("dirac")
    return Machinetype.model_construct(
        name=section.key[2], space=space, dirac=dirac[0] if dirac is not None else None,
        flavor_names=_value("flavor_names", flavors[0]) if flavors is not None else [])


def _plain(section: Section) -> dict[str, Any]:
    return {k: _value(k, v) for k, (v, _) in section.values.items()}


def _split_sim(section: Section) -> tuple[dict[str, Any], dict[str, Any]]:
    plain = _plain(section)
    sim = {k[4:]: v for k, v in plain.items() if k.startswith("sim_")}
    rest = {k: v for k, v in plain.items() if not k.startswith("sim_")}
    return rest, sim


def _value(option: str, raw: str) -> Any:
    if option in LIST_OPTIONS:
        return [item for item in raw.replace(",", " ").split() if item]
    return raw


def _space_of(section: str | None) -> str | None:
    if section is None:
        return None
    words = section.split()
    return words[1] if len(words) >= 2 and words[0] in ("space", "machinetype") else None
