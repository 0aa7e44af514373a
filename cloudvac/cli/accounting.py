"""``cloudvac accounting``: what the finished machines delivered, per VO, site, machinetype,
space or DIRAC site, over a window (``cloudvac.model.usage`` says how it is counted)."""

from __future__ import annotations

import enum
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudvac.cli.base import DEFAULT_CONFIG_DIR, ConfigDir, app, err, open_store, print_issues

if TYPE_CHECKING:
    from cloudvac.model.usage import Usage

__all__ = ["accounting", "app"]

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
COLUMNS = ("machines", "wall_hours", "processor_hours", "cpu_hours", "cpu_efficiency",
           "khs06_hours", "average_khs06", "jobs_production", "jobs_user", "shutdown_codes")


class By(enum.StrEnum):
    VO = "vo"
    SITE = "site"
    MACHINETYPE = "machinetype"
    SPACE = "space"
    DIRAC_SITE = "dirac-site"


class Format(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def parse_time(text: str, now: float) -> float:
    """Unix seconds, an ISO 8601 date or time (UTC unless it says), or an age such as
    ``24h`` or ``7d`` (that long before now).  ValueError otherwise."""
    text = text.strip()
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _time(option: str, text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text, now)
    except ValueError:
        err.print(f"[red]error:[/red] {option}: not a time: {text!r} (unix seconds, ISO 8601 "
                  "such as 2026-11-01 or 2026-11-01T12:00, or an age such as 24h or 7d)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def accounting(  # noqa: PLR0913 - one parameter per option of the command
        config_dir: ConfigDir = DEFAULT_CONFIG_DIR,
        since: Annotated[str | None, typer.Option(help="Window start: unix seconds, ISO 8601 "
                                                  "(UTC) or an age (7d); default: the "
                                                  "first machine's start.")] = None,
        until: Annotated[str | None, typer.Option(help="Window end, likewise; default: "
                                                  "now.")] = None,
        by: Annotated[By, typer.Option(help="Group by.")] = By.VO,
        output: Annotated[Format, typer.Option("--format", help="Output format.")]
        = Format.TABLE,
        state_dir: Annotated[Path | None, typer.Option(
            help="Read the store of this state directory (a demo's --state-dir) instead "
            "of the configuration's.")] = None) -> None:
    """What finished machines delivered over a window: machines, wall, processor and CPU
    hours, CPU efficiency, kHS06 hours and average kHS06, jobs (production/user) and
    shutdown codes.  A machine running across an edge of the window counts only its time
    inside; jobs and shutdown codes count in the window where the machine ended."""
    from cloudvac.model.usage import GroupBy, usage, window_of

    now = time.time()
    start, end = _time("--since", since, now), _time("--until", until, now)
    store = open_store(_database_url(config_dir, state_dir))
    try:
        records = store.accounting(start, end)
    finally:
        store.close()
    first, last = window_of(records, start, end, now)
    rows = usage(records, GroupBy(by.value), first, last)
    typer.echo(render(rows, by.value, output, first, last), nl=False)


def _database_url(config_dir: Path, state_dir: Path | None) -> str:
    from cloudvac.config import load_config_dir
    from cloudvac.config.settings import Settings

    if state_dir is not None:
        return Settings(state_dir=state_dir).database_url
    loaded = load_config_dir(config_dir)
    if loaded.settings is None:
        print_issues(loaded)
        raise typer.Exit(2)
    return loaded.settings.database_url


def _cell(row: Usage, column: str, exact: bool = False) -> str:
    """One cell: rounded for the eye, or ``exact`` (CSV: full numbers, '' for unknown)."""
    value = getattr(row, column)
    if column == "shutdown_codes":
        return " ".join(f"{code}:{n}" for code, n in value.items()) or "-"
    if value is None:
        return "" if exact else "-"
    if exact:
        return repr(value)
    if isinstance(value, float):
        if column == "cpu_efficiency":
            return f"{value:.1%}"
        return f"{value:.1f}" if value >= 100 or value == 0 else f"{value:.3g}"
    return str(value)


def render(rows: list[Usage], by: str, output: Format, since: float, until: float) -> str:
    """The report as text in ``output``'s format."""
    import csv
    import io
    import json
    from dataclasses import asdict

    if output is Format.JSON:
        return json.dumps({"since": since, "until": until, "by": by,
                           "groups": [asdict(r) for r in rows]}, indent=2) + "\n"
    header = [by, *COLUMNS]
    if output is Format.CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([r.group, *(_cell(r, c, exact=True) for c in COLUMNS)] for r in rows)
        return buffer.getvalue()
    table = [header, *([r.group, *(_cell(r, c) for c in COLUMNS)] for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    iso = "%Y-%m-%d %H:%M:%S"
    title = (f"accounting {time.strftime(iso, time.gmtime(since))} to "
             f"{time.strftime(iso, time.gmtime(until))} UTC by {by}\n")
    if not rows:
        return title + "no finished machine in this window\n"
    return title + "".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                     for i, (cell, w) in enumerate(zip(line, widths, strict=True))
                                     ).rstrip() + "\n" for line in table)
