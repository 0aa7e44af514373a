"""Load a drop-in directory of ``*.conf`` files into validated models.

Contract: ``load_config_dir`` never raises for bad content.  It returns every space it
could validate, the names of spaces it could not, and one ``Issue`` per problem with
file, line, section and option.  A problem in one space never hides another space; a
problem in ``[settings]`` makes ``settings`` ``None`` (the daemon keeps its last good one).
Values are never copied into messages, because some options hold secrets.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cloudvac.config.dirac import DiracInstance, dirac_site
from cloudvac.config.ini import IniDocument, Issue, Location, Section, read_files
from cloudvac.config.models import Machinetype, Settings, SimMachinetype, SimSpace, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.secrets import SecretError, check_secret_file

DEFAULT_CONFIG_DIR = Path("/etc/cloudvac.d")
M = TypeVar("M", bound=BaseModel)
LIST_OPTIONS = frozenset({"flavor_names", "sim_flavors", "sim_unschedulable_flavors",
                          "networks", "security_groups", "squid_proxies", "cvmfs_repositories",
                          "pilot_options", "configuration_servers", "command_extensions",
                          "cvmfs_locations"})
PLACEHOLDER_KEYS = (("user_data_option_", "user_data_options"),
                    ("user_data_file_", "user_data_files"))
SECTION_KINDS = "[settings], [dirac NAME], [space NAME] and [machinetype SPACE NAME]"


@dataclass(slots=True)
class LoadedConfig:
    settings: Settings | None
    spaces: dict[str, Space] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    """Spaces named in the files that failed validation."""
    issues: list[Issue] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    dirac: dict[str, DiracInstance] = field(default_factory=dict)

    def issues_for(self, space: str) -> list[Issue]:
        return [i for i in self.issues if _space_of(i.section) == space]


def config_files(directory: Path) -> list[Path]:
    """The ``*.conf`` files of ``directory`` in alphanumeric order."""
    return sorted(p for p in directory.glob("*.conf") if p.is_file())


def load_config_dir(directory: Path) -> LoadedConfig:
    if not directory.is_dir():
        issue = Issue(Location(directory, 0), None, None, "configuration directory not found")
        return LoadedConfig(settings=None, issues=[issue])
    files = config_files(directory)
    if not files:
        issue = Issue(Location(directory, 0), None, None, "no *.conf files in directory")
        return LoadedConfig(settings=None, issues=[issue], files=files)
    return build(read_files(files))


@dataclass(slots=True)
class _Sections:
    """The sections of a document by kind."""

    settings: Section | None = None
    dirac: dict[str, Section] = field(default_factory=dict)
    spaces: dict[str, Section] = field(default_factory=dict)
    machinetypes: dict[str, list[Section]] = field(default_factory=dict)
    """By space name."""


@dataclass(frozen=True, slots=True)
class _Dirac:
    """The valid ``[dirac NAME]`` instances, and the names of the invalid ones."""

    instances: Mapping[str, DiracInstance]
    broken: frozenset[str]


def build(doc: IniDocument) -> LoadedConfig:
    result = LoadedConfig(settings=None, issues=list(doc.issues), files=list(doc.files))
    sections = _sort(doc, result.issues)
    result.settings = _settings(sections.settings, doc, result.issues)
    dirac = _dirac(sections.dirac, doc, result.issues)
    result.dirac = dict(dirac.instances)
    for space_name, mts in sections.machinetypes.items():
        if space_name not in sections.spaces:
            result.issues.extend(Issue(s.header, s.title, None, f"no [space {space_name}] "
                                       "section defines this space") for s in mts)
    for name, section in sections.spaces.items():
        mts = sections.machinetypes.get(name, [])
        space = _space(name, section, mts, doc, result.issues)
        if space is not None:
            space = _attach_dirac(space, section, mts, dirac, result.issues)
        if space is None:
            result.broken.add(name)
        else:
            result.spaces[name] = space
    return result


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


def _dirac(sections: Mapping[str, Section], doc: IniDocument, issues: list[Issue]) -> _Dirac:
    instances: dict[str, DiracInstance] = {}
    for name, section in sections.items():
        instance = None if _tainted([section], doc) else _validate(
            DiracInstance, {"name": name, **_plain(section)}, section, None, issues)
        if instance is not None:
            instances[name] = instance
    return _Dirac(instances, frozenset(sections) - frozenset(instances))


def _attach_dirac(space: Space, section: Section, mt_sections: list[Section], dirac: _Dirac,
                  issues: list[Issue]) -> Space | None:
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
        if space.site_name is None:
            issues.append(Issue(section.header, section.title, "site_name",
                                "required when machinetypes report to DIRAC (<Site>.<cc>)"))
            return None
        try:
            dirac_site(instance.site_prefix, space.site_name)
        except ValueError as exc:
            issues.append(Issue(section.where("site_name"), section.title, "site_name",
                                str(exc)))
            return None
        used[instance.name] = instance
    return space.model_copy(update={"dirac_instances": used}) if ok else None


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
    if _tainted([section], doc):
        return None
    return _validate(Settings, _plain(section), section, None, issues)


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
            data["sim"] = _validate(SimMachinetype, sim, section, "sim_", issues)
            ok = ok and data["sim"] is not None
        mt = _validate(Machinetype, data, section, None, issues)
        if mt is None:
            ok = False
        else:
            machinetypes[mt.name] = mt
    return machinetypes, ok


def _space_options(section: Section, issues: list[Issue]) -> dict[str, Any] | None:
    """The space's own options with its cloud's (``openstack``, ``sim``) validated, or
    None if those are invalid."""
    values, sim = _split_sim(section)
    if values.get("api") == "openstack":
        cloud = {k: values.pop(k) for k in list(values) if k in OpenStackSpace.model_fields}
        values["openstack"] = _validate(OpenStackSpace, cloud, section, None, issues)
        if values["openstack"] is None:
            return None
    if sim:
        if values.get("api") != "sim":
            issues.append(Issue(section.header, section.title, None,
                                "sim_* options are only valid with api = sim"))
            return None
        values["sim"] = _validate(SimSpace, sim, section, "sim_", issues)
        if values["sim"] is None:
            return None
    return values


def _space(name: str, section: Section, mt_sections: list[Section], doc: IniDocument,
           issues: list[Issue]) -> Space | None:
    machinetypes, ok = _machinetypes(name, mt_sections, issues)
    ok = ok and not _tainted([section, *mt_sections], doc)
    values = _space_options(section, issues)
    if values is None:
        return None
    if not ok and not machinetypes:
        return None  # no "needs a machinetype" message: their own errors say why
    space = _validate(Space, {"name": name, **values, "machinetypes": machinetypes}, section,
                      None, issues)
    if space is not None and space.openstack is not None:
        ok = _check_secret_files(space.openstack, section, issues) and ok
    return space if ok else None


def _check_secret_files(options: OpenStackSpace, section: Section, issues: list[Issue]) -> bool:
    """Secret files must exist and be private now, not at the first cloud call."""
    good = True
    for option in ("password_file", "application_credential_secret_file",
                   "egi_checkin_client_secret_file", "egi_checkin_refresh_token_file"):
        path = getattr(options, option)
        if path is None:
            continue
        try:
            check_secret_file(path, option)
        except SecretError as exc:
            issues.append(Issue(section.where(option), section.title, option, str(exc)))
            good = False
    return good


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


def _validate(model: type[M], data: Mapping[str, Any], section: Section,
              prefix: str | None, issues: list[Issue]) -> M | None:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            issues.append(_issue(model, error, section, prefix or ""))
        return None


def _issue(model: type[BaseModel], error: Any, section: Section, prefix: str) -> Issue:
    loc = [str(part) for part in error["loc"]]
    option = prefix + loc[0] if loc and loc[0] in model.model_fields else None
    placeholder = {target: key for key, target in PLACEHOLDER_KEYS}
    if loc and loc[0] in placeholder:
        option = placeholder[loc[0]] + loc[1] if len(loc) > 1 else None
    message = str(error["msg"])
    if error["type"] == "extra_forbidden" and loc:
        option = prefix + loc[0]
        known = [prefix + f for f in model.model_fields if f not in ("name", "space")]
        close = difflib.get_close_matches(option, known, n=1)
        message = "unknown option" + (f"; did you mean '{close[0]}'?" if close else "")
    elif error["type"] == "missing" and option:
        message = "required option is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if option in ("name", "space"):
        option = None
    return Issue(section.where(option), section.title, option, message)


def _space_of(section: str | None) -> str | None:
    if section is None:
        return None
    words = section.split()
    return words[1] if len(words) >= 2 and words[0] in ("space", "machinetype") else None
