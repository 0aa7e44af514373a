"""Vacuum pipes: machinetypes a VO maintains in a JSON document at a URL (VCycle's
``[vacuum_pipe SPACE PREFIX]``, the Vacuum Pipe format of Vac and VCycle).

This module is pure: ``parse_pipe`` turns the bytes of a pipe document into typed
machinetype options, or raises ``PipeError`` listing every problem, each named by the
pipe's URL and the JSON path of the value (``$.machinetypes[1].user_data``).  A document
with any problem is refused as a whole: the caller keeps its last good one.

The document (VCycle's ``readPipe``)::

    {"cache_seconds": 3600,
     "machinetypes": [{"suffix": "prod", "target_share": 1.0, "backoff_seconds": 600,
                       "user_data": "builtin:belle", "root_image": "AlmaLinux-9", ...}]}

Each entry becomes ``[machinetype SPACE PREFIX-SUFFIX]``.  Keys taken from an entry:
those of ``PIPE_OPTIONS`` (VCycle's accepted pipe options that mean something here, plus
``vo`` and ``image_family``), ``user_data_option_X`` (text) and ``user_data_file_X`` (a
bare file name: the site provides the file, see ``config/pipecache.py``).  Keys that are
Vac's or VCycle's but mean nothing to cloudvac are accepted and ignored (``IGNORED_KEYS``:
a VO writes one pipe for every manager).  An entry whose ``machine_model`` is neither
``cernvm3`` nor ``vm-raw`` is for another manager (Vac's containers): it is skipped, as
VCycle skips it, and named in ``PipeDocument.skipped``.  Anything else is an error.

Safety (the document comes from outside the site): ``user_data`` is ``builtin:NAME`` or
an ``https://`` URL (never a path on this host); ``root_image`` an image name (no ``/``)
or an ``https://`` URL; ``heartbeat_file`` and ``user_data_file_*`` bare file names;
``user_data_proxy = true`` (VCycle's X.509 proxy in user_data) is refused.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloudvac.model.layout import FILE_NAME
from cloudvac.model.naming import MACHINETYPE_NAME

MAX_PIPE_BYTES = 1 << 20
"""A pipe document larger than this is refused (real ones are a few kB)."""
MACHINE_MODELS = frozenset({"cernvm3", "vm-raw"})
IGNORED_KEYS = frozenset({"min_wallclock_seconds", "image_signing_dn", "root_device",
                          "scratch_device", "accounting_fqan", "legacy_proxy", "cache_seconds",
                          "machine_model"})
"""Vac's and VCycle's keys that mean nothing to cloudvac: accepted, ignored."""
TOP_KEYS = frozenset({"cache_seconds", "machinetypes"})
OPTION_PREFIX, FILE_PREFIX = "user_data_option_", "user_data_file_"
_SUFFIX = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
_PLACEHOLDER = re.compile(r"^[a-z0-9_]+$")
_BUILTIN = re.compile(r"^builtin:[a-z0-9_-]+$")
_REPOSITORY = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
Seconds = Annotated[int, Field(ge=0)]


class PipeError(ValueError):
    """A pipe document that cannot be used; ``problems``: every one, located."""

    def __init__(self, url: str, problems: list[str]) -> None:
        self.url, self.problems = url, problems
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"{shown_url(url)}: " + "; ".join(problems[:3]) + more)


@dataclass(frozen=True, slots=True)
class PipeMachinetype:
    """One entry: ``options`` are machinetype options as INI text (``user_data`` and
    ``user_data_file_*`` as the pipe gives them: the expansion resolves them)."""

    suffix: str
    target_share: float | None
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def template_url(self) -> str | None:
        """The https:// user_data template this entry needs fetched, if any."""
        value = self.options.get("user_data")
        return value if value is not None and value.startswith("https://") else None


@dataclass(frozen=True, slots=True)
class PipeDocument:
    cache_seconds: int | None
    machinetypes: tuple[PipeMachinetype, ...]
    skipped: tuple[str, ...] = ()
    """``suffix (machine_model X)`` of entries meant for another manager."""

    @property
    def template_urls(self) -> list[str]:
        return sorted({u for mt in self.machinetypes if (u := mt.template_url) is not None})


def shown_url(url: str) -> str:
    """``url`` as messages show it: no query or fragment (they may carry a token)."""
    parts = urlsplit(url)
    tail = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{tail}"


def https_url(value: str) -> bool:
    parts = urlsplit(value)
    return (parts.scheme == "https" and bool(parts.hostname) and "@" not in parts.netloc
            and not re.search(r"\s", value))


class PipeEntry(BaseModel):
    """The typed keys of one entry (VCycle's accepted pipe options, plus vo/image_family)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    suffix: str
    target_share: float | None = Field(None, ge=0)
    backoff_seconds: Seconds | None = None
    fizzle_seconds: Seconds | None = None
    max_wallclock_seconds: Seconds | None = None
    heartbeat_file: str | None = None
    heartbeat_seconds: Seconds | None = None
    min_processors: int | None = Field(None, ge=1)
    max_processors: int | None = Field(None, ge=1)
    root_image: str | None = None
    user_data: str | None = None
    cvmfs_repositories: list[str] | None = None
    vo: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    image_family: str | None = Field(None, pattern=r"^(el9|el8|cernvm4)$")
    user_data_proxy: bool | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str) -> str:
        if not re.match(_SUFFIX, value):
            raise ValueError("suffixes use a-z, 0-9 and '-' (not first or last)")
        return value

    @field_validator("heartbeat_file")
    @classmethod
    def _heartbeat_file(cls, value: str | None) -> str | None:
        if value is not None and not FILE_NAME.match(value):
            raise ValueError("a bare file name (no '/', no leading '.')")
        return value

    @field_validator("user_data")
    @classmethod
    def _user_data(cls, value: str | None) -> str | None:
        if value is not None and not (_BUILTIN.match(value) or https_url(value)):
            raise ValueError("user_data from a pipe must be builtin:NAME or an https:// URL, "
                             "never a path on this host")
        return value

    @field_validator("root_image")
    @classmethod
    def _root_image(cls, value: str | None) -> str | None:
        if value is not None and (("/" in value and not https_url(value))
                                  or re.search(r"[\x00-\x1f]", value) or not value):
            raise ValueError("root_image from a pipe must be an image name (no '/') or an "
                             "https:// URL")
        return value

    @field_validator("cvmfs_repositories", mode="before")
    @classmethod
    def _repositories(cls, value: object) -> object:
        if isinstance(value, str):  # Vac's form: one string, space-separated
            value = value.replace(",", " ").split()
        if isinstance(value, list):
            bad = [v for v in value if not isinstance(v, str) or not _REPOSITORY.match(v)]
            if bad:
                raise ValueError(f"CVMFS repository names use a-z, 0-9, '.' and '-', got "
                                 f"{str(bad[0])[:40]!r}")
        return value

    @field_validator("user_data_proxy")
    @classmethod
    def _proxy(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("an X.509 proxy in user_data is not supported: the site sets "
                             "host_cert_file or pilot_proxy_file in its [vacuum_pipe] section")
        return value


PIPE_OPTIONS = frozenset(PipeEntry.model_fields) - {"suffix", "target_share",
                                                     "user_data_proxy"}


def parse_pipe(data: bytes, url: str, prefix: str | None = None) -> PipeDocument:
    """The pipe document in ``data`` fetched from ``url``; ``prefix``: the
    ``[vacuum_pipe SPACE PREFIX]`` it is for (its machinetype names are checked).
    Raises PipeError naming every problem."""
    problems: list[str] = []
    top = _top(data, problems)
    if top is None:
        raise PipeError(url, problems)
    cache = top.get("cache_seconds")
    if cache is not None and (isinstance(cache, bool) or not isinstance(cache, int)
                              or cache < 0):
        problems.append("$.cache_seconds: expected a whole number of seconds >= 0")
    entries, skipped, suffixes = [], [], set()
    for index, raw in enumerate(top.get("machinetypes") or []):
        where = f"$.machinetypes[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected an object")
            continue
        model = raw.get("machine_model")
        if model is not None and model not in MACHINE_MODELS:
            suffix = _key(str(raw.get("suffix", f"#{index}")))
            skipped.append(f"{suffix} (machine_model {_key(str(model))})")
            continue
        entry = _entry(raw, where, problems)
        if entry is None:
            continue
        if entry.suffix in suffixes:
            problems.append(f"{where}.suffix: '{entry.suffix}' is given twice")
        suffixes.add(entry.suffix)
        name = f"{prefix}-{entry.suffix}"
        if prefix is not None and not MACHINETYPE_NAME.match(name):
            problems.append(f"{where}.suffix: the machinetype name '{name}' is too long "
                            "(at most 32 characters)")
        entries.append(entry)
    if problems:
        raise PipeError(url, problems)
    return PipeDocument(cache, tuple(entries), tuple(skipped))


def _top(data: bytes, problems: list[str]) -> dict[str, Any] | None:
    if len(data) > MAX_PIPE_BYTES:
        problems.append(f"$: larger than {MAX_PIPE_BYTES} bytes")
        return None
    try:
        top = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        problems.append("$: not UTF-8")
        return None
    except json.JSONDecodeError as exc:
        problems.append(f"$: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
        return None
    if not isinstance(top, dict):
        problems.append("$: expected an object with cache_seconds and machinetypes")
        return None
    for key in sorted(set(top) - TOP_KEYS):
        problems.append(f"$.{_key(key)}: unknown key{_close(key, TOP_KEYS)}")
    if not isinstance(top.get("machinetypes"), list):
        problems.append("$.machinetypes: " + ("expected a list" if "machinetypes" in top
                                              else "missing"))
        return None
    return top


def _entry(raw: Mapping[str, Any], where: str, problems: list[str]) -> PipeMachinetype | None:
    typed: dict[str, Any] = {}
    options: dict[str, str] = {}
    before = len(problems)
    for key, value in raw.items():
        path = f"{where}.{_key(key)}"
        if key in IGNORED_KEYS:
            continue
        if key.startswith((OPTION_PREFIX, FILE_PREFIX)):
            text = _placeholder(key, value, path, problems)
            if text is not None:
                options[key] = text
        elif key in PipeEntry.model_fields:
            typed[key] = value
        else:
            known = [*PipeEntry.model_fields, *IGNORED_KEYS]
            problems.append(f"{path}: unknown key{_close(key, known)}")
    try:
        entry = PipeEntry.model_validate(typed)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in error["loc"])
            message = "missing" if error["type"] == "missing" else \
                str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}.{loc.replace('.[', '[')}: {message}")
        return None
    if len(problems) > before:
        return None
    for key in (k for k in PipeEntry.model_fields if k in PIPE_OPTIONS):
        value = getattr(entry, key)
        if value is not None:
            options[key] = " ".join(value) if isinstance(value, list) else str(value)
    return PipeMachinetype(entry.suffix, entry.target_share, options)


def _placeholder(key: str, value: object, path: str, problems: list[str]) -> str | None:
    prefix = OPTION_PREFIX if key.startswith(OPTION_PREFIX) else FILE_PREFIX
    if not _PLACEHOLDER.match(key[len(prefix):]):
        problems.append(f"{path}: user_data option names use a-z, 0-9 and '_'")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"{path}: expected text")
        return None
    text = str(value)
    if prefix == FILE_PREFIX and not FILE_NAME.match(text):
        problems.append(f"{path}: a file name the site provides (no '/', no leading '.'), "
                        "not a path")
        return None
    return text


def _key(key: str) -> str:
    """A JSON key as a path element, cut short and quoted when it is not a plain word."""
    return key if re.match(r"^[A-Za-z0-9_]{1,64}$", key) else json.dumps(key[:40])


def _close(key: str, known: frozenset[str] | list[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
