"""Placement groups with Ray's API (`ray.util.placement_group`): argument checks and
calls into `taskmesh._core.placement_groups`, where the handle and the logic live."""

from __future__ import annotations

import os
from typing import Any

from taskmesh import scheduler
from taskmesh._core.placement import remove, try_place
from taskmesh._core.placement_groups import PlacementGroup, _store
from taskmesh._core.strategies import PlacementGroupID


def validate_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list, got {type(bundles)}.")
    if not bundles:
        raise ValueError('Bundles must be a non-empty list of resource dictionaries. For example: '
                         '`[{"CPU": 1.0}, {"GPU": 1.0}]`. Got empty list instead.')
    out = []
    for bundle in bundles:
        if (not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in bundle.values())):
            raise ValueError('Bundles must be a non-empty list of resource dictionaries. For '
                             'example: `[{"CPU": 1.0}, {"GPU": 1.0}]`.')
        if not bundle or all(v == 0 for v in bundle.values()):
            raise ValueError("Bundles cannot be an empty dictionary or resources with only 0 "
                             f"values. Bundles: {bundles}")
        negative = {k: v for k, v in bundle.items() if v < 0}
        if negative:
            raise ValueError(f"Bundle resources must be non-negative, got {negative} in "
                             f"bundles {bundles}")
        out.append({k: float(v) for k, v in bundle.items() if v})
    return out


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: str | None = None,
                    bundle_label_selector: Any = None) -> PlacementGroup:
    """Create a placement group (asynchronously placed: see `ready()` and `wait()`)."""
    from taskmesh._core.context import get_runtime

    if strategy not in scheduler.PG_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy}. Supported strategies "
                         f"are: {list(scheduler.PG_STRATEGIES)}.")
    if lifetime not in (None, "detached"):
        raise ValueError("Placement group `lifetime` argument must be either `None` or "
                         f"'detached'. Got {lifetime}.")
    if bundle_label_selector is not None:
        raise NotImplementedError("placement_group: bundle_label_selector (node labels) is not "
                                  "supported by taskmesh.")
    specs = validate_bundles(bundles)
    runtime = get_runtime(auto_init=True)
    pg_id = os.urandom(9).hex()
    runtime.store.create_pg(pg_id, name=name or "", namespace=runtime.namespace or "",
                            strategy=strategy, bundles=specs, job_id=runtime.job_id or "",
                            detached=lifetime == "detached")
    pg = PlacementGroup(PlacementGroupID(pg_id), specs)
    if try_place(runtime.store, pg_id) == "infeasible":
        runtime.router.warn_pg_infeasible(pg_id, specs, strategy)
    return pg


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's resources back. Tasks and actors still waiting for its bundles
    fail (TaskPlacementGroupRemoved / ActorPlacementGroupRemoved); actors in it are
    killed; tasks already running in it finish."""
    from taskmesh._core.context import get_runtime

    runtime = get_runtime()
    remove(runtime.store, placement_group.id.hex())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The named group of the current namespace."""
    from taskmesh._core.context import get_runtime

    if not placement_group_name:
        raise ValueError("Please supply a non-empty value to get_placement_group")
    runtime = get_runtime()
    pg_id = runtime.store.named_pg(runtime.namespace or "", placement_group_name)
    if pg_id is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return PlacementGroup(PlacementGroupID(pg_id))


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """One group's table (or every group's, by id), shaped like Ray's."""
    store = _store()
    if placement_group is not None:
        info = store.pg_info(placement_group.id.hex())
        return _table(info) if info else {}
    return {info["pg_id"]: _table(info) for info in store.pg_infos()}


def _table(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "placement_group_id": info["pg_id"], "name": info["name"],
        "bundles": {i: b for i, b in enumerate(info["bundles"])},
        "bundles_to_node_id": dict(sorted(info["bundle_nodes"].items())),
        "strategy": info["strategy"], "state": info["state"],
        "stats": {"scheduling_state": {"PENDING": "NO_RESOURCES", "RESCHEDULING": "NO_RESOURCES",
                                       "CREATED": "FINISHED", "REMOVED": "REMOVED"}.get(info["state"])},
    }


def get_current_placement_group() -> PlacementGroup | None:
    """The group the current task or actor runs in (None in a driver or outside groups)."""
    from taskmesh._core.context import get_runtime

    pg = get_runtime().context.pg
    return PlacementGroup(PlacementGroupID(pg[0])) if pg else None


__all__ = ["PlacementGroup", "get_current_placement_group", "get_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]
