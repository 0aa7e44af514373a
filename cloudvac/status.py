"""Operator status per space and machinetype, from the store and the configuration.

Used by ``cloudvac status`` (a separate process reading the shared store), the web
service's ``/status`` and the demo's live table, so all show the same figures; shares come
from the same formula the planner uses (``model/shares.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.table import Table

from cloudvac.config.models import Space
from cloudvac.model.records import Event, MachineRecord
from cloudvac.model.shares import shares
from cloudvac.model.states import MachineState
from cloudvac.store import Store

S = MachineState
STOPPING = frozenset({S.STOPPED, S.FAILED, S.DELETING})


@dataclass(frozen=True, slots=True)
class StatusRow:
    space: str
    machinetype: str
    starting: int
    running: int
    stopping: int
    processors: int
    actual_share: float
    target_share: float
    backoff_seconds_left: float
    last_error: str
    credential_expires_in: float | None = None
    """Seconds until the space's earliest-expiring token (None: no token, e.g. sim)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StoreView:
    """What status needs from the store, read once (``machines`` without gone ones,
    ``events`` newest first)."""

    machines: Sequence[MachineRecord]
    last_aborts: Mapping[tuple[str, str], float]
    events: Sequence[Event]
    credentials: Mapping[str, Mapping[str, float]]


def read_view(store: Store, space: str | None = None, events: int = 200) -> StoreView:
    """Everything status needs, for ``space`` or all spaces, with the newest ``events``."""
    return StoreView(store.machines(space), store.last_aborts(), store.events(space, events),
                     store.credentials())


def status_rows(spaces: Mapping[str, Space], view: StoreView, now: float) -> list[StatusRow]:
    """One row per configured machinetype.  The newest ``error`` event of a machinetype,
    else of its space, is shown as its last error."""
    rows: list[StatusRow] = []
    for space in spaces.values():
        own = [m for m in view.machines if m.space == space.name and m.state is not S.GONE]
        weights = {name: 0.0 for name in space.machinetypes}
        for m in own:
            mt = space.machinetypes.get(m.machinetype)
            if mt is not None and m.holds_share:
                weights[mt.name] += mt.share_weight(m.processors)
        fractions = shares(weights, {n: mt.target_share for n, mt in space.machinetypes.items()})
        space_error = _last_error(view.events, space.name, None)
        expiries = view.credentials.get(space.name, {})
        expires_in = min(expiries.values()) - now if expiries else None
        for name, mt in space.machinetypes.items():
            mine = [m for m in own if m.machinetype == name]
            abort = view.last_aborts.get((space.name, name))
            left = max(0.0, abort + mt.backoff_seconds - now) if abort is not None else 0.0
            rows.append(StatusRow(
                space=space.name, machinetype=name,
                starting=sum(m.state.starting for m in mine),
                running=sum(m.state is S.RUNNING and m.delete_requested_at is None
                            for m in mine),
                stopping=sum(m.state in STOPPING or m.delete_requested_at is not None
                             for m in mine),
                processors=sum(m.processors for m in mine),
                actual_share=fractions[name].actual, target_share=fractions[name].target,
                backoff_seconds_left=left,
                last_error=_last_error(view.events, space.name, name) or space_error,
                credential_expires_in=expires_in,
            ))
    return rows


def _last_error(events: Sequence[Event], space: str, machinetype: str | None) -> str:
    for event in events:
        if event.kind != "error" or event.space != space:
            continue
        if (machinetype is None and not event.machinetype) or event.machinetype == machinetype:
            return event.message
    return ""


def status_table(rows: list[StatusRow], title: str = "cloudvac status") -> Table:
    """The rows as the table ``cloudvac status`` and the demo print."""
    table = Table(title=title)
    for heading in ("space", "machinetype", "starting", "running", "stopping", "processors",
                    "share (actual/target)", "backoff", "token expires", "last error"):
        table.add_column(heading, overflow="fold")
    for r in rows:
        backoff = f"{r.backoff_seconds_left:.0f}s" if r.backoff_seconds_left else "-"
        expires = "-" if r.credential_expires_in is None else \
            f"{r.credential_expires_in / 60:.0f} min"
        table.add_row(r.space, r.machinetype, str(r.starting), str(r.running), str(r.stopping),
                      str(r.processors), f"{r.actual_share:.0%} / {r.target_share:.0%}",
                      backoff, expires, r.last_error[:60] or "-")
    return table
