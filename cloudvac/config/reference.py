"""The option reference, generated from the configuration models (pure: no I/O).

Every option of every section, as an operator writes it in ``/etc/cloudvac.d/*.conf``:
its section, type (with the model's limits), default (read from the model, never retyped),
meaning (the field's ``description``) and VCycle's name when it differs
(``vcycle_names.vcycle_name``).  ``markdown()`` renders ``docs/options.md`` and
``conf_man()`` the ``cloudvac.conf(5)`` man page; ``cloudvac options --write docs``
(``cli/docs.py``) writes them, and ``tests/unit/test_reference.py`` fails when the files
in ``docs/`` differ from what the models say now.

How a model field becomes an option is the loader's business (``loader.py``); this module
follows it: ``name``/``space`` come from the section header; nested models are their own
groups (``sim_*`` options, the OpenStack options of a ``[space]``); dict fields filled from
prefixed options (``user_data_option_X``, ``site_name_<dirac>``) are shown as such; the
inline-secret fields (``exclude=True``) exist only to be refused and are listed as such.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cloudvac.config.dirac import DiracInstance
from cloudvac.config.diracsites import SITE_NAME_KEY
from cloudvac.config.ec2 import INLINE_SECRETS as EC2_INLINE_SECRETS
from cloudvac.config.ec2 import Ec2Space
from cloudvac.config.loader import PLACEHOLDER_KEYS, SECTION_KINDS
from cloudvac.config.models import Machinetype, SimMachinetype, SimSpace, Space
from cloudvac.config.openstack import INLINE_SECRETS, OpenStackSpace
from cloudvac.config.settings import Settings
from cloudvac.config.vcycle_names import VCYCLE_OPTIONS, Section, vcycle_name

REGENERATE = "cloudvac options --write docs"
HEADER_FIELDS = frozenset({"name", "space"})
"""Fields that come from the section header, not from an option."""
PREFIXED = {target: prefix for prefix, target in (*PLACEHOLDER_KEYS, SITE_NAME_KEY)}
"""Dict fields filled from options ``PREFIX<key>``."""
PREFIXED_KEY = {"user_data_options": "X", "user_data_files": "X", "site_names": "<dirac>"}
VCYCLE_SECTIONS: dict[str, Section] = {"settings": "settings", "space": "space",
                                       "machinetype": "machinetype"}
"""The sections VCycle has too (``[dirac]`` is cloudvac's own)."""


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    """As written in the file (``sim_boot_seconds``, ``site_name_<dirac>``)."""
    type: str
    default: str
    meaning: str
    vcycle: str | None
    """VCycle's name for it, when different."""


@dataclass(frozen=True, slots=True)
class Group:
    """The options one model contributes to one kind of section."""

    title: str
    """``[space NAME]``, ``[space NAME] with api = openstack``, ..."""
    model: type[BaseModel]
    section: str
    """``settings``, ``dirac``, ``space`` or ``machinetype``."""
    prefix: str
    intro: str
    options: tuple[Option, ...]


GROUPS: tuple[tuple[type[BaseModel], str, str, str, str], ...] = (
    (Settings, "settings", "[settings]", "",
     "One per installation; every option has a default, so the section may be left out."),
    (DiracInstance, "dirac", "[dirac NAME]", "",
     "One per DIRAC instance the pilots report to; a machinetype names it with dirac = NAME. "
     "NAME uses a-z, 0-9, '_' and '-'."),
    (Space, "space", "[space NAME]", "",
     "One per cloud project (a space). NAME is DNS-like: a-z, 0-9, '.' and '-'."),
    (OpenStackSpace, "space", "[space NAME] with api = openstack", "",
     "Written in the [space] section itself when api = openstack."),
    (Ec2Space, "space", "[space NAME] with api = ec2", "",
     "Written in the [space] section itself when api = ec2 (AWS, or a cloud's EC2 API); "
     "instance types are the flavor_names, the AMI (id or name) the root_image."),
    (SimSpace, "space", "[space NAME] with api = sim", "sim_",
     "The embedded simulated cloud (cloudvac demo, cloudvac simulate): sim_* options of the "
     "[space] section, only valid with api = sim."),
    (Machinetype, "machinetype", "[machinetype SPACE NAME]", "",
     "One VM profile in space SPACE, normally one per VO. NAME uses a-z, 0-9 and '-' (at "
     "most 32 characters)."),
    (SimMachinetype, "machinetype", "[machinetype SPACE NAME], simulated pilots", "sim_",
     "How the simulated pilots of a machinetype behave (sim_* options, read only by the "
     "simulated cloud of a space with api = sim)."),
)


def groups() -> tuple[Group, ...]:
    """Every option of every section, in the order of ``GROUPS`` and of the models."""
    return tuple(Group(title, model, section, prefix, intro,
                       tuple(_options(model, section, prefix)))
                 for model, section, title, prefix, intro in GROUPS)


def section_models() -> frozenset[type[BaseModel]]:
    """The models the reference walks (the test checks no section model is missing)."""
    return frozenset(model for model, *_ in GROUPS)


def refused_inline() -> dict[str, str]:
    """Options refused when given inline (secrets), and what to write instead."""
    return dict(INLINE_SECRETS)


def _options(model: type[BaseModel], section: str, prefix: str) -> Iterator[Option]:
    for field_name, info in model.model_fields.items():
        if field_name in HEADER_FIELDS or info.exclude or _nested(info.annotation):
            continue
        name = prefix + field_name
        kind = _type(info)
        if field_name in PREFIXED:
            name = PREFIXED[field_name] + PREFIXED_KEY.get(field_name, "X")
            kind = _type_of(get_args(info.annotation)[1], [])
        where = VCYCLE_SECTIONS.get(section)
        vcycle = vcycle_name(where, name) if where is not None else None
        yield Option(name, kind, _default(info), " ".join((info.description or "").split()),
                     vcycle)


def _nested(annotation: Any) -> bool:
    """Whether ``annotation`` holds a model (a nested section, not an option)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_nested(arg) for arg in get_args(annotation))


def _type(info: FieldInfo) -> str:
    return _type_of(info.annotation, list(info.metadata))


def _type_of(annotation: Any, metadata: list[Any]) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        for item in extra:
            metadata += item.metadata if isinstance(item, FieldInfo) else [item]
        return _type_of(inner, metadata)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return " or ".join(_type_of(a, metadata) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if origin is list:
        return "list" + _limits(metadata)
    if origin is dict:
        return "mapping"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation))) + \
        _limits(metadata)


def _limits(metadata: Sequence[Any]) -> str:
    """The model's bounds (``ge``, ``gt``, ``le``, ``lt``, ``min_length``), in words."""
    found = []
    for item in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if isinstance(value, int | float):
                found.append(f"{sign} {_number(value)}")
        length = getattr(item, "min_length", None)
        if isinstance(length, int) and length > 0:
            found.append(f"at least {length} item{'s' if length > 1 else ''}")
    return f", {', '.join(found)}" if found else ""


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    return _value(info.get_default(call_default_factory=True, validated_data={}))


def _value(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list | tuple):
        return " ".join(_value(v) for v in value) if value else "empty"
    if isinstance(value, dict):
        return "unset" if not value else " ".join(f"{k}={_value(v)}" for k, v in value.items())
    text = str(value)
    return text if text else "empty"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def vcycle_notes() -> tuple[tuple[str, str, str | None, str], ...]:
    """VCycle options that are not carried over or changed meaning: (section, VCycle name,
    cloudvac option or None, note)."""
    return tuple((o.section, o.vcycle, o.carried, o.note) for o in VCYCLE_OPTIONS
                 if o.carried is None or o.note)


# -- the common text of both renderings ----------------------------------------------------

SYNTAX = (
    "cloudvac reads every *.conf file of its configuration directory (/etc/cloudvac.d, or "
    "--config-dir) in alphanumeric order. Options are written key = value; lines starting "
    "with # are comments, a ; after a space starts an inline comment, and an indented line "
    "continues the value above it. A section repeated in a later file is merged with the "
    "earlier one, the later file's values winning (a warning says so); an option given "
    "twice in one section of one file is an error.",
    f"The sections are {SECTION_KINDS}. An unknown section or option is an error naming "
    "its file and line; a space with an error is skipped (the daemon keeps its last good "
    "configuration) while every other space runs.",
    "Lists are separated by spaces or commas. Secrets are never written in the "
    "configuration: each has a *_file option (a file of mode 0600 or stricter, whose first "
    "line is the secret) and a *_env option (an environment variable).",
)


def _refused_text(model: type[BaseModel]) -> str:
    refused = refused_inline() if model is OpenStackSpace else dict(EC2_INLINE_SECRETS)
    return "Refused inline (a secret): " + "; ".join(
        f"{name} (use {instead})" for name, instead in sorted(refused.items())) + "."


# -- Markdown ------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*<>|])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: str) -> str:
    """``text`` as literal Markdown (GitHub's): no emphasis, tags or table cells from it."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def markdown() -> str:
    """``docs/options.md``."""
    lines = ["# cloudvac configuration options", "",
             f"<!-- GENERATED by `{REGENERATE}` from the models in cloudvac/config/: do not "
             "edit. Change a Field(description=...) and regenerate. -->", ""]
    lines += [p for text in SYNTAX for p in (_md(text), "")]
    lines += [_md("Each section below lists its options with their type, default and "
                  "meaning, and VCycle's name where it differs. The admin guide "
                  "(admin-guide.md) explains how they fit together."), ""]
    for group in groups():
        lines += [f"## {_md(group.title)}", "", _md(group.intro), "",
                  "| option | type | default | meaning | VCycle |", "|---|---|---|---|---|"]
        lines += [f"| `{o.name}` | {_md(o.type)} | {_md_default(o.default)} | "
                  f"{_md(o.meaning)} | {f'`{o.vcycle}`' if o.vcycle else ''} |"
                  for o in group.options]
        lines.append("")
        if group.model in (OpenStackSpace, Ec2Space):
            lines += [_md(_refused_text(group.model)), ""]
    lines += _md_vcycle()
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_default(default: str) -> str:
    if default in ("unset", "required", "empty", "none"):
        return default
    return f"`{default}`" if "`" not in default else _md(default)


def _md_vcycle() -> list[str]:
    notes = vcycle_notes()
    if not notes:
        return []
    lines = ["## VCycle options that cloudvac does not take or reads differently", "",
             "| section | VCycle option | cloudvac | note |", "|---|---|---|---|"]
    lines += [f"| {section} | `{vcycle}` | {f'`{carried}`' if carried else 'not carried over'}"
              f" | {_md(note)} |" for section, vcycle, carried, note in notes]
    return [*lines, ""]


# -- roff (man) ----------------------------------------------------------------------------


def roff(text: str) -> str:
    """``text`` safe as roff running text: backslashes, hyphens (minus signs, so options
    can be copied), characters beyond ASCII, leading dots and quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def man_header(name: str, section: int, version: str, manual: str) -> list[str]:
    """``.TH`` (no date: the page changes only when its source does), then no hyphenation
    and no justification, so option names and URLs stay whole."""
    return [f'.TH "{name.upper()}" "{section}" "" "cloudvac {version}" "{manual}"', ".nh",
            ".ad l"]


def conf_man(version: str) -> str:
    """``cloudvac.conf(5)``."""
    lines = [f".\\\" GENERATED by {REGENERATE}: do not edit.",
             *man_header("cloudvac.conf", 5, version, "File Formats"),
             ".SH NAME", "cloudvac.conf \\- configuration of cloudvac",
             ".SH SYNOPSIS", ".I /etc/cloudvac.d/*.conf", ".SH DESCRIPTION"]
    for text in SYNTAX:
        lines += [".PP", roff(text)]
    for group in groups():
        lines += [f'.SH "{roff(group.title)}"', roff(group.intro)]
        for option in group.options:
            lines += [".TP", f".B {roff(option.name)}"]
            what = f"({option.type}; default: {option.default}"
            what += f"; VCycle: {option.vcycle})" if option.vcycle else ")"
            lines.append(roff(what if not option.meaning else f"{option.meaning} {what}"))
        if group.model in (OpenStackSpace, Ec2Space):
            lines += [".PP", roff(_refused_text(group.model))]
    notes = vcycle_notes()
    if notes:
        lines += [".SH \"VCYCLE OPTIONS\"",
                  roff("VCycle options that cloudvac does not take or reads differently:")]
        for section, vcycle, carried, note in notes:
            lines += [".TP", f".B {roff(vcycle)}",
                      roff(f"[{section}] " + (f"now {carried}" if carried else
                                              "not carried over") + (f": {note}" if note
                                                                     else "."))]
    lines += [".SH FILES", ".TP", ".I /etc/cloudvac.d/*.conf",
              roff("The configuration, read in alphanumeric order."),
              ".SH \"SEE ALSO\"", ".BR cloudvac (1)"]
    return "\n".join(lines) + "\n"
