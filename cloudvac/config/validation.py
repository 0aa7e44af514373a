"""Validating one section's options against a model, with every problem as a located
``Issue`` and never a value in a message.

Two things make a configuration fixable in one go rather than in rounds:

* **Every error at once.**  pydantic checks a model's cross-option rules (``auth = password
  needs username``, ``max_processors is below min_processors``) only when every option
  parsed, so a typo hid them until it was fixed.  ``validate_model`` validates again
  without the options that failed and keeps the new errors that do not concern those
  options (a rule that names a dropped option would only repeat its error).
* **Messages that know where an option belongs.**  An unknown option is first looked up in
  VCycle's names (``vcycle_names.hint``: "tenancy_name is VCycle's name: use project_name"),
  then among the options of the other sections and cloud APIs ("key_name is a [space]
  option"), and only then matched by spelling.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cloudvac.config.dirac import DiracInstance
from cloudvac.config.diracsites import SITE_NAME_KEY
from cloudvac.config.ec2 import Ec2Space
from cloudvac.config.ini import Issue, Section
from cloudvac.config.models import Machinetype, SimMachinetype, SimSpace, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.settings import Settings
from cloudvac.config.vcycle_names import hint

M = TypeVar("M", bound=BaseModel)
PLACEHOLDER_KEYS = (("user_data_option_", "user_data_options"),
                    ("user_data_file_", "user_data_files"))
"""Machinetype options ``PREFIX<key>`` gathered into a dict field."""
PREFIXED = {target: prefix for prefix, target in (*PLACEHOLDER_KEYS, SITE_NAME_KEY)}
HEADER_FIELDS = frozenset({"name", "space"})
"""Fields filled from the section header, never written as options."""
INTERNAL = frozenset({"machinetypes", "dirac_instances", "sim", "openstack", "ec2", "site_names",
                      "user_data_options", "user_data_files"})
"""Fields the loader fills from other sections or from prefixed options."""
NESTED = frozenset({"openstack", "ec2", "sim", "machinetypes"})
"""Fields holding models that are validated, and reported, on their own (a stand-in takes
the place of an invalid one): their errors are not repeated."""


@dataclass(frozen=True, slots=True)
class Kind:
    """The options one kind of section accepts, for suggestions."""

    name: str
    options: frozenset[str]


def _fields(model: type[BaseModel], prefix: str = "") -> frozenset[str]:
    return frozenset(prefix + f for f, info in model.model_fields.items()
                     if f not in HEADER_FIELDS | INTERNAL and not info.exclude)


OPENSTACK_OPTIONS = _fields(OpenStackSpace)
EC2_OPTIONS = _fields(Ec2Space)
KINDS: dict[str, Kind] = {
    "settings": Kind("settings", _fields(Settings)),
    "dirac": Kind("dirac", _fields(DiracInstance)),
    "space": Kind("space", _fields(Space) | _fields(SimSpace, "sim_") | OPENSTACK_OPTIONS
                  | EC2_OPTIONS),
    "machinetype": Kind("machinetype", _fields(Machinetype) | _fields(SimMachinetype, "sim_")),
}


def validate_model(model: type[M], data: Mapping[str, Any], section: Section,
                   issues: list[Issue], prefix: str = "") -> M | None:
    """``model`` from ``data`` (the options of ``section``, ``prefix`` stripped), or None
    after adding one ``Issue`` per problem to ``issues`` (see the module docstring)."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        every = exc.errors(include_input=False, include_url=False)
    errors = [e for e in every if not (e["loc"] and str(e["loc"][0]) in NESTED)]
    found = [_issue(model, e, section, prefix) for e in errors]
    issues.extend(found)
    failed = {str(e["loc"][0]) for e in every if e["loc"] and str(e["loc"][0]) in data}
    if not failed:
        return None
    try:
        model.model_validate({k: v for k, v in data.items() if k not in failed})
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            loc = [str(p) for p in error["loc"]]
            if (loc and loc[0] in failed | NESTED) or any(f in str(error["msg"])
                                                          for f in failed):
                continue
            issue = _issue(model, error, section, prefix)
            if issue not in found:
                issues.append(issue)
    return None


def _issue(model: type[BaseModel], error: Any, section: Section, prefix: str) -> Issue:
    loc = [str(part) for part in error["loc"]]
    option = prefix + loc[0] if loc and loc[0] in model.model_fields else None
    if loc and loc[0] in PREFIXED:
        option = PREFIXED[loc[0]] + loc[1] if len(loc) > 1 else None
    message = str(error["msg"])
    if not loc:  # a rule over several options: name the first it mentions
        option = _mentioned(message, {prefix + f for f in model.model_fields
                                      if f not in HEADER_FIELDS | INTERNAL})
    if error["type"] == "extra_forbidden" and loc:
        option = prefix + loc[0]
        message = unknown_option(section, option, {prefix + f for f in model.model_fields})
    elif error["type"] == "missing" and option:
        message = "required option is missing"
    message = message.removeprefix("Value error, ")
    if option in HEADER_FIELDS:
        option = None
    return Issue(section.where(option), section.title, option, message)


def _mentioned(message: str, options: Iterable[str]) -> str | None:
    """The option named first in ``message``, if any."""
    found = [(m.start(), o) for o in options
             if (m := re.search(rf"(?<![\w.]){re.escape(o)}(?![\w])", message))]
    return min(found)[1] if found else None


def unknown_option(section: Section, option: str, model_options: Iterable[str]) -> str:
    """The message for ``option``, unknown in ``section``: VCycle's name, another
    section's or API's option, else the closest spelling."""
    kind = section.key[0]
    said = hint(kind, option)
    if said is not None:
        return "unknown option: " + said
    if kind == "space" and option in OPENSTACK_OPTIONS:
        return "unknown option: it is an option of spaces with api = openstack"
    if kind == "space" and option.startswith("sim_") and option in KINDS["space"].options:
        return "unknown option: sim_* options are only valid with api = sim"
    elsewhere = [k for k, known in KINDS.items() if k != kind and option in known.options]
    if elsewhere:
        return f"unknown option: it is an option of [{elsewhere[0]}], not of [{kind}]"
    own = KINDS.get(kind)
    known = sorted((own.options if own else frozenset()) | set(model_options)
                   - HEADER_FIELDS - INTERNAL)
    close = difflib.get_close_matches(option, known, n=1)
    return "unknown option" + (f"; did you mean '{close[0]}'?" if close else "")
