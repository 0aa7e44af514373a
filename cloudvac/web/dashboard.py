"""The operator's dashboard: one HTML page, drawn on the server from the store and the
configuration, reloading itself (``<meta http-equiv="refresh">``): kHS06 and running
machines over time per VO and per site (stacked, ``series.py`` and ``svg.py``), the spaces
x machinetypes table (``status.py``, the figures of ``cloudvac status``), recent shutdown
codes and errors per machinetype, credential expiry and the health line of ``/healthz``.

Everything it shows is in the page: its style sheet ships in the package
(``web/static/dashboard.css``) and is inlined, the plots are inline SVG, there is no
script; the page loads nothing else (``CSP`` below says so to the browser), so it works
offline and behind the operator door's token or client certificate alike.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from html import escape
from importlib import resources

from cloudvac.config.models import Space
from cloudvac.model.records import Event, MachineRecord
from cloudvac.status import StatusRow
from cloudvac.web.health import CREDENTIAL_WARN_SECONDS, Health
from cloudvac.web.series import Series, plots
from cloudvac.web.svg import legend, stacked_area

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""Nothing but the page itself: no script, no request to any other address."""
REFRESH_SECONDS = 15
ERRORS_SHOWN = 30
FAVICON = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'" \
          "%3E%3Ccircle cx='8' cy='8' r='7' fill='%234e79a7'/%3E%3C/svg%3E"


@cache
def style_sheet() -> str:
    return (resources.files("cloudvac") / "web" / "static" / "dashboard.css").read_text()


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the page shows, read once (``events``: the newest, newest first)."""

    spaces: Mapping[str, Space]
    rows: Sequence[StatusRow]
    machines: Sequence[MachineRecord]
    """Every machine the store keeps, ended ones included."""
    events: Sequence[Event]
    credentials: Mapping[str, Mapping[str, float]]
    health: Health
    now: float


def utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def page(data: Dashboard, refresh: int = REFRESH_SECONDS) -> str:
    """The whole page."""
    series = plots(data.machines, data.spaces, data.now)
    since = series[0].times[0]
    body = [
        _header(data, refresh),
        '<section class="plots">', *(_figure(s) for s in series), "</section>",
        "<h2>Spaces and machinetypes</h2>", _table(data),
        f"<h2>Shutdown codes since {escape(utc(since))}</h2>",
        _codes(data.machines, since),
        "<h2>Recent errors per machinetype</h2>", _errors(data.events),
        "<h2>Credentials</h2>", _credentials(data.credentials, data.now),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{int(refresh)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="{FAVICON}">'
            "<title>cloudvac dashboard</title>"
            f"<style>{style_sheet()}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _header(data: Dashboard, refresh: int) -> str:
    level = data.health.level.name
    first = data.health.text().splitlines()[0]
    return (f"<header><h1>cloudvac</h1><p>{len(data.spaces)} spaces, "
            f"{sum(len(s.machinetypes) for s in data.spaces.values())} machinetypes; "
            f"as of {escape(utc(data.now))}, reloads every {int(refresh)}s. "
            '<a href="api/status">status (JSON)</a> · <a href="metrics">metrics</a> · '
            '<a href="healthz">health</a></p>'
            f'<p class="health {level.lower()}" id="health">{escape(first)}</p></header>')


def _figure(series: Series) -> str:
    return f'<figure class="plot">{stacked_area(series)}{legend(series)}</figure>'


def _table(data: Dashboard) -> str:
    head = ("<tr><th>space</th><th>machinetype</th><th>VO</th><th>starting</th>"
            "<th>running</th><th>stopping</th><th>processors</th><th>kHS06</th>"
            "<th>share actual/target</th><th>backoff</th><th>drained</th>"
            "<th>last error</th></tr>")
    hs06: dict[tuple[str, str], float] = {}
    for m in data.machines:
        if m.started_at is not None and m.ended_at is None:
            key = (m.space, m.machinetype)
            hs06[key] = hs06.get(key, 0.0) + (m.hs06 or 0.0)
    lines = []
    for r in data.rows:
        mt = data.spaces[r.space].machinetypes.get(r.machinetype) \
            if r.space in data.spaces else None
        vo = (mt.vo if mt is not None else None) or "-"
        backoff = f"{r.backoff_seconds_left:.0f}s" if r.backoff_seconds_left else "-"
        cells = [r.space, r.machinetype, vo, str(r.starting), str(r.running),
                 str(r.stopping), str(r.processors),
                 f"{hs06.get((r.space, r.machinetype), 0.0) / 1000:.2f}",
                 f"{r.actual_share:.0%} / {r.target_share:.0%}", backoff,
                 "yes" if r.drained else "-", r.last_error or "-"]
        lines.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    body = "".join(lines) or '<tr><td colspan="12">no space configured</td></tr>'
    return f'<table id="machinetypes"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _codes(machines: Sequence[MachineRecord], since: float) -> str:
    """Per machinetype, how many machines ended with each shutdown code since ``since``."""
    counts: dict[tuple[str, str], Counter[int]] = {}
    texts: dict[int, str] = {}
    for m in machines:
        at = m.shutdown_at or m.ended_at
        if m.shutdown is None or at is None or at < since:
            continue
        counts.setdefault((m.space, m.machinetype), Counter())[m.shutdown.code] += 1
        texts.setdefault(m.shutdown.code, f"{m.shutdown.klass.name.lower()}: "
                                          f"{m.shutdown.text}")
    if not counts:
        return '<p class="none">no machine reported a shutdown code yet</p>'
    lines = []
    for (space, mt), codes in sorted(counts.items()):
        shown = " ".join(f'<span class="code c{code // 100}" title="{escape(texts[code])}">'
                         f"{code}&times;{n}</span>" for code, n in codes.most_common())
        lines.append(f"<tr><td>{escape(space)}</td><td>{escape(mt)}</td><td>{shown}</td></tr>")
    return ('<table id="codes"><thead><tr><th>space</th><th>machinetype</th>'
            f"<th>codes (count)</th></tr></thead><tbody>{''.join(lines)}</tbody></table>")


def _errors(events: Sequence[Event]) -> str:
    errors = [e for e in events if e.kind == "error"][:ERRORS_SHOWN]
    if not errors:
        return '<p class="none">no error recorded</p>'
    lines = [f"<tr><td>{escape(utc(e.at))}</td><td>{escape(e.space)}</td>"
             f"<td>{escape(e.machinetype or '(space)')}</td><td>{escape(e.message)}</td></tr>"
             for e in sorted(errors, key=lambda e: (e.space, e.machinetype, -e.at))]
    return ('<table id="errors"><thead><tr><th>time</th><th>space</th><th>machinetype</th>'
            f"<th>error</th></tr></thead><tbody>{''.join(lines)}</tbody></table>")


def _credentials(credentials: Mapping[str, Mapping[str, float]], now: float) -> str:
    lines = []
    for space, kinds in sorted(credentials.items()):
        for kind, at in sorted(kinds.items()):
            left = at - now
            mark = "critical" if left <= 0 else "warning" if left < CREDENTIAL_WARN_SECONDS \
                else "ok"
            lines.append(f'<tr class="{mark}"><td>{escape(space)}</td><td>{escape(kind)}</td>'
                         f"<td>{escape(utc(at))}</td><td>{left / 3600:.1f}h</td></tr>")
    if not lines:
        return '<p class="none">no space uses an expiring credential (tokens)</p>'
    return ('<table id="credentials"><thead><tr><th>space</th><th>kind</th><th>expires</th>'
            f"<th>left</th></tr></thead><tbody>{''.join(lines)}</tbody></table>")
