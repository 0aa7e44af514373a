"""Checks every rendered user_data before it leaves cloudvac.

* Nova's limit: at most 65,535 bytes once base64-encoded.
* Nothing unresolved: no Jinja2 syntax, no ``##user_data_...##`` placeholder.
* cloud-config parts: YAML that validates against cloud-init's own JSON schema (the one
  Debian's ``cloud-init`` package ships; the path can be given), and whose top-level keys
  are all known to cloud-init (the schema alone lets a typo like ``write_file`` through).
  Multipart MIME user_data is split and each cloud-config part checked; ``user_data_parts``
  finds and types the parts the way cloud-init 22.4 does (``user_data.convert_string`` and
  ``handlers.type_from_starts_with``), so a VCycle template whose MIME headers follow mail
  headers (``From nobody ...``, ``Comments:``) is split too.

When no cloud-init schema is installed, only the structural checks run; ``schema_found()``
tells callers (``cloudvac validate`` prints a warning then).
"""

from __future__ import annotations

import base64
import email
import json
import re
from dataclasses import dataclass
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
# cloud-init reads user_data as MIME when this appears (any case) in its first 4096 bytes.
MIME_MARKER, MIME_WINDOW = b"mime-version:", 4096
# cloud-init's types by how a text starts (handlers.INCLUSION_TYPES_MAP), longest first; it
# applies them to a whole non-MIME text and to MIME parts of these types:
STARTS_WITH = tuple(sorted({
    "#include": "text/x-include-url", "#include-once": "text/x-include-once-url",
    "#!": "text/x-shellscript", "#cloud-config": "text/cloud-config",
    "#part-handler": "text/part-handler", "#cloud-boothook": "text/cloud-boothook",
    "#cloud-config-archive": "text/cloud-config-archive",
    "#cloud-config-jsonp": "text/cloud-config-jsonp", "## template: jinja": "text/jinja2",
}.items(), key=lambda item: -len(item[0])))
RETYPED = frozenset({"text/plain", "text/x-not-multipart", "text/x-shellscript"})
# libyaml's safe loader when PyYAML was built with it: the same documents, about 20 times
# faster than the pure-Python one on a 20 KB cloud-config, which every create validates.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UserDataInvalid(RenderError):
    """Rendered user_data that must not be sent; ``str()`` says which part and why."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of user_data as cloud-init sees it."""

    name: str
    """``user_data`` for a whole non-MIME text, else ``MIME part N`` (and its filename)."""
    content_type: str
    text: str


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
    for part in user_data_parts(text):
        if part.content_type == "text/cloud-config":
            _check_cloud_config(part.text, f"{where} ({part.name})")


def user_data_parts(text: str) -> list[Part]:
    """The parts cloud-init finds in ``text``, typed as it types them: MIME when
    ``MIME_MARKER`` is in the first ``MIME_WINDOW`` bytes (whatever headers come before the
    MIME ones), each non-multipart part by its Content-Type, re-typed by how its text starts
    when that type is in ``RETYPED``; else the whole text, typed by how it starts."""
    if MIME_MARKER not in text.encode()[:MIME_WINDOW].lower():
        return [Part("user_data", _type_from_start(text) or "text/x-not-multipart", text)]
    parts = []
    for index, part in enumerate(email.message_from_string(text).walk()):
        if part.get_content_maintype() == "multipart":
            continue
        payload = part.get_payload(decode=True)
        body = (payload.decode(part.get_content_charset() or "utf-8", errors="replace")
                if isinstance(payload, bytes) else str(payload or ""))
        content_type = part.get_content_type()
        if content_type in RETYPED:
            content_type = _type_from_start(body) or content_type
        filename = part.get_filename()
        name = f"MIME part {index}" + (f" {filename}" if filename else "")
        parts.append(Part(name, content_type, body))
    return parts


def _type_from_start(text: str) -> str | None:
    start = text.lstrip().lower()
    return next((kind for prefix, kind in STARTS_WITH if start.startswith(prefix)), None)


def _check_cloud_config(text: str, where: str) -> None:
    try:
        document = yaml.load(text, Loader=SAFE_LOADER)
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
