"""Checks every rendered user_data before it leaves cloudvac.

* Nova's limit: at most 65,535 bytes once base64-encoded.
* Nothing unresolved: no Jinja2 syntax, no ``##user_data_...##`` placeholder.
* cloud-config parts: YAML that validates against cloud-init's own JSON schema (the one
  Debian's ``cloud-init`` package ships; the path can be given), and whose top-level keys
  are all known to cloud-init (the schema alone lets a typo like ``write_file`` through).
  Multipart MIME user_data is split and each ``text/cloud-config`` part checked.

When no cloud-init schema is installed, only the structural checks run; ``schema_found()``
tells callers (``cloudvac validate`` prints a warning then).
"""

from __future__ import annotations

import base64
import email
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cloudvac.context.errors import RenderError

NOVA_USER_DATA_LIMIT = 65535
SCHEMA_PATHS = (
    Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"),
    Path("/usr/share/cloud-init/schema-cloud-config-v1.json"),
)
UNRESOLVED = re.compile(r"\{\{|\{%|##user_data_[A-Za-z0-9_]*##")


class UserDataInvalid(RenderError):
    """Rendered user_data that must not be sent; ``str()`` says which part and why."""


@cache
def _schema() -> tuple[dict[str, Any] | None, frozenset[str]]:
    for path in SCHEMA_PATHS:
        if path.is_file():
            schema = json.loads(path.read_text())
            keys: set[str] = set()
            for definition in schema.get("$defs", {}).values():
                keys |= set(definition.get("properties", {}))
            return schema, frozenset(keys)
    return None, frozenset()


def schema_found() -> bool:
    return _schema()[0] is not None


def validate_user_data(text: str, where: str) -> None:
    """Raise UserDataInvalid (naming ``where``, e.g. 'space/machinetype') for bad user_data."""
    encoded = len(base64.b64encode(text.encode()))
    if encoded > NOVA_USER_DATA_LIMIT:
        raise UserDataInvalid(f"{where}: user_data is {encoded} bytes in base64, over Nova's "
                              f"{NOVA_USER_DATA_LIMIT}")
    match = UNRESOLVED.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise UserDataInvalid(f"{where}: unresolved template text {match.group(0)!r} at line "
                              f"{line}")
    for part_name, part in _cloud_config_parts(text):
        _check_cloud_config(part, f"{where} ({part_name})")


def _cloud_config_parts(text: str) -> list[tuple[str, str]]:
    if text.startswith("#cloud-config"):
        return [("cloud-config", text)]
    if text.startswith("Content-Type: multipart/") or text.startswith("MIME-Version"):
        message = email.message_from_string(text)
        parts = []
        for index, part in enumerate(message.walk()):
            if part.get_content_type() == "text/cloud-config":
                payload = part.get_payload(decode=True)
                body = payload.decode() if isinstance(payload, bytes) else str(payload)
                parts.append((f"MIME part {index}", body))
        return parts
    return []  # a shell script or other format: nothing cloud-config to check


def _check_cloud_config(text: str, where: str) -> None:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserDataInvalid(f"{where}: not valid YAML{at}: "
                              f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(document, dict):
        raise UserDataInvalid(f"{where}: cloud-config must be a YAML mapping")
    schema, keys = _schema()
    if schema is None:
        return
    unknown = sorted(set(document) - keys)
    if unknown:
        raise UserDataInvalid(f"{where}: unknown cloud-config key(s) {', '.join(unknown)}")
    errors = sorted(_validator().iter_errors(document), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        path = ".".join(str(p) for p in first.path) or "(top level)"
        raise UserDataInvalid(f"{where}: cloud-init schema: {path}: {first.message[:200]}")


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema, _ = _schema()
    assert schema is not None
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)
