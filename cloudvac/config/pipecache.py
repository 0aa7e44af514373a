"""Vacuum pipes in the configuration: ``[vacuum_pipe SPACE PREFIX]`` sections become
``[machinetype SPACE PREFIX-SUFFIX]`` sections from the pipe's last good document.

The section (VCycle's, ``config/pipes.py`` for the document)::

    [vacuum_pipe napoli.infn.it lhcb]
    vacuum_pipe_url = https://repo.example.org/lhcb.pipe   ; https (http only on loopback)
    vacuum_pipe_refresh_minutes = 60   ; default: the pipe's cache_seconds, else 60 minutes
    target_share = 3                   ; the pipe's total, split by the pipe's own shares
    root_image = AlmaLinux-9           ; any other option: set in every machinetype of it

Precedence, as in VCycle: a local ``[machinetype SPACE PREFIX-SUFFIX]`` section wins
over the ``[vacuum_pipe]`` section, which wins over the document.  Each machinetype's
``target_share`` is ``total x its share / sum of the pipe's shares`` (equal parts when
the pipe gives none); a local section's ``target_share`` is taken as it is.

Nothing here touches the network: the daemon's fetcher (``engine/pipes.py``) keeps the
cache under ``STATE_DIR/pipes/SPACE/PREFIX/`` (``STATE_DIR``: ``state_dir`` as the files
give it), and the loader reads it:

* ``pipe-H.json``: the last good document as fetched (``H``: a hash of the URL, so a
  changed URL never serves the old pipe's document);
* ``pipe-H.state.json``: ``PipeState``, what the last fetch found;
* ``templates/T`` (and ``T.state.json``): the document's ``https://`` user_data
  templates, as fetched; ``user_data`` points there;
* ``files/NAME``: files the site provides for the document's ``user_data_file_X = NAME``
  (VCycle's ``machinetypes/PREFIX/files/``).

A pipe whose last fetch failed keeps its cached document, with a warning naming the
failure; a pipe with no good document yet is an error at its section and its
machinetypes are absent (the space carries on with its others).
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from cloudvac.config.ini import IniDocument, Issue, Location, Section
from cloudvac.config.models import Machinetype
from cloudvac.config.pipes import (
    FILE_PREFIX,
    PipeDocument,
    PipeError,
    PipeMachinetype,
    https_url,
    parse_pipe,
    shown_url,
)
from cloudvac.config.settings import Settings
from cloudvac.model.naming import MACHINETYPE_NAME, SPACE_NAME

KIND = "vacuum_pipe"
URL, REFRESH, SHARE = "vacuum_pipe_url", "vacuum_pipe_refresh_minutes", "target_share"
DEFAULT_REFRESH_SECONDS = 3600.0
MIN_REFRESH_SECONDS = 60.0
#: Machinetype options a [vacuum_pipe] section may set for all of its machinetypes.
OVERRIDES = frozenset(Machinetype.model_fields) - {"name", "space", "sim", "target_share",
                                                   "user_data_options", "user_data_files"}
OVERRIDE_PREFIXES = ("user_data_option_", "user_data_file_", "sim_")


class PipeState(BaseModel):
    """What the fetcher knows of one URL (a pipe document or a template)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str
    etag: str | None = None
    last_modified: str | None = None
    fetched_at: float | None = None
    """When the document kept in the cache was downloaded."""
    checked_at: float | None = None
    """The last attempt, good or bad."""
    failing_since: float | None = None
    error: str | None = None
    """Why the attempts since ``failing_since`` failed; None when the last one worked."""
    cache_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class PipeSection:
    """One valid ``[vacuum_pipe SPACE PREFIX]`` section."""

    space: str
    prefix: str
    url: str
    directory: Path
    section: Section
    refresh_minutes: float | None = None
    total_share: float | None = None
    overrides: Mapping[str, tuple[str, Location]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.section.title

    @property
    def where(self) -> Location:
        return self.section.where(URL)

    @property
    def body_path(self) -> Path:
        return self.directory / f"pipe-{url_hash(self.url)}.json"

    @property
    def state_path(self) -> Path:
        return self.directory / f"pipe-{url_hash(self.url)}.state.json"

    def template_path(self, url: str) -> Path:
        return self.directory / "templates" / url_hash(url)

    def refresh_seconds(self, state: PipeState | None) -> float:
        """How long a good fetch stays fresh: this section's option, else the document's
        ``cache_seconds``, else an hour; never under a minute."""
        if self.refresh_minutes is not None:
            seconds = self.refresh_minutes * 60
        elif state is not None and state.cache_seconds is not None:
            seconds = float(state.cache_seconds)
        else:
            seconds = DEFAULT_REFRESH_SECONDS
        return max(MIN_REFRESH_SECONDS, seconds)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def state_path_of(path: Path) -> Path:
    """Where the ``PipeState`` of a cached template ``path`` is kept."""
    return path.with_name(path.name + ".state.json")


def read_state(path: Path) -> PipeState | None:
    """The state at ``path``; None if there is none or it is unreadable."""
    try:
        return PipeState.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def when(stamp: float | None) -> str:
    if stamp is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def cache_root(doc: IniDocument) -> Path:
    """``STATE_DIR/pipes``, with ``state_dir`` as the files give it."""
    settings = doc.sections.get(("settings",))
    raw = settings.values.get("state_dir") if settings is not None else None
    default: Path = Settings.model_fields["state_dir"].default
    return (Path(raw[0]) if raw else default) / "pipes"


def fetchable(url: str) -> bool:
    """An https:// URL, or http:// to a loopback address (a local mirror, tests)."""
    if https_url(url):
        return True
    parts = urlsplit(url)
    if parts.scheme != "http" or "@" in parts.netloc or not parts.hostname:
        return False
    try:
        return parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def pipe_sections(doc: IniDocument) -> list[PipeSection]:
    """The valid ``[vacuum_pipe]`` sections of ``doc`` (for the fetcher)."""
    root = cache_root(doc)
    found = (_pipe_section(s, root, []) for k, s in doc.sections.items() if k[0] == KIND)
    return [p for p in found if p is not None]


def expand_pipes(doc: IniDocument, issues: list[Issue], warnings: list[Issue]) -> None:
    """The loader's hook: replace every ``[vacuum_pipe SPACE PREFIX]`` section of ``doc``
    by the ``[machinetype SPACE PREFIX-SUFFIX]`` sections of its cached document (merged
    under local sections of the same name); report problems in ``issues`` (refused) and
    ``warnings`` (a failing pipe kept on its last good document)."""
    keys = [k for k in doc.sections if k[0] == KIND]
    if not keys:
        return
    root = cache_root(doc)
    for key in keys:
        section = doc.sections.pop(key)
        pipe = _pipe_section(section, root, issues)
        if pipe is None:
            continue
        if pipe.total_share is None:
            warnings.append(Issue(section.header, section.title, SHARE, "not set: the "
                                  "pipe's machinetypes get target_share 0 and are never "
                                  "created (set the pipe's total share here)"))
        document = _cached(pipe, issues, warnings)
        if document is not None:
            for mt in document.machinetypes:
                _add_machinetype(doc, pipe, document, mt, issues)


def _pipe_section(section: Section, root: Path, issues: list[Issue]) -> PipeSection | None:
    def problem(option: str | None, message: str) -> None:
        issues.append(Issue(section.where(option), section.title, option, message))

    if len(section.key) != 3:
        problem(None, "expected [vacuum_pipe SPACE PREFIX]")
        return None
    before = len(issues)
    space, prefix = section.key[1], section.key[2]
    if not SPACE_NAME.match(space):
        problem(None, "space names are DNS-like: a-z, 0-9, '.' and '-'")
    if not MACHINETYPE_NAME.match(prefix):
        problem(None, "prefixes use a-z, 0-9 and '-' (they start machinetype names)")
    values = {k: v for k, (v, _) in section.values.items()}
    url = values.pop(URL, None)
    if url is None:
        problem(URL, "required option is missing")
    elif not fetchable(url):
        problem(URL, "must be an https:// URL (http:// only to a loopback address), "
                "without user:password@")
    refresh = _number(values.pop(REFRESH, None), 1.0, REFRESH, problem)
    share = _number(values.pop(SHARE, None), 0.0, SHARE, problem)
    for option in values:
        if option not in OVERRIDES and not option.startswith(OVERRIDE_PREFIXES):
            close = difflib.get_close_matches(option, sorted({URL, REFRESH, SHARE} | OVERRIDES),
                                              n=1)
            problem(option, "unknown option" + (f"; did you mean '{close[0]}'?" if close
                                                else ""))
    if len(issues) > before or url is None:
        return None
    overrides = {k: v for k, v in section.values.items() if k in values}
    return PipeSection(space, prefix, url, root / space / prefix, section, refresh, share,
                       overrides)


def _number(raw: str | None, least: float, option: str,
            problem: Callable[[str | None, str], None]) -> float | None:
    if raw is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        number = float("nan")
    if not number >= least or number == float("inf"):
        problem(option, f"expected a number of at least {least:g}")
        return None
    return number


def _cached(pipe: PipeSection, issues: list[Issue],
            warnings: list[Issue]) -> PipeDocument | None:
    """The pipe's cached document, with what the last fetch said."""
    state = read_state(pipe.state_path)
    state = state if state is not None and state.url == pipe.url else None
    shown = f"vacuum pipe {shown_url(pipe.url)}"
    try:
        body: bytes | None = pipe.body_path.read_bytes()
    except OSError:
        body = None
    if body is None:
        if state is None or state.error is None:
            why = "not fetched yet (the daemon, cloudvac run, fetches it)"
        else:
            why = f"cannot be fetched since {when(state.failing_since)}: {state.error}"
        issues.append(Issue(pipe.where, pipe.title, URL, f"{shown} {why}; no good "
                            "definition yet, so its machinetypes are absent"))
        return None
    try:
        document = parse_pipe(body, pipe.url, pipe.prefix)
    except PipeError as exc:
        issues.append(Issue(pipe.where, pipe.title, URL, f"the cached definition is not valid "
                            f"(any more): {exc}; its machinetypes are absent"))
        return None
    if state is not None and state.error is not None:
        warnings.append(Issue(pipe.where, pipe.title, URL, f"{shown} failing since "
                              f"{when(state.failing_since)}: {state.error}; keeping its last "
                              f"good definition, fetched at {when(state.fetched_at)}"))
    return document


def _add_machinetype(doc: IniDocument, pipe: PipeSection, document: PipeDocument,
                     mt: PipeMachinetype, issues: list[Issue]) -> None:
    name = f"{pipe.prefix}-{mt.suffix}"
    values: dict[str, tuple[str, Location]] = {}
    for option, text in mt.options.items():
        if option == "user_data" and mt.template_url is not None:
            path = pipe.template_path(mt.template_url)
            if not path.is_file():
                issues.append(Issue(pipe.where, pipe.title, URL, f"{name}: its user_data "
                                    f"template {shown_url(text)} is not in the cache (the "
                                    "daemon fetches it with the pipe); machinetype absent"))
                return
            text = str(path)
        elif option.startswith(FILE_PREFIX):
            text = str(pipe.directory / "files" / text)
        values[option] = (text, pipe.where)
    values.update(pipe.overrides)
    values[SHARE] = (repr(_share(pipe, document, mt)), pipe.section.where(SHARE))
    key = ("machinetype", pipe.space, name)
    local = doc.sections.get(key)
    if local is None:
        header = pipe.section.header
        doc.sections[key] = Section(key, header, values, set(pipe.section.files), [header])
    else:
        for option, value in values.items():
            local.values.setdefault(option, value)
        local.files.update(pipe.section.files)
    tainted = doc.tainted.get(pipe.section.key)
    if tainted:
        doc.tainted.setdefault(key, []).extend(tainted)


def _share(pipe: PipeSection, document: PipeDocument, mt: PipeMachinetype) -> float:
    """``total x share / sum of shares``; equal parts if no entry gives a share."""
    total = pipe.total_share or 0.0
    shares = [m.target_share for m in document.machinetypes]
    if all(s is None for s in shares):
        return total / len(shares)
    whole = sum(s or 0.0 for s in shares)
    return total * (mt.target_share or 0.0) / whole if whole > 0 else 0.0
