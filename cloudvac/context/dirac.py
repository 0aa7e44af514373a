"""DIRAC pieces of a VM's context: pilot.json, the pilot command line, the pilot's identity
and the CS snippet that registers a space as a DIRAC site.

Reference: shared/reference/research-dirac.md (section numbers below).  One space is one DIRAC
CE (CE name = space name) at site ``<prefix>.<site_name>`` of each DIRAC instance its
machinetypes report to; a machinetype is a queue of that CE (§4.1, §7).

Contracts:

* Every function is pure: same config in, same output out (no clock, no randomness).
* Anything the pilot or DIRAC would reject (bad site name, missing VO, over-long stamp,
  characters that would break the CS format) raises ``ValueError`` naming the culprit.
* ``pilot_json`` output is accepted by ``validate_pilot_json``.

The CS snippet that registers the space is in ``context/diraccs.py``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import jsonschema
import jsonschema.exceptions

from cloudvac.config.dirac import DiracInstance, dirac_site
from cloudvac.config.models import Machinetype, Space

# The pilot's built-in command list (Pilot/pilotTools.py PilotParams.commands), written out
# so the file does not depend on the pilot version's default (§1.7, §1.10).
STANDARD_COMMANDS: tuple[str, ...] = (
    "CheckWorkerNode", "InstallDIRAC", "ConfigureBasics", "RegisterPilot",
    "CheckCECapabilities", "CheckWNCapabilities", "ConfigureSite", "ConfigureArchitecture",
    "ConfigureCPURequirements", "LaunchAgent")

MAX_STAMP = 32  # PilotAgentsDB.PilotStamp VARCHAR(32) (§1.8)
MAX_REFERENCE = 255  # PilotAgentsDB.PilotJobReference VARCHAR(255) (§1.8)

SITE_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
_REFERENCE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII: the DB column is latin1

# --------------------------------------------------------------------------------------------
# Site and pilot identity


def site_of(instance: DiracInstance, space: Space) -> str:
    """The DIRAC site of ``space`` in ``instance``: ``<site_prefix>.<site_name>``, where
    ``site_name`` is the space's ``site_name_<instance>`` if set, else its ``site_name``.

    Raises ``ValueError`` if the space has neither or the result is not
    ``<Domain>.<Site>.<cc>`` (§4.1)."""
    site_name = space.site_name_for(instance.name)
    if not site_name:
        raise ValueError(f"space {space.name!r} needs site_name (<Site>.<cc>) to report to "
                         f"DIRAC instance {instance.name!r}")
    return dirac_site(instance.site_prefix, site_name)


def pilot_stamp(machine_name: str) -> str:
    """32 lower-case hex digits from SHA-256 of the machine name: the pilot stamp
    (``--pilotUUID`` and ``DIRAC_PILOT_STAMP``), stable across re-renders of one machine."""
    if not machine_name:
        raise ValueError("machine name is empty")
    return hashlib.sha256(machine_name.encode("utf-8")).hexdigest()[:MAX_STAMP]


def pilot_environment(space: Space, machine_name: str) -> dict[str, str]:
    """Environment of the pilot process: ``PILOT_UUID=vm://<space>/<machine>`` (the pilot
    reference; its presence makes the pilot flavour ``CLOUD``) and ``DIRAC_PILOT_STAMP``
    (§1.8).  Raises ``ValueError`` if the reference would exceed 255 printable ASCII
    characters."""
    reference = f"vm://{space.name}/{machine_name}"
    if len(reference) > MAX_REFERENCE or not _REFERENCE.match(reference):
        raise ValueError(f"pilot reference {reference[:80]!r} must be at most {MAX_REFERENCE} "
                         "printable ASCII characters")
    return {"PILOT_UUID": reference, "DIRAC_PILOT_STAMP": pilot_stamp(machine_name)}


def _machinetypes(instance: DiracInstance, space: Space) -> list[Machinetype]:
    return [mt for mt in space.machinetypes.values() if mt.dirac == instance.name]


def _vos(instance: DiracInstance, space: Space) -> list[str]:
    return sorted({mt.vo for mt in _machinetypes(instance, space) if mt.vo})


# --------------------------------------------------------------------------------------------
# pilot.json


def pilot_json(instance: DiracInstance, space: Space) -> dict[str, Any]:
    """The pilot.json for ``instance`` listing CE ``space.name`` (§1.2, §1.3, §1.10).

    ``format == "setups"`` (DIRAC <= v8): options in ``Setups/<setup>``, ``Commands`` keyed by
    the grid CE type as a JSON list; CVMFS locations are not read from this format, so they
    only go on the command line (``pilot_command``).
    ``format == "operations"`` (DIRAC v9): options in ``Defaults/Pilot`` with the types the
    pilot's parser needs (``CommandExtensions``, ``CVMFS_locations`` and ``Commands/Defaults``
    comma strings, ``RemoteLogging`` the string ``"False"``), plus an empty ``<VO>/Pilot``
    override slot per VO of the space's machinetypes on this instance.
    ``Version`` and ``Project`` are left out when empty (never a placeholder)."""
    site = site_of(instance, space)
    doc: dict[str, Any] = {
        "DefaultSetup": instance.setup,
        "ConfigurationServers": list(instance.configuration_servers),
        "GenericPilotDNs": [],
        "CEs": {space.name: {"Site": site, "GridCEType": instance.ce_type,
                             "LocalCEType": instance.local_ce_type}},
    }
    options: dict[str, Any] = {}
    if instance.version:
        options["Version"] = instance.version
    if instance.project:
        options["Project"] = instance.project
    if instance.command_extensions:
        options["CommandExtensions"] = ",".join(instance.command_extensions)
    if instance.format == "setups":
        options["Commands"] = {instance.ce_type: list(STANDARD_COMMANDS)}
        doc["Setups"] = {instance.setup: options}
    else:
        options["RemoteLogging"] = "False"
        options["PilotLogLevel"] = "INFO"
        options["CVMFS_locations"] = ",".join(instance.cvmfs_locations)
        options["Commands"] = {"Defaults": ", ".join(STANDARD_COMMANDS)}
        doc["Defaults"] = {"Pilot": options}
        for vo in _vos(instance, space):
            if vo in doc:
                raise ValueError(f"VO name {vo!r} clashes with a pilot.json top-level key")
            doc[vo] = {"Pilot": {}}
    return doc


_STRING_LIST: dict[str, Any] = {"anyOf": [{"type": "string"},
                                          {"type": "array", "items": {"type": "string"}}]}
_INT_LIKE: dict[str, Any] = {"anyOf": [{"type": "integer"},
                                       {"type": "string", "pattern": r"^\s*-?\d+\s*$"}]}
_COMMANDS: dict[str, Any] = {"type": "object", "additionalProperties": _STRING_LIST}

PILOT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "DIRAC pilot.json as read by DIRACGrid/Pilot PilotParams (research-dirac §1.3)",
    "type": "object",
    "required": ["ConfigurationServers", "CEs"],
    "properties": {
        "timestamp": {"type": "string"},
        "DefaultSetup": {"type": "string", "minLength": 1},
        "ConfigurationServers": {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "pattern": r"^dips://[A-Za-z0-9.-]+:\d+/\S+$"}},
        "PreferredURLPatterns": {"type": "array", "items": {"type": "string"}},
        "GenericPilotDNs": {"type": "array", "items": {"type": "string"}},
        "CEs": {"type": "object", "additionalProperties": {"$ref": "#/$defs/ce"}},
        "Setups": {"type": "object", "minProperties": 1,
                   "additionalProperties": {"$ref": "#/$defs/setupOptions"}},
    },
    # Any other top-level key is an /Operations section (Defaults, <VO>, <Setup>).
    "additionalProperties": {"$ref": "#/$defs/opsSection"},
    # The pilot picks the parser on the presence of "Setups" (pilotTools.py PilotParams).
    "oneOf": [
        {"title": "Setups format (DIRAC <= v8)", "required": ["Setups"]},
        {"title": "Operations mirror format (DIRAC v9)", "not": {"required": ["Setups"]}},
    ],
    "$defs": {
        "ce": {
            "type": "object",
            "required": ["Site"],
            "properties": {
                "Site": {"type": "string", "pattern": SITE_PATTERN},
                "GridCEType": {"type": "string", "minLength": 1},
                "LocalCEType": {"type": "string", "minLength": 1},
            },
            # queue sub-objects ({"LocalCEType": ...}) or informational strings
            "additionalProperties": {"anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {"LocalCEType": {"type": "string"}}}]},
        },
        "setupOptions": {
            "type": "object",
            "properties": {
                "Version": {"type": "string"},
                "Project": {"type": "string"},
                "CommandExtensions": _STRING_LIST,
                "ConfigurationServer": _STRING_LIST,
                "Commands": _COMMANDS,
            },
        },
        "pilotOptions": {
            "type": "object",
            "properties": {
                "Version": {"type": "string"},
                "Project": {"type": "string"},
                "CommandExtensions": {"type": "string"},
                "CVMFS_locations": {"type": "string"},
                "RemoteLogging": {"type": "string",
                                  "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"},
                "RemoteLoggerURL": {"type": "string"},
                "RemoteLoggerTimerInterval": _INT_LIKE,
                "RemoteLoggerBufsize": _INT_LIKE,
                "RemoteLoggerCEsWhiteList": _STRING_LIST,
                "PilotLogLevel": {"type": "string"},
                "Commands": _COMMANDS,
            },
        },
        "opsSection": {
            "type": "object",
            "properties": {"Pilot": {"$ref": "#/$defs/pilotOptions"}},
            "additionalProperties": {"anyOf": [
                {"type": ["string", "number", "boolean", "array"]},
                {"$ref": "#/$defs/opsSection"}]},
        },
    },
}


def validate_pilot_json(doc: Any) -> None:
    """Check ``doc`` against ``PILOT_JSON_SCHEMA`` and the cross-key rule the schema cannot
    express (a Setups-format ``DefaultSetup`` must name one of ``Setups``, else the pilot
    silently runs without version and commands).  Raises ``ValueError`` whose message starts
    with the path of the offending key (``Defaults/Pilot/RemoteLogging: ...``)."""
    validator = jsonschema.Draft202012Validator(PILOT_JSON_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        path = "/".join(str(part) for part in error.absolute_path)
        if not path and error.validator == "required" and isinstance(error.instance, dict):
            missing = [key for key in error.validator_value if key not in error.instance]
            path = missing[0] if missing else ""
        raise ValueError(f"pilot.json {path or '(top level)'}: {error.message}")
    setups = doc.get("Setups")
    default = doc.get("DefaultSetup")
    if setups is not None and default is not None and default not in setups:
        raise ValueError(f"pilot.json DefaultSetup: {default!r} is not a key of Setups")


# --------------------------------------------------------------------------------------------
# Command line


def pilot_command(instance: DiracInstance, space: Space, mt: Machinetype, stamp: str,
                  cert_dir: str | None) -> list[str]:
    """Arguments after ``python3 dirac-pilot.py`` for a pilot of ``mt`` (§1.6, §1.9, §7.3).

    Always ``-S -N -Q -n --wnVO --pilotUUID -y --CVMFS_locations``; ``-l`` if the instance has
    a project, ``-r`` if it pins a version, ``--cert --certLocation=DIR`` if ``cert_dir`` is
    given, then ``-o OPT`` per ``mt.pilot_options``.  Never ``--Site`` (not an option: getopt
    aborts the pilot) nor ``-K`` (declared but ignored).  Raises ``ValueError`` if ``mt`` has
    no VO, belongs to another instance, or ``stamp`` is empty or over 32 characters."""
    if not mt.vo:
        raise ValueError(f"machinetype {mt.name!r} needs vo: the pilot binds the VM to it "
                         "(--wnVO), otherwise host-certificate pilots match nothing")
    if mt.dirac != instance.name:
        raise ValueError(f"machinetype {mt.name!r} reports to {mt.dirac!r}, "
                         f"not {instance.name!r}")
    if not stamp or len(stamp) > MAX_STAMP:
        raise ValueError(f"pilot stamp must be 1-{MAX_STAMP} characters, got {len(stamp)}")
    args = ["-S", instance.setup]
    if instance.project:
        args += ["-l", instance.project]
    args += ["-N", space.name, "-Q", mt.name, "-n", site_of(instance, space),
             f"--wnVO={mt.vo}", f"--pilotUUID={stamp}", "-y", instance.local_ce_type,
             "--CVMFS_locations=" + ",".join(instance.cvmfs_locations)]
    if instance.version:
        args += ["-r", instance.version]
    if cert_dir:
        args += ["--cert", f"--certLocation={cert_dir}"]
    for option in mt.pilot_options:
        args += ["-o", option]
    return args
