"""``cloudvac validate``: every problem of every file in one run, each located (file, line,
section, option), values never shown, and a last line whose count of errors is what the
exit status says (1 if and only if there is an error).

Beyond what the loader checks (which ``run`` checks too), validate looks at what would
only fail later: the files a machinetype's user_data reads, a trial render of every
machinetype's user_data (what its first creation would send), and the web doors' TLS
and addresses (what ``run`` would refuse at start).  A problem that keeps a later check
from running says so by being the one reported: a machinetype whose template file is
missing is not also trial-rendered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from cloudvac.cli.base import err
from cloudvac.config import Issue, LoadedConfig, Location, Settings, Space, load_config_dir
from cloudvac.config.checks import SETTINGS_SECRETS, check_secrets
from cloudvac.config.ini import Section


@dataclass(slots=True)
class Outcome:
    """What validate found: ``errors`` (each refuses something) and ``warnings``."""

    loaded: LoadedConfig
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    """Warnings about this host rather than a file (cloud-init's schema is missing)."""

    @property
    def summary(self) -> str:
        loaded = self.loaded
        mts = sum(len(s.machinetypes) for s in loaded.spaces.values())
        warnings = len(self.warnings) + len(self.notices)
        return (f"{len(self.errors)} {_plural(len(self.errors), 'error')}, {warnings} "
                f"{_plural(warnings, 'warning')} in {len(loaded.files)} "
                f"{_plural(len(loaded.files), 'file')}: {len(loaded.spaces)} valid "
                f"{_plural(len(loaded.spaces), 'space')} ({mts} "
                f"{_plural(mts, 'machinetype')}), {len(loaded.broken)} invalid")


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def validate_dir(config_dir: Path) -> Outcome:
    """Everything ``cloudvac validate`` checks in ``config_dir``."""
    from cloudvac.context.validate import schema_found

    loaded = load_config_dir(config_dir)
    outcome = Outcome(loaded, list(loaded.issues), list(loaded.warnings))
    if loaded.settings is not None:
        settings_section = loaded.sections.get(("settings",))
        outcome.errors += _doors(loaded.settings, settings_section, loaded.files)
        for space in loaded.spaces.values():
            outcome.errors += _space_files_and_renders(space, loaded.settings, loaded.sections)
    if not schema_found():
        outcome.notices.append("cloud-init's schema is not installed (Debian package "
                               "cloud-init): user_data got structural checks only")
    order = {path: number for number, path in enumerate(loaded.files)}
    for issues in (outcome.errors, outcome.warnings):
        issues.sort(key=lambda i: (order.get(i.location.file, -1), i.location.line))
    return outcome


def print_outcome(outcome: Outcome) -> int:
    """Print ``outcome`` (problems on stderr, the summary on stdout); the exit status."""
    for issue in outcome.errors:
        err.print(f"[red]error[/red] {escape(str(issue))}", highlight=False, soft_wrap=True)
    for issue in outcome.warnings:
        err.print(f"[yellow]warning[/yellow] {escape(str(issue))}", highlight=False,
                  soft_wrap=True)
    for notice in outcome.notices:
        err.print(f"[yellow]warning[/yellow] {escape(notice)}", highlight=False,
                  soft_wrap=True)
    print(outcome.summary, flush=True)
    return 1 if outcome.errors else 0


def _space_files_and_renders(space: Space, settings: Settings,
                             sections: dict[tuple[str, ...], Section]) -> list[Issue]:
    """The files each machinetype reads, then (if they are there) its trial render."""
    found: list[Issue] = []
    for mt in space.machinetypes.values():
        section = sections[("machinetype", space.name, mt.name)]
        files = _readable(section, ["host_cert_file", *(
            o for o in section.values if o.startswith("user_data_file_"))])
        if mt.user_data and not mt.user_data.startswith("builtin:"):
            files += _readable(section, ["user_data"])
        found += files or _render(space, mt.name, settings, section)
    return found


def _readable(section: Section, options: Iterable[str]) -> list[Issue]:
    found = []
    for option in options:
        if option not in section.values:
            continue
        shown = section.values[option][0]
        try:
            with open(shown, "rb"):
                pass
        except OSError as exc:
            found.append(Issue(section.where(option), section.title, option,
                               f"{shown}: {exc.strerror or type(exc).__name__}"))
    return found


def _render(space: Space, machinetype: str, settings: Settings, section: Section) -> list[Issue]:
    """A trial render of a new machine's user_data (masked, with a throwaway signer)."""
    from cloudvac.auth.vmtokens import TokenSigner
    from cloudvac.context.errors import RenderError
    from cloudvac.context.userdata import ContextRenderer
    from cloudvac.context.validate import validate_user_data

    where = f"{space.name}/{machinetype}"
    mt = space.machinetypes[machinetype]
    option = "user_data" if "user_data" in section.values else None
    try:
        renderer = ContextRenderer(settings, TokenSigner(b"0" * 32))
        text = renderer.render(space, mt, f"cloudvac-000000-{machinetype}-0000000000")
        validate_user_data(text, where)
    except RenderError as exc:
        message = str(exc).removeprefix(f"{where}: ")
    except Exception as exc:
        message = f"cannot be rendered ({type(exc).__name__})"
    else:
        return []
    said = message if option else f"user_data (builtin:generic): {message}"
    return [Issue(section.where(option), section.title, option, said)]


def _doors(settings: Settings, section: Section | None, files: list[Path]) -> list[Issue]:
    """What ``run`` would refuse at start about the web doors, located at the options."""
    from cloudvac.web.listen import Door, WebConfigError, check_door_tls, is_loopback, parse_listen

    found: list[Issue] = []
    if section is not None and not check_secrets(section, SETTINGS_SECRETS, found):
        return found  # the TLS checks would only repeat it

    def problem(option: str, message: str) -> None:
        where = section.where(option) if section is not None else Location(
            files[0] if files else Path(os.curdir), 0)
        found.append(Issue(where, "settings", option, message))

    for door, listen in (("web", settings.web_listen), ("operator", settings.operator_listen)):
        cert, key = getattr(settings, f"{door}_tls_cert"), getattr(settings, f"{door}_tls_key")
        if (cert is None) != (key is None):
            problem(f"{door}_tls_cert" if cert is None else f"{door}_tls_key",
                    f"set both {door}_tls_cert and {door}_tls_key, or neither")
            continue
        if cert is None and not is_loopback(parse_listen(listen).host):
            problem(f"{door}_listen", f"not a loopback address: plain HTTP is only allowed "
                    f"on loopback; set {door}_tls_cert and {door}_tls_key")
        client_ca = settings.operator_tls_client_ca if door == "operator" else None
        try:
            check_door_tls(Door(parse_listen(listen), cert, key, client_ca), door)
        except WebConfigError as exc:
            named = re.match(rf"^{door}_tls_[a-z_]+", str(exc))
            problem(named.group(0) if named else f"{door}_tls_cert", str(exc))
    if not is_loopback(parse_listen(settings.operator_listen).host) and \
            settings.operator_token_file is None and settings.operator_tls_client_ca is None:
        problem("operator_listen", "not a loopback address: set operator_token_file or "
                "operator_tls_client_ca, or anyone could use the operator's door")
    return found
