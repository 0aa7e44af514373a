"""Stacked-area plots as inline SVG, drawn on the server: the dashboard needs no script
library, no CDN and no network; any browser (or a saved page) shows them.

Each group's area is a ``<path class="area" data-label=... data-peak=...>`` with a
``<title>`` (its peak, shown on hover), so tests and scrapers can read what is drawn.
"""

from __future__ import annotations

import math
import time
from html import escape

from cloudvac.web.series import Series

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
WIDTH, HEIGHT = 520, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 26
X_TICKS = 4
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    return next(f * scale for f in (1, 2, 2.5, 5, 10) if f * scale >= value * (1 - 1e-9))


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.3g}"


def _axes(series: Series, top: float) -> list[str]:
    x, y, w, h = LEFT, TOP, PLOT_W, PLOT_H
    parts = [f'<rect x="{x}" y="{y}" width="{w}" height="{h}" class="frame"/>']
    for fraction in (0.0, 0.5, 1.0):
        ty = y + h - fraction * h
        parts.append(f'<line x1="{x}" x2="{x + w}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>')
        parts.append(f'<text x="{x - 4}" y="{ty + 4:.1f}" class="tick" text-anchor="end">'
                     f"{_number(top * fraction)}</text>")
    first, last = series.times[0], series.times[-1]
    for k in range(X_TICKS):
        at = first + (last - first) * k / (X_TICKS - 1)
        tx = x + w * k / (X_TICKS - 1)
        anchor = "start" if k == 0 else "end" if k == X_TICKS - 1 else "middle"
        label = time.strftime("%H:%M:%S", time.gmtime(at))
        parts.append(f'<text x="{tx:.1f}" y="{y + h + 16}" class="tick" '
                     f'text-anchor="{anchor}">{label}</text>')
    return parts


def stacked_area(series: Series) -> str:
    """The series as one SVG element, groups stacked in their order (times in UTC)."""
    x, y, w, h = LEFT, TOP, PLOT_W, PLOT_H
    times = series.times
    totals = [sum(v[k] for v in series.values.values()) for k in range(len(times))]
    top = nice_ceiling(max(totals, default=0.0))
    span = (times[-1] - times[0]) or 1.0

    def px(k: int) -> float:
        return x + w * (times[k] - times[0]) / span

    def py(value: float) -> float:
        return y + h - h * value / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'data-title="{escape(series.title)}">',
             f'<text x="{x}" y="16" class="title">{escape(series.title)} '
             f'({escape(series.unit)}, UTC)</text>',
             *_axes(series, top)]
    below = [0.0] * len(times)
    for index, (group, values) in enumerate(series.values.items()):
        above = [b + v for b, v in zip(below, values, strict=True)]
        upper = " ".join(f"{px(k):.1f},{py(above[k]):.1f}" for k in range(len(times)))
        lower = " ".join(f"{px(k):.1f},{py(below[k]):.1f}"
                         for k in reversed(range(len(times))))
        peak = series.peak(group)
        parts.append(f'<path class="area" d="M{upper} L{lower} Z" fill="{color(index)}" '
                     f'data-label="{escape(group)}" data-peak="{peak:g}">'
                     f"<title>{escape(group)}: peak {_number(peak)} "
                     f"{escape(series.unit)}</title></path>")
        below = above
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Series) -> str:
    """The groups with their colours and current values, as an HTML list."""
    items = []
    for index, (group, values) in enumerate(series.values.items()):
        now = values[-1] if values else 0.0
        items.append(f'<li><span class="swatch" style="background:{color(index)}"></span>'
                     f"{escape(group)} <b>{_number(now)}</b></li>")
    return f'<ul class="legend">{"".join(items) or "<li>no machines yet</li>"}</ul>'
