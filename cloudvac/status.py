"""Operator status per space and machinetype, from the store and the configuration.

Used by ``cloudvac status`` (a separate process reading the shared store), the web
service's ``/status`` and the demo's live table, so all show the same figures; shares come
from the same formula the planner uses (``model/shares.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rich import box
from rich.table import Table

from cloudvac.config.models import Space
from cloudvac.model.records import (
    WHOLE_SPACE,
    Drain,
    Event,
    MachineRecord,
    ProjectRoom,
    Removal,
    drain_deadline,
)
from cloudvac.model.shares import shares
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.store.leases import LeaseView

S = MachineState
TABLE_WIDTH = 80
"""The widest ``status_table`` by default: a terminal's width."""
MIN_ERROR = 10
MIN_NAME = 8
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
    drained: bool = False
    """An operator's drain covers this machinetype (of it, or of its whole space)."""
    drain_deadline: float | None = None
    """When its machines are told to stop taking jobs (MJF shutdowntime) and deleted."""
    killing: int = 0
    """Machines an operator asked to kill that the engine has not deleted yet."""
    foreign_processors: int | None = None
    """Processors used in the space's project by servers cloudvac does not own, at the
    engine's last read of the limits (None: not read yet)."""
    no_room: str = ""
    """Why foreign usage leaves no room for a new machine in the space, or ""."""
    removal: str = ""
    """The machinetype (or space) is in no configuration: what becomes of its machines."""
    owner: str = ""
    """The instance holding the space's lease ("" when none does)."""
    owner_host: str = ""
    """Its host and pid ("host pid N")."""
    owner_renewed_at: float | None = None
    """When it last renewed anything (its row's ``seen_at``, the database's clock)."""

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
    drains: Mapping[str, Mapping[str, Drain]] = field(default_factory=dict)
    rooms: Mapping[str, ProjectRoom] = field(default_factory=dict)
    removals: Mapping[str, Mapping[str, Removal]] = field(default_factory=dict)
    leases: LeaseView | None = None


def read_view(store: Store, space: str | None = None, events: int = 200) -> StoreView:
    """Everything status needs, for ``space`` or all spaces, with the newest ``events``."""
    return StoreView(store.machines(space), store.last_aborts(), store.events(space, events),
                     store.credentials(), store.drains(space), store.rooms(),
                     store.removals(space), leases=store.lease_view())


@dataclass(frozen=True, slots=True)
class Alarm:
    """The figures of a machinetype that need no machine: its backoff and its space's
    credential expiry (``/metrics`` reads only these, ``alarms``)."""

    space: str
    machinetype: str
    backoff_seconds_left: float
    credential_expires_in: float | None


def alarms(spaces: Mapping[str, Space], last_aborts: Mapping[tuple[str, str], float],
           credentials: Mapping[str, Mapping[str, float]], now: float) -> list[Alarm]:
    """One per configured machinetype, as in its status row."""
    found: list[Alarm] = []
    for space in spaces.values():
        expiries = credentials.get(space.name, {})
        expires_in = min(expiries.values()) - now if expiries else None
        for name, mt in space.machinetypes.items():
            abort = last_aborts.get((space.name, name))
            left = max(0.0, abort + mt.backoff_seconds - now) if abort is not None else 0.0
            found.append(Alarm(space.name, name, left, expires_in))
    return found


def status_rows(spaces: Mapping[str, Space], view: StoreView, now: float) -> list[StatusRow]:
    """One row per configured machinetype.  The newest ``error`` event of a machinetype,
    else of its space, is shown as its last error."""
    rows: list[StatusRow] = []
    by_space: dict[str, list[MachineRecord]] = {}
    for m in view.machines:  # one pass: at 1,000 spaces a filter per space cost seconds
        if m.state is not S.GONE:
            by_space.setdefault(m.space, []).append(m)
    alarm = {(a.space, a.machinetype): a
             for a in alarms(spaces, view.last_aborts, view.credentials, now)}
    for space in spaces.values():
        own = by_space.get(space.name, [])
        weights = {name: 0.0 for name in space.machinetypes}
        for m in own:
            mt = space.machinetypes.get(m.machinetype)
            if mt is not None and m.holds_share:
                weights[mt.name] += mt.share_weight(m.processors)
        fractions = shares(weights, {n: mt.target_share for n, mt in space.machinetypes.items()})
        space_error = _last_error(view.events, space.name, None)
        drains, room = view.drains.get(space.name, {}), view.rooms.get(space.name)
        for name in space.machinetypes:
            mine = [m for m in own if m.machinetype == name]
            figures = alarm[(space.name, name)]
            rows.append(StatusRow(
                space=space.name, machinetype=name,
                starting=sum(m.state.starting for m in mine),
                running=sum(m.state is S.RUNNING and m.delete_requested_at is None
                            for m in mine),
                stopping=sum(m.state in STOPPING or m.delete_requested_at is not None
                             for m in mine),
                processors=sum(m.processors for m in mine),
                actual_share=fractions[name].actual, target_share=fractions[name].target,
                backoff_seconds_left=figures.backoff_seconds_left,
                last_error=_last_error(view.events, space.name, name) or space_error,
                credential_expires_in=figures.credential_expires_in,
                drained=drain_deadline(drains, name) is not None,
                drain_deadline=drain_deadline(drains, name),
                killing=sum(m.kill_requested_at is not None and m.delete_requested_at is None
                            for m in mine),
                foreign_processors=None if room is None else room.foreign_processors,
                no_room="" if room is None else room.note(),
            ))
    return _with_owners(rows + _removed_rows(spaces, view, now), view.leases)


def _removed_rows(spaces: Mapping[str, Space], view: StoreView, now: float) -> list[StatusRow]:
    """One row per machinetype with machines that no configuration has (``engine/removal.py``
    for what becomes of them), with the note saying so."""
    found: dict[tuple[str, str], list[MachineRecord]] = {}
    for m in view.machines:
        conf = spaces.get(m.space)
        if m.state is not S.GONE and (conf is None or m.machinetype not in conf.machinetypes):
            found.setdefault((m.space, m.machinetype), []).append(m)
    rows: list[StatusRow] = []
    for (space, machinetype), mine in sorted(found.items()):
        removals = view.removals.get(space, {})
        removal = removals.get(WHOLE_SPACE) or removals.get(machinetype)
        rows.append(StatusRow(
            space=space, machinetype=machinetype,
            starting=sum(m.state.starting for m in mine),
            running=sum(m.state is S.RUNNING and m.delete_requested_at is None for m in mine),
            stopping=sum(m.state in STOPPING or m.delete_requested_at is not None
                         for m in mine),
            processors=sum(m.processors for m in mine), actual_share=0.0, target_share=0.0,
            backoff_seconds_left=0.0, last_error=_last_error(view.events, space, machinetype),
            removal=_removal_note(space, machinetype, space in spaces, removal)))
    return rows


def _removal_note(space: str, machinetype: str, configured: bool,
                  removal: Removal | None) -> str:
    if removal is None and not configured:
        return ("the space is in no configuration: its machines are left alone (no "
                "credentials to act on them); restore its configuration to manage them")
    if removal is None:
        return ("in no configuration: removed at the engine's next cycle if cloudvac created "
                "them, else orphans deleted once orphan_seconds old")
    what = "space" if removal.machinetype == WHOLE_SPACE else "machinetype"
    if removal.confirmed_at is None:
        target = space if removal.machinetype == WHOLE_SPACE else f"{space} {machinetype}"
        return (f"{what} removed from the configuration: waiting for confirmation (it would "
                f"delete over removal_confirm_fraction of the space); machines keep running "
                f"until `cloudvac confirm-removal {target}` or confirm_removals = true")
    return (f"{what} removed from the configuration: drained, machines deleted at the drain "
            "rate from removal_grace_seconds after the confirmation")


def status_notes(rows: Sequence[StatusRow], now: float) -> list[str]:
    """What the table cannot say in its columns, one line per space or machinetype: drains
    and their deadlines, kills pending, and foreign usage that leaves no room."""
    notes: list[str] = []
    for r in rows:
        if r.drain_deadline is not None:
            left = r.drain_deadline - now
            when = f"in {left:.0f}s" if left > 0 else "now (grace over)"
            notes.append(f"{r.space}/{r.machinetype}: drained: no new machines; pilots told "
                         f"to stop taking jobs; machines still running deleted {when}")
        if r.removal:
            notes.append(f"{r.space}/{r.machinetype}: {r.removal}")
        if r.killing:
            notes.append(f"{r.space}/{r.machinetype}: {r.killing} machine(s) to kill at the "
                         "next cycle")
    for space in dict.fromkeys(r.space for r in rows if r.no_room):
        note = next(r.no_room for r in rows if r.space == space)
        notes.append(f"{space}: {note}")
    return notes


def _last_error(events: Sequence[Event], space: str, machinetype: str | None) -> str:
    for event in events:
        if event.kind != "error" or event.space != space:
            continue
        if (machinetype is None and not event.machinetype) or event.machinetype == machinetype:
            return event.message
    return ""


def status_table(rows: list[StatusRow], title: str = "cloudvac status",
                 width: int = TABLE_WIDTH) -> Table:
    """The rows as the table ``cloudvac status`` and the demo print, one line per row and
    at most ``width`` columns wide: the last error (whole in ``cloudvac events``), then
    long space and machinetype names, are cut with an ellipsis; the token column only
    when a space has a token."""
    tokens = any(r.credential_expires_in is not None for r in rows)
    headings = ["space", "type", "start", "run", "stop", "procs", "share", "backoff",
                *(["token"] if tokens else []), "last error"]
    cells = [_cells(r, tokens) for r in rows]
    widths = _fit([max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headings)],
                  width - (len(headings) - 1))
    table = Table(title=title, caption="share: actual/target", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=0)
    for i, (heading, size) in enumerate(zip(headings, widths, strict=True)):
        numeric = 2 <= i < len(headings) - 1
        table.add_column(heading, width=size, no_wrap=True, overflow="ellipsis",
                         justify="right" if numeric else "left")
    for row in cells:
        table.add_row(*row)
    return table


def _cells(r: StatusRow, tokens: bool) -> list[str]:
    backoff = f"{r.backoff_seconds_left:.0f}s" if r.backoff_seconds_left else "-"
    expires = "-" if r.credential_expires_in is None else \
        f"{r.credential_expires_in / 60:.0f}min"
    return [r.space, r.machinetype, str(r.starting), str(r.running), str(r.stopping),
            str(r.processors), f"{r.actual_share:.0%}/{r.target_share:.0%}", backoff,
            *([expires] if tokens else []), " ".join(r.last_error.split()) or "-"]


def _fit(natural: list[int], room: int) -> list[int]:
    """Column widths within ``room``: the last column (the error) takes what is left, at
    least ``MIN_ERROR``; then the wider of the first two (space, machinetype) gives way,
    one character at a time, down to ``MIN_NAME``."""
    widths = list(natural)
    widths[-1] = max(MIN_ERROR, min(natural[-1], room - sum(widths[:-1])))
    while sum(widths) > room and max(widths[0], widths[1]) > MIN_NAME:
        widths[0 if widths[0] >= widths[1] else 1] -= 1
    return widths


def _with_owners(rows: list[StatusRow], leases: LeaseView | None) -> list[StatusRow]:
    """The rows with the owner of their space's lease (an unexpired one, on the database's
    clock) and that owner's last renewal."""
    if leases is None:
        return rows
    instances = {i.instance: i for i in leases.instances}
    owners = {lease.space: lease.owner for lease in leases.leases
              if lease.owner is not None and lease.expires_at > leases.now}
    found: list[StatusRow] = []
    for row in rows:
        owner = owners.get(row.space)
        who = instances.get(owner) if owner is not None else None
        found.append(row if owner is None else replace(
            row, owner=owner, owner_host="" if who is None else f"{who.hostname} pid {who.pid}",
            owner_renewed_at=None if who is None else who.seen_at))
    return found


def instances_table(leases: LeaseView, width: int = TABLE_WIDTH) -> Table:
    """The instances sharing the store (``cloudvac status``): who, how many spaces each
    owns, and its last renewal, as seconds before the database's now."""
    owned: dict[str, int] = {}
    for lease in leases.leases:
        if lease.owner is not None and lease.expires_at > leases.now:
            owned[lease.owner] = owned.get(lease.owner, 0) + 1
    table = Table(title="instances", box=box.SIMPLE_HEAD, show_edge=False, padding=0,
                  width=width, caption="renewed: seconds ago, on the database's clock")
    for heading in ("instance", "host", "pid", "spaces", "renewed"):
        table.add_column(heading, no_wrap=True, overflow="ellipsis",
                         justify="left" if heading in ("instance", "host") else "right")
    for i in leases.instances:
        table.add_row(i.instance[:12], i.hostname, str(i.pid), str(owned.get(i.instance, 0)),
                      f"{max(0.0, leases.now - i.seen_at):.0f}s")
    return table


def instances_json(leases: LeaseView) -> list[dict[str, Any]]:
    """The instances for ``status --json``: each with its spaces and last renewal."""
    return [{"instance": i.instance, "host": i.hostname, "pid": i.pid,
             "renewed_at": i.seen_at, "renewed_seconds_ago": max(0.0, leases.now - i.seen_at),
             "spaces": sorted(lease.space for lease in leases.leases
                              if lease.owner == i.instance and lease.expires_at > leases.now)}
            for i in leases.instances]
