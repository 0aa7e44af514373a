"""Scenario output: CSV and JSON rows, and a PNG plot per run.

The plot has one panel per space: processors held by each machinetype over simulated hours,
with each machinetype's backoff periods shaded in its colour.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from cloudvac.simulate.runner import Row, as_dicts


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(as_dicts(rows))


def write_json(rows: list[Row], path: Path, summary: dict[str, object]) -> None:
    path.write_text(json.dumps({"summary": summary, "rows": as_dicts(rows)}, indent=1))


def summarize(rows: list[Row]) -> dict[str, object]:
    """Per space and machinetype: mean processors and share over the last quarter of the
    run, hours spent in backoff, machines created."""
    if not rows:
        return {}
    end = max(r.hours for r in rows)
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.space, r.machinetype)].append(r)
    for (space, mt), items in groups.items():
        tail = [r for r in items if r.hours >= 0.75 * end] or items
        step = end / max(1, len(items) - 1)
        out[space][mt] = {
            "mean_processors_last_quarter": round(sum(r.processors for r in tail) / len(tail), 2),
            "mean_share_last_quarter": round(sum(r.actual_share for r in tail) / len(tail), 3),
            "target_share": items[-1].target_share,
            "hours_in_backoff": round(sum(step for r in items if r.backoff), 2),
        }
    return {"hours": end, "spaces": dict(out)}


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    spaces = sorted({r.space for r in rows})
    fig, axes = plt.subplots(len(spaces), 1, figsize=(10, 3.2 * len(spaces)), squeeze=False,
                             sharex=True)
    for ax, space in zip(axes[:, 0], spaces, strict=True):
        mts = sorted({r.machinetype for r in rows if r.space == space})
        for index, mt in enumerate(mts):
            colour = f"C{index}"
            mine = [r for r in rows if r.space == space and r.machinetype == mt]
            hours = [r.hours for r in mine]
            ax.plot(hours, [r.processors for r in mine], color=colour, label=mt)
            for start, end in _spans([(r.hours, r.backoff) for r in mine]):
                ax.axvspan(start, end, color=colour, alpha=0.12, lw=0)
        ax.set_title(space)
        ax.set_ylabel("processors")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small", title="shaded: backoff")
    axes[-1, 0].set_xlabel("simulated hours")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _spans(points: list[tuple[float, bool]]) -> list[tuple[float, float]]:
    spans, start = [], None
    for hours, on in points:
        if on and start is None:
            start = hours
        elif not on and start is not None:
            spans.append((start, hours))
            start = None
    if start is not None and points:
        spans.append((start, points[-1][0]))
    return spans
