"""Operator status per space and machinetype, computed from the store and the configuration.

Used by ``cloudvac status`` (a separate process reading the shared store) and by the demo's
live table, so both always show the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cloudvac.config.models import Space
from cloudvac.engine.planner import machine_weight
from cloudvac.engine.records import Event, MachineRecord
from cloudvac.engine.states import MachineState

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


def status_rows(spaces: Mapping[str, Space], machines: Sequence[MachineRecord],
                last_aborts: Mapping[tuple[str, str], float], events: Sequence[Event],
                now: float, credentials: Mapping[str, Mapping[str, float]] | None = None
                ) -> list[StatusRow]:
    """One row per configured machinetype.  ``events`` newest first; the newest ``error``
    event of a space (or machinetype) is shown as its last error."""
    rows: list[StatusRow] = []
    for space in spaces.values():
        own = [m for m in machines if m.space == space.name and m.state is not S.GONE]
        weights = {name: 0.0 for name in space.machinetypes}
        for m in own:
            mt = space.machinetypes.get(m.machinetype)
            if mt is not None and not m.state.finished and m.delete_requested_at is None:
                weights[mt.name] += machine_weight(mt, m.processors)
        total_weight = sum(weights.values())
        total_share = sum(mt.target_share for mt in space.machinetypes.values())
        space_error = _last_error(events, space.name, None)
        expiries = (credentials or {}).get(space.name, {})
        expires_in = min(expiries.values()) - now if expiries else None
        for name, mt in space.machinetypes.items():
            mine = [m for m in own if m.machinetype == name]
            abort = last_aborts.get((space.name, name))
            left = max(0.0, abort + mt.backoff_seconds - now) if abort is not None else 0.0
            rows.append(StatusRow(
                space=space.name, machinetype=name,
                starting=sum(m.state in (S.STARTING, S.INTENT) for m in mine),
                running=sum(m.state is S.RUNNING and m.delete_requested_at is None
                            for m in mine),
                stopping=sum(m.state in STOPPING or m.delete_requested_at is not None
                             for m in mine),
                processors=sum(m.processors for m in mine),
                actual_share=weights[name] / total_weight if total_weight else 0.0,
                target_share=mt.target_share / total_share if total_share else 0.0,
                backoff_seconds_left=left,
                last_error=_last_error(events, space.name, name) or space_error,
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
