"""Scheduling strategies with Ray's names (`ray.util.scheduling_strategies`); the
classes live in `taskmesh._core.strategies`."""

from taskmesh._core.strategies import (
    DEFAULT_SCHEDULING_STRATEGY,
    SPREAD_SCHEDULING_STRATEGY,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "DEFAULT_SCHEDULING_STRATEGY", "SPREAD_SCHEDULING_STRATEGY", "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy", "PlacementGroupSchedulingStrategy",
]
