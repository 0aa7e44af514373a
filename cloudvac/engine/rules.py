"""Deletion rules, as data: the first rule that matches a machine decides its deletion.

Each rule is a predicate over a ``RuleContext`` and the message recorded when the VM gave
none.  Reading the table top to bottom is reading the lifecycle policy.  Machines already
being deleted (cloud ``deleting``, or our delete still within ``delete_retry_seconds``) are
filtered out before the table is consulted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.records import MachineRecord
from cloudvac.engine.states import (
    DRAINED,
    EXCEEDED_WALLCLOCK,
    FAILED_TO_START,
    HEARTBEAT_LOST,
    PASSED_SHUTDOWNTIME,
    MachineState,
    ShutdownMessage,
)

#: Wall-clock limit for machines whose machinetype was removed from the configuration.
ORPHAN_WALLCLOCK_SECONDS = 86400

S = MachineState


@dataclass(frozen=True, slots=True)
class RuleContext:
    space: Space
    mt: Machinetype | None
    record: MachineRecord
    now: float
    drained: frozenset[str]

    @property
    def age(self) -> float:
        return self.now - (self.record.created_at or self.now)

    @property
    def ran(self) -> float:
        started = self.record.started_at
        return self.now - started if started is not None else 0.0

    def draining(self) -> bool:
        names = self.drained
        return "*" in names or self.record.machinetype in names

    def past_shutdown_time(self) -> bool:
        times = [t for t in (self.space.shutdown_time, self.mt.shutdown_time if self.mt else None)
                 if t is not None]
        return any(self.now >= t for t in times)

    def starting_too_long(self) -> bool:
        if self.record.state is not S.STARTING:
            return False
        limit = self.space.starting_seconds(self.mt) if self.mt else self.space.max_starting_seconds
        return self.age > limit

    def heartbeat_stale(self) -> bool:
        mt = self.mt
        if mt is None or not mt.heartbeat_check or self.record.state is not S.RUNNING:
            return False
        limit = float(mt.heartbeat_seconds or 0)
        if self.ran <= mt.fizzle_seconds or self.ran <= limit:
            return False
        beat = self.record.heartbeat_at
        return beat is None or self.now - beat > limit


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    applies: Callable[[RuleContext], bool]
    message: Callable[[RuleContext], ShutdownMessage | None]


def _none(_: RuleContext) -> ShutdownMessage | None:
    return None


def _fixed(message: ShutdownMessage) -> Callable[[RuleContext], ShutdownMessage | None]:
    return lambda _: message


def _failed_message(ctx: RuleContext) -> ShutdownMessage:
    fault = f": {ctx.record.fault}" if ctx.record.fault else ""
    return ShutdownMessage(700, f"Failed to boot{fault}"[:200])


RULES: tuple[Rule, ...] = (
    Rule("stopped", lambda c: c.record.state is S.STOPPED, _none),
    Rule("failed", lambda c: c.record.state is S.FAILED, _failed_message),
    Rule("drained", lambda c: c.draining(), _fixed(DRAINED)),
    Rule("shutdown_time", lambda c: c.past_shutdown_time(), _fixed(PASSED_SHUTDOWNTIME)),
    Rule("starting_too_long", lambda c: c.starting_too_long(), _fixed(FAILED_TO_START)),
    Rule("wallclock",
         lambda c: c.record.state is S.RUNNING and c.ran > (
             c.mt.max_wallclock_seconds if c.mt else ORPHAN_WALLCLOCK_SECONDS),
         _fixed(EXCEEDED_WALLCLOCK)),
    Rule("heartbeat", lambda c: c.heartbeat_stale(), _fixed(HEARTBEAT_LOST)),
    Rule("unknown_state",
         lambda c: c.record.state is S.UNKNOWN and c.age > c.space.max_starting_seconds,
         lambda c: ShutdownMessage(700, "Unexpected cloud state")),
)


def deletion_rule(ctx: RuleContext) -> Rule | None:
    """The first rule deleting this machine, or None to keep it."""
    for rule in RULES:
        if rule.applies(ctx):
            return rule
    return None
