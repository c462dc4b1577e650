"""The placement group handle (picklable into tasks), as Ray's
`ray.util.placement_group.PlacementGroup`. Placing and removing groups is in
placement.py."""

from __future__ import annotations

import time
from typing import Any

from taskmesh._core.context import get_runtime
from taskmesh._core.remote_function import RemoteFunction
from taskmesh._core.strategies import PlacementGroupID, PlacementGroupSchedulingStrategy
from taskmesh.objects import ObjectRef


class PlacementGroup:
    """A handle to a placement group (picklable into tasks)."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict[str, float]] | None = None):
        self.id = id
        self.bundle_cache = bundle_cache

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        if self.bundle_cache is None:
            info = _store().pg_info(self.id.hex())
            self.bundle_cache = info["bundles"] if info else []
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that becomes ready (with this group as its value) once the group
        is placed: a task with no resources run in the group's first bundle."""
        return _ready_task().options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self, placement_group_bundle_index=0)).remote(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True once the group is placed; False when timeout_seconds passed first."""
        deadline = time.monotonic() + timeout_seconds
        store = _store()
        while True:
            if store.pg_state(self.id.hex()) == "CREATED":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple:
        return (PlacementGroup, (self.id, self.bundle_cache))

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()})"


_READY: Any = None


def _ready_task() -> Any:
    global _READY
    if _READY is None:
        def placement_group_ready(pg: PlacementGroup) -> PlacementGroup:
            return pg

        _READY = RemoteFunction(placement_group_ready, {"num_cpus": 0, "max_retries": -1})
    return _READY


def _store() -> Any:
    return get_runtime(auto_init=True).store


# Reprs and pickles name the public path (Ray's), not the module that defines it.
PlacementGroup.__module__ = "taskmesh.util.placement_group"
