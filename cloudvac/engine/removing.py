"""What a cycle does with the planner's removal decisions (``removal.py``): record the
rows, warn once per cycle for each removal waiting for confirmation, and count the waits
(``cloudvac_space_wait{cause="removals"}``: removals waiting in the space)."""

from __future__ import annotations

import asyncio
import logging

from cloudvac.config.models import Space
from cloudvac.engine.removal import RemovalPlan, wait_message
from cloudvac.engine.tools import CycleTools
from cloudvac.model.records import WHOLE_SPACE

log = logging.getLogger("cloudvac.engine.removal")


async def record_removals(tools: CycleTools, space: Space, plan: RemovalPlan) -> None:
    if plan.rows or plan.cancelled:
        await asyncio.to_thread(tools.store.apply_removals, space.name, plan.rows,
                                plan.cancelled)
    for wait in plan.waiting:
        machinetype = "-" if wait.machinetype == WHOLE_SPACE else wait.machinetype
        log.warning("space=%s machinetype=%s machine=- removal waits for confirmation: %s",
                    space.name, machinetype, wait_message(space, wait))
    tools.metrics.space_waits.labels(space.name, "removals").set(len(plan.waiting))
