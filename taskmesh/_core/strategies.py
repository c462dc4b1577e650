"""Scheduling strategies with Ray's names (`ray.util.scheduling_strategies`).

Pass one as `scheduling_strategy=` to `@remote` / `.options()`, or the strings "DEFAULT"
and "SPREAD". How each is carried out is in `taskmesh/scheduler.py`.
"""

from __future__ import annotations

from typing import Any, Protocol

DEFAULT_SCHEDULING_STRATEGY = "DEFAULT"
SPREAD_SCHEDULING_STRATEGY = "SPREAD"


class PlacementGroupID:
    def __init__(self, hex_id: str):
        self._hex = hex_id

    def hex(self) -> str:
        return self._hex

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._hex})"


class PlacementGroup(Protocol):
    """What a strategy needs of a placement group handle (placement_groups.PlacementGroup)."""

    id: PlacementGroupID



class NodeAffinitySchedulingStrategy:
    """Run on the node `node_id`. With soft=False the task fails with
    TaskUnschedulableError (an actor with ActorUnschedulableError) when that node is dead
    or unknown; with soft=True it runs elsewhere then."""

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        if not isinstance(node_id, str):
            raise TypeError(f"NodeAffinitySchedulingStrategy: node_id must be a hex string, "
                            f"got {type(node_id).__name__}")
        self.node_id = node_id
        self.soft = bool(soft)
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run in a bundle of a placement group (any bundle with room when the index is -1),
    using the bundle's reserved resources. With capture_child_tasks, tasks and actors
    this one creates run in the same group unless they say otherwise."""

    def __init__(self, placement_group: PlacementGroup | None,
                 placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None):
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        pg = self.placement_group.id.hex() if self.placement_group is not None else None
        return (f"PlacementGroupSchedulingStrategy(placement_group={pg}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index})")


class NodeLabelSchedulingStrategy:
    """Accepted for Ray compatibility of imports; node labels are not supported."""

    def __init__(self, hard: dict[str, Any], *, soft: dict[str, Any] | None = None):
        raise NotImplementedError("NodeLabelSchedulingStrategy: node labels are not supported by "
                                  "taskmesh; use custom resources (--resources) instead.")


__all__ = ["DEFAULT_SCHEDULING_STRATEGY", "SPREAD_SCHEDULING_STRATEGY",
           "NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
           "NodeLabelSchedulingStrategy"]
