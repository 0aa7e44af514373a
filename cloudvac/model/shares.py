"""Target shares against what a space holds: the one formula the planner and status use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Share:
    """A machinetype's fraction of its space: what it holds and what it should."""

    actual: float
    target: float


def shares(weights: Mapping[str, float], targets: Mapping[str, float]) -> dict[str, Share]:
    """Normalise per-machinetype ``weights`` (held HS06 or processors) and ``targets``
    (``target_share`` values, which need not sum to 1) to fractions, for every name in
    ``targets``.  Fractions are 0 when their total is 0."""
    held, wanted = sum(weights.values()), sum(targets.values())
    return {name: Share(weights.get(name, 0.0) / held if held else 0.0,
                        target / wanted if wanted else 0.0)
            for name, target in targets.items()}
