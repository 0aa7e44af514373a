"""Scenario output: CSV and JSON rows, and a PNG plot per run.

The plot has two panels per space, over simulated hours: the processors held by each
machinetype, and its machines (running solid, starting dotted); each machinetype's backoff
periods are shaded in its colour in both.
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
    fig, axes = plt.subplots(2 * len(spaces), 1, figsize=(11.5, 5.4 * len(spaces)),
                             squeeze=False, sharex=True)
    for number, space in enumerate(spaces):
        held, machines = axes[2 * number, 0], axes[2 * number + 1, 0]
        mts = sorted({r.machinetype for r in rows if r.space == space})
        for index, mt in enumerate(mts):
            colour = f"C{index}"
            mine = [r for r in rows if r.space == space and r.machinetype == mt]
            hours = [r.hours for r in mine]
            held.plot(hours, [r.processors for r in mine], color=colour, label=mt)
            machines.plot(hours, [r.running for r in mine], color=colour, label=f"{mt} running")
            machines.plot(hours, [r.starting for r in mine], color=colour, ls=":",
                          label=f"{mt} starting")
            for start, end in _spans([(r.hours, r.backoff) for r in mine]):
                for ax in (held, machines):
                    ax.axvspan(start, end, color=colour, alpha=0.12, lw=0)
        held.set_title(f"{space}: processors held (starting + running)")
        held.set_ylabel("processors")
        held.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                    title="shaded: backoff")
        machines.set_title(f"{space}: machines")
        machines.set_ylabel("machines")
        machines.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        for ax in (held, machines):
            ax.grid(alpha=0.3)
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
