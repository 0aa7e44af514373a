"""Load a drop-in directory of ``*.conf`` files into validated models.

Contract: ``load_config_dir`` never raises for bad content.  It returns every space it
could validate, the names of spaces it could not, and one ``Issue`` per problem with
file, line, section and option.  A problem in one space never hides another space; a
problem in ``[settings]`` makes ``settings`` ``None`` (the daemon keeps its last good one).
Values are never copied into messages, because some options hold secrets.

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

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cloudvac.config.dirac import DiracInstance
from cloudvac.config.diracsites import SITE_NAME_KEY, DiracSections, attach_dirac
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
OPENSTACK_SECRETS = ("password_file", "application_credential_secret_file",
                     "egi_checkin_client_secret_file", "egi_checkin_refresh_token_file")
MACHINETYPE_SECRETS = ("host_key_file", "pilot_proxy_file")


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
    empty file that held nothing known)."""
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
    for name, section in sections.spaces.items():
        mts = sections.machinetypes.get(name, [])
        space = _space(name, section, mts, doc, result.issues)
        if space is not None:
            space = attach_dirac(space, section, mts, dirac, result.issues)
        if space is None:
            result.broken.add(name)
        else:
            result.spaces[name] = space
        result.sources[name] = frozenset(section.files.union(*(s.files for s in mts)))
    _lost_files(doc, previous, result)
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
        instance = None if _tainted([section], doc) else _validate(
            DiracInstance, {"name": name, **_plain(section)}, section, None, issues)
        if instance is not None:
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
        if mt is None or not _check_secret_files(mt, MACHINETYPE_SECRETS, section, issues):
            ok = False
        else:
            machinetypes[mt.name] = mt
    return machinetypes, ok


def _space_options(section: Section, issues: list[Issue]) -> dict[str, Any] | None:
    """The space's own options with its cloud's (``openstack``, ``sim``) validated, or
    None if those are invalid."""
    values, sim = _split_sim(section)
    prefix, target = SITE_NAME_KEY
    names = [k for k in values if k.startswith(prefix)]
    if names:
        values[target] = {k[len(prefix):]: values.pop(k) for k in names}
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
        ok = _check_secret_files(space.openstack, OPENSTACK_SECRETS, section, issues) and ok
    return space if ok else None


def _check_secret_files(options: BaseModel, names: Iterable[str], section: Section,
                        issues: list[Issue]) -> bool:
    """Secret files must exist and be private now, not at the first cloud call or the
    first machine's user_data."""
    good = True
    for option in names:
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
    placeholder = {target: key for key, target in (*PLACEHOLDER_KEYS, SITE_NAME_KEY)}
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
