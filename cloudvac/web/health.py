"""``/healthz`` of the operator's door: is every space still cycling, does any credential
expire soon?  Nagios-usable: the first line of the text starts with ``OK``, ``WARNING`` or
``CRITICAL`` (one line per problem follows), and anything but OK is answered 503.

The engine's metrics say when each space last completed a cycle; they are read by name
from the registry the engine and the web share (``engine/metrics.py`` writes them; the web
layer does not import the engine).  Without the engine in this process (``cloudvac web``
alone) cycles are not checked, and the text says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from prometheus_client import CollectorRegistry

LAST_CYCLE = "cloudvac_last_cycle_timestamp_seconds"
ENGINE_STARTED = "cloudvac_engine_start_timestamp_seconds"
STALL_PERIODS = 3
"""A space with no successful cycle for this many cycle periods is stalled."""
CREDENTIAL_WARN_SECONDS = 86400.0
"""A credential expiring within this is a warning; expired, critical."""


class Level(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class Problem:
    level: Level
    text: str


@dataclass(frozen=True, slots=True)
class Health:
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def level(self) -> Level:
        return max((p.level for p in self.problems), default=Level.OK)

    @property
    def status_code(self) -> int:
        return 200 if self.level is Level.OK else 503

    def text(self) -> str:
        """``LEVEL: summary``, then one line per problem (worst first) and per note."""
        worst = sorted(self.problems, key=lambda p: -p.level)
        summary = worst[0].text if worst else "every space cycling, no credential near expiry"
        more = f" (and {len(worst) - 1} more)" if len(worst) > 1 else ""
        lines = [f"{self.level.name}: {summary}{more}",
                 *(f"{p.level.name}: {p.text}" for p in worst), *self.notes]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Cycling:
    """What the engine's metrics say about cycles (``engine_started`` None: no engine)."""

    engine_started: float | None
    last_cycles: Mapping[str, float]

    @classmethod
    def read(cls, registry: CollectorRegistry, spaces: Iterable[str]) -> Cycling:
        last = {s: registry.get_sample_value(LAST_CYCLE, {"space": s}) for s in spaces}
        return cls(registry.get_sample_value(ENGINE_STARTED),
                   {s: at for s, at in last.items() if at is not None})


def check(spaces: Iterable[str], cycling: Cycling,
          credentials: Mapping[str, Mapping[str, float]], now: float,
          cycle_seconds: float) -> Health:
    """The health of ``spaces`` (the configured ones) at ``now``."""
    names = sorted(spaces)
    problems: list[Problem] = []
    notes: list[str] = []
    if cycling.engine_started is None:
        notes.append("cycles not checked: no engine runs in this process")
    else:
        problems += _stalls(names, cycling, now, cycle_seconds)
    problems += _expiries(names, credentials, now)
    return Health(tuple(problems), tuple(notes))


def _stalls(names: list[str], cycling: Cycling, now: float,
            cycle_seconds: float) -> list[Problem]:
    limit = STALL_PERIODS * cycle_seconds
    found: list[Problem] = []
    assert cycling.engine_started is not None
    for space in names:
        last = cycling.last_cycles.get(space)
        age = now - (last if last is not None else cycling.engine_started)
        if age <= limit:
            continue
        since = "its last successful cycle" if last is not None else "the engine started " \
            "and none since"
        found.append(Problem(Level.CRITICAL, f"space {space}: no successful cycle for "
                             f"{age:.0f}s ({since}; limit {STALL_PERIODS} periods of "
                             f"{cycle_seconds:g}s)"))
    return found


def _expiries(names: list[str], credentials: Mapping[str, Mapping[str, float]],
              now: float) -> list[Problem]:
    found: list[Problem] = []
    for space in names:
        for kind, at in sorted(credentials.get(space, {}).items()):
            left = at - now
            if left <= 0:
                found.append(Problem(Level.CRITICAL, f"space {space}: {kind} credential "
                                     f"expired {-left / 3600:.1f}h ago"))
            elif left < CREDENTIAL_WARN_SECONDS:
                found.append(Problem(Level.WARNING, f"space {space}: {kind} credential "
                                     f"expires in {left / 3600:.1f}h"))
    return found
