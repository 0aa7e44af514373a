"""The event log as an operator reads it: one line per stored event, at most 80 columns.

``event_line`` turns an ``Event`` (``Store.events``) into ``TIME SPACE/MACHINETYPE/MACHINE
WHAT``, where WHAT says what happened in words: ``created: m1.large, 4 processors``,
``deleted: heartbeat lost``, ``300 Nothing to do (no work) → backoff 600s``.  Shutdown codes
carry their HSF-TN-2016-04 meaning.  ``cloudvac events``, the demo's live stream and
``cloudvac logs MACHINE`` print these lines.

``newer`` and ``follow`` read the events that arrived since a ``Cursor`` (a time, and the
events at exactly that time already seen) from a reader of the newest events, such as
``lambda n: store.events(space, n)``; ``follow`` polls with an injected sleep, a bounded
number of times.

Pure apart from the reader and the sleep it is given: the engine writes the messages
parsed here (``engine/lifecycle.py``, ``engine/reconcile.py``, ``engine/act.py``), and
``tests/unit/test_events.py`` feeds it events made by those very functions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from cloudvac.model.naming import name_prefix
from cloudvac.model.records import Event
from cloudvac.model.states import ShutdownClass, ShutdownMessage

WIDTH = 80
"""The widest line ``event_line`` returns by default."""
ELLIPSIS = "…"
ARROW = "→"

#: What each hundred of HSF-TN-2016-04 shutdown codes means, in a few words.
CODE_MEANINGS: dict[ShutdownClass, str] = {
    ShutdownClass.REQUESTED: "stop asked by the host",
    ShutdownClass.SUCCESS: "work done",
    ShutdownClass.NO_WORK: "no work",
    ShutdownClass.BANNED: "banned",
    ShutdownClass.ENVIRONMENT: "site/VM problem",
    ShutdownClass.GRID: "grid problem",
    ShutdownClass.AGENT: "pilot error",
}

#: cloudvac's deletion rules (``engine/rules.py``) as an operator says them.
DELETE_REASONS: dict[str, str] = {
    "stopped": "stopped",
    "failed": "failed to boot",
    "killed": "killed by operator",
    "drained": "drained",
    "starting_too_long": "never started",
    "wallclock": "wallclock limit",
    "heartbeat": "heartbeat lost",
    "unknown_state": "unexpected cloud state",
}

_CODE = re.compile(r"([1-7][0-9][0-9])(?:\s+(.*))?")
_CREATED = re.compile(r"created with flavor (\S+) \((\d+) processors?\)")
_DELETING = re.compile(r"deleting \(([^)]*)\) in state (\w+)(?:: (.*))?")
_ABORT_CODE = re.compile(r"shutdown code (.*): backoff (\d+)s")
_FIZZLED = re.compile(r"fizzled after (\d+)s.*: backoff (\d+)s")
_LISTED = re.compile(r"first listed \((created|adopted from its tags)\), state (\w+)")
_STATE = re.compile(r"(\w+) -> (\w+)(?:: (.*))?")
#: cloudvac's own messages that end with a detail worth showing (``engine/rules.py``).
_DETAIL = {"failed": re.compile(r"700 Failed to boot: (.+)"),
           "killed": re.compile(r"100 Killed by operator: (.+)")}
_BLANKS = re.compile(r"\s+")


def code_text(message: ShutdownMessage | str) -> str:
    """``300 Nothing to do (no work)``: a shutdown message with the meaning of its code
    (text that is not ``NNN text`` is returned as it is)."""
    match = _CODE.fullmatch(str(message).strip())
    if match is None:
        return str(message)
    code, text = int(match.group(1)), (match.group(2) or "").strip()
    meaning = CODE_MEANINGS[ShutdownClass(code // 100 * 100)]
    if text.lower() == meaning.lower():
        return f"{code} {text}"
    return f"{code} {text} ({meaning})" if text else f"{code} ({meaning})"


def where(event: Event) -> str:
    """``space/machinetype/machine``; a cloudvac machine name is shortened to its random
    suffix (the space and machinetype are already on the line)."""
    parts = [event.space]
    if event.machinetype or event.machine:
        parts.append(event.machinetype or "-")
    if event.machine:
        prefix = f"{name_prefix(event.space)}{event.machinetype}-"
        short = event.machine.removeprefix(prefix)
        parts.append(short if short != event.machine and short else event.machine)
    return "/".join(parts)


def what(event: Event, shutdown: ShutdownMessage | None = None) -> str:
    """What happened, in words.  ``shutdown``: the machine's shutdown message when known
    (the VM's own, from its record), shown with a deletion of a machine that stopped."""
    message = _BLANKS.sub(" ", event.message).strip()
    describe = _DESCRIBE.get(event.kind)
    described = describe(message, shutdown) if describe is not None else None
    if described is not None:
        return described
    return f"{event.kind}: {message}" if message else event.kind


def _created(message: str, _: ShutdownMessage | None) -> str | None:
    match = _CREATED.fullmatch(message)
    if match is None:
        return None
    processors = int(match.group(2))
    return f"created: {match.group(1)}, {processors} processor{'s' * (processors != 1)}"


def _deleted(message: str, shutdown: ShutdownMessage | None) -> str | None:
    match = _DELETING.fullmatch(message)
    if match is None:
        return None
    reason, _state, ours = match.groups()
    label = DELETE_REASONS.get(reason, reason)
    if shutdown is not None and reason in ("stopped", "failed") and str(shutdown) != ours:
        return f"deleted after {code_text(shutdown)}"  # what the VM itself reported
    detail = _DETAIL.get(reason)
    if detail is not None and ours:  # cloudvac's message carries a detail: the fault, a reason
        found = detail.fullmatch(ours)
        return f"deleted: {label}" + (f": {found.group(1)}" if found else "")
    if reason not in DELETE_REASONS and ours:
        return f"deleted: {label}, {code_text(ours)}"
    return f"deleted: {label}"


def _abort(message: str, _: ShutdownMessage | None) -> str | None:
    match = _ABORT_CODE.fullmatch(message)
    if match is not None:
        return f"{code_text(match.group(1))} {ARROW} backoff {match.group(2)}s"
    match = _FIZZLED.fullmatch(message)
    if match is not None:
        return f"fizzled after {match.group(1)}s {ARROW} backoff {match.group(2)}s"
    return f"backoff: {message}"


def _listed(message: str, _: ShutdownMessage | None) -> str | None:
    match = _LISTED.fullmatch(message)
    if match is None:
        return None
    how, state = match.groups()
    return f"{'listed' if how == 'created' else 'adopted'}: {state}"


def _state(message: str, _: ShutdownMessage | None) -> str | None:
    match = _STATE.fullmatch(message)
    if match is None:
        return None
    old, new, fault = match.groups()
    return f"{old} {ARROW} {new}" + (f": {fault}" if fault else "")


_DESCRIBE: dict[str, Callable[[str, ShutdownMessage | None], str | None]] = {
    "create": _created,
    "delete": _deleted,
    "abort": _abort,
    "listed": _listed,
    "state": _state,
    "missing": lambda _m, _s: "missing from the listing",
    "gone": lambda _m, _s: "gone",
    "intent-expired": lambda _m, _s: "create never listed: forgotten",
    "error": lambda m, _s: f"error: {m}",
}


def event_line(event: Event, shutdown: ShutdownMessage | None = None, *,
               width: int = WIDTH, tz: tzinfo | None = None,
               time_format: str = "%H:%M:%S") -> str:
    """One line of at most ``width`` characters: time (local, or in ``tz``), where, what;
    cut with an ellipsis when longer."""
    stamp = datetime.fromtimestamp(event.at, tz).strftime(time_format)
    line = f"{stamp} {where(event)} {what(event, shutdown)}"
    return line if len(line) <= width else line[: width - len(ELLIPSIS)] + ELLIPSIS


def matches(event: Event, space: str | None = None, machinetype: str | None = None) -> bool:
    return (space is None or event.space == space) and \
        (machinetype is None or event.machinetype == machinetype)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a reader of the event log is: every event before ``at`` was read, and of those
    at exactly ``at``, the ones in ``seen``."""

    at: float = float("-inf")
    seen: tuple[Event, ...] = ()

    @classmethod
    def after(cls, events: Iterable[Event], start: Cursor | None = None) -> Cursor:
        """The cursor once ``events`` (in any order) were read too."""
        cursor = start or cls()
        for event in events:
            if event.at > cursor.at:
                cursor = cls(event.at, (event,))
            elif event.at == cursor.at:
                cursor = cls(cursor.at, (*cursor.seen, event))
        return cursor


Reader = Callable[[int], Sequence[Event]]
"""Returns at most N of the newest events, newest first (``Store.events``)."""


def newer(read: Reader, cursor: Cursor, first: int = 100,
          most: int = 10_000) -> tuple[list[Event], Cursor]:
    """The events after ``cursor``, oldest first, and the cursor after them.  Asks ``read``
    for ``first`` events, doubling up to ``most`` while all it returned are new (older new
    ones may be behind them); past ``most`` new events, the oldest are skipped."""
    limit = first
    while True:
        batch = list(read(limit))
        if len(batch) < limit or limit >= most or batch[-1].at < cursor.at:
            break
        limit = min(most, limit * 2)
    seen = Counter(cursor.seen)
    fresh: list[Event] = []
    for event in reversed(batch):  # oldest first
        if event.at < cursor.at:
            continue
        if event.at == cursor.at and seen[event] > 0:
            seen[event] -= 1
            continue
        fresh.append(event)
    return fresh, Cursor.after(fresh, cursor)


def newest(read: Reader, count: int, keep: Callable[[Event], bool] = lambda _: True,
           most: int = 10_000) -> tuple[list[Event], Cursor]:
    """The ``count`` newest events that ``keep`` accepts, oldest first (asking ``read`` for
    more, doubling up to ``most``, while too few were accepted), and the cursor after every
    event read, accepted or not: ``follow`` from it prints only what comes next."""
    limit = max(count, 100)
    while True:
        batch = list(read(limit))
        chosen = [event for event in batch if keep(event)][:count]
        if len(chosen) >= count or len(batch) < limit or limit >= most:
            return chosen[::-1], Cursor.after(batch)
        limit = min(most, limit * 2)


def follow(read: Reader, cursor: Cursor, sleep: Callable[[float], None],
           poll_seconds: float = 1.0, polls: int | None = None) -> Iterator[Event]:
    """Every event after ``cursor`` as it arrives, oldest first: reads, then sleeps
    ``poll_seconds``, ``polls`` times (None: until the caller stops iterating)."""
    done = 0
    while polls is None or done < polls:
        fresh, cursor = newer(read, cursor)
        yield from fresh
        done += 1
        if polls is None or done < polls:
            sleep(poll_seconds)


def lines(events: Iterable[Event], shutdown_of: Callable[[Event], ShutdownMessage | None],
          width: int = WIDTH, tz: tzinfo | None = None,
          time_format: str = "%H:%M:%S") -> Iterator[str]:
    """``event_line`` of each event; ``shutdown_of`` is asked only for deletions."""
    for event in events:
        shutdown = shutdown_of(event) if event.kind == "delete" else None
        yield event_line(event, shutdown, width=width, tz=tz, time_format=time_format)
