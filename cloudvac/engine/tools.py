"""What every space's cycle shares, built once by whoever assembles the engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cloudvac.config.models import Machinetype, Space
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.naming import machine_name
from cloudvac.store import Store

UserDataRenderer = Callable[[Space, Machinetype, str], str]
"""``(space, machinetype, machine name) -> user_data``; raises ``context.RenderError``."""


def generic_user_data(space: Space, mt: Machinetype, name: str) -> str:
    """A minimal cloud-config naming the machine (tests and benchmarks)."""
    return f"#cloud-config\n# cloudvac machine {name} ({space.name}/{mt.name})\n"


@dataclass(frozen=True, slots=True)
class CycleTools:
    store: Store
    metrics: EngineMetrics
    render: UserDataRenderer = generic_user_data
    clock: Callable[[], float] = time.time
    """Wall clock for every time written (records, events); simulate injects its own."""
    namer: Callable[[str, str], str] = machine_name
    monotonic: Callable[[], float] = time.monotonic
    """For every delay, deadline and re-read interval: a wall-clock step must never
    freeze or hurry a space (simulate injects its virtual clock here too)."""
