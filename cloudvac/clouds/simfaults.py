"""Fault injection for the sim cloud process (``POST /_sim/faults``), for chaos tests.

Each API request (everything but the admin endpoints) draws, from its own seeded stream,
in this order: a delay of ``delay_seconds`` (probability ``delay``), then at most one of a
401 (``unauthorized``), a 500 (``error_500``), a 503 (``error_503``) and, for a create
only, a 403 quota refusal (``quota``) or a *lost* create (``lost_create``: the server is
created but the answer is a 504, as when a proxy gives up: the caller cannot know).
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["unauthorized", "error_500", "error_503", "quota", "lost_create"]


class FaultPlan(BaseModel):
    """Probabilities (0-1) of each fault per request, and the seed of their draws."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unauthorized: float = Field(0.0, ge=0, le=1)
    error_500: float = Field(0.0, ge=0, le=1)
    error_503: float = Field(0.0, ge=0, le=1)
    quota: float = Field(0.0, ge=0, le=1)
    lost_create: float = Field(0.0, ge=0, le=1)
    delay: float = Field(0.0, ge=0, le=1)
    delay_seconds: float = Field(0.0, ge=0, le=600)
    seed: int | None = None


@dataclass(eq=False)
class Faults:
    """The plan in force, its random stream and what it injected."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    injected: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)

    def replace(self, plan: FaultPlan) -> None:
        self.plan, self.rng = plan, random.Random(plan.seed)

    def delay(self) -> float:
        """Seconds to wait before answering (0: none)."""
        plan = self.plan
        if plan.delay and self.rng.random() < plan.delay:
            self.injected["delay"] += 1
            return plan.delay_seconds
        return 0.0

    def outcome(self, create: bool) -> Outcome | None:
        """The fault of this request, if any: one draw per kind the request can suffer,
        whichever comes out, so the stream stays aligned with the requests."""
        plan = self.plan
        draws: list[tuple[Outcome, float]] = [
            ("unauthorized", plan.unauthorized), ("error_500", plan.error_500),
            ("error_503", plan.error_503)]
        if create:
            draws += [("quota", plan.quota), ("lost_create", plan.lost_create)]
        chosen: Outcome | None = None
        for outcome, probability in draws:
            if self.rng.random() < probability and chosen is None:
                chosen = outcome
        if chosen is not None:
            self.injected[chosen] += 1
        return chosen
