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


def build(doc: IniDocument) -> LoadedConfig:
    result = LoadedConfig(settings=None, issues=list(doc.issues), files=list(doc.files))
    space_sections: dict[str, Section] = {}
    mt_sections: dict[str, list[Section]] = {}
    settings_section: Section | None = None
    dirac_sections: dict[str, Section] = {}
    for key, section in doc.sections.items():
        kind = key[0]
        if kind == "settings" and len(key) == 1:
            settings_section = section
        elif kind == "dirac" and len(key) == 2:
            dirac_sections[key[1]] = section
        elif kind == "space" and len(key) == 2:
            space_sections[key[1]] = section
        elif kind == "machinetype" and len(key) == 3:
            mt_sections.setdefault(key[1], []).append(section)
        else:
            result.issues.append(Issue(section.header, section.title, None,
                                       f"unknown section; expected {SECTION_KINDS}"))

    result.settings = _settings(settings_section, doc, result.issues)
    broken_dirac: set[str] = set()
    for name, section in dirac_sections.items():
        instance = None if _tainted([section], doc) else _validate(
            DiracInstance, {"name": name, **_plain(section)}, section, None, result.issues)
        if instance is None:
            broken_dirac.add(name)
        else:
            result.dirac[name] = instance

    for space_name, sections in mt_sections.items():
        if space_name not in space_sections:
            for section in sections:
                result.issues.append(Issue(section.header, section.title, None,
                                           f"no [space {space_name}] section defines this space"))
    for name, section in space_sections.items():
        space = _space(name, section, mt_sections.get(name, []), doc, result.issues)
        if space is not None:
            space = _attach_dirac(space, section, mt_sections.get(name, []), result.dirac,
                                  broken_dirac, result.issues)
        if space is None:
            result.broken.add(name)
        else:
            result.spaces[name] = space
    return result


def _attach_dirac(space: Space, section: Section, mt_sections: list[Section],
                  instances: Mapping[str, DiracInstance], broken: set[str],
                  issues: list[Issue]) -> Space | None:
    """Resolve each machinetype's ``dirac`` instance and check the DIRAC site name."""
    used: dict[str, DiracInstance] = {}
    ok = True
    by_name = {s.key[2]: s for s in mt_sections}
    for mt in space.machinetypes.values():
        if mt.dirac is None:
            continue
        mt_section = by_name[mt.name]
        instance = instances.get(mt.dirac)
        if instance is None:
            why = "is invalid (see its errors)" if mt.dirac in broken else "is not defined"
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


def _space(name: str, section: Section, mt_sections: list[Section], doc: IniDocument,
           issues: list[Issue]) -> Space | None:
    ok = not _tainted([section, *mt_sections], doc)
    machinetypes: dict[str, Machinetype] = {}
    for mt_section in mt_sections:
        values, sim = _split_sim(mt_section)
        for prefix, target in PLACEHOLDER_KEYS:
            keys = [k for k in values if k.startswith(prefix)]
            if keys:
                values[target] = {k[len(prefix):]: values.pop(k) for k in keys}
        data: dict[str, Any] = {"name": mt_section.key[2], "space": name, **values}
        if sim:
            data["sim"] = _validate(SimMachinetype, sim, mt_section, "sim_", issues)
            ok = ok and data["sim"] is not None
        mt = _validate(Machinetype, data, mt_section, None, issues)
        if mt is None:
            ok = False
        else:
            machinetypes[mt.name] = mt
    values, sim = _split_sim(section)
    if values.get("api") == "openstack":
        cloud = {k: values.pop(k) for k in list(values) if k in OpenStackSpace.model_fields}
        values["openstack"] = _validate(OpenStackSpace, cloud, section, None, issues)
        if values["openstack"] is None:
            return None
    data = {"name": name, **values, "machinetypes": machinetypes}
    if sim:
        if values.get("api") != "sim":
            issues.append(Issue(section.header, section.title, None,
                                "sim_* options are only valid with api = sim"))
            return None
        data["sim"] = _validate(SimSpace, sim, section, "sim_", issues)
        if data["sim"] is None:
            return None
    if not ok and not machinetypes:
        data.pop("machinetypes")  # avoid a misleading "needs a machinetype" message
        return None
    space = _validate(Space, data, section, None, issues)
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
