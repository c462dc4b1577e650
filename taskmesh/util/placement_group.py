"""Placement groups with Ray's API (`ray.util.placement_group`): argument checks and
calls into `taskmesh._core.placement_groups`, where the handle and the logic live."""

from __future__ import annotations

import os
from typing import Any

from taskmesh import scheduler
from taskmesh._base import deprecation
from taskmesh._core.placement import remove, try_place
from taskmesh._core.placement_groups import PlacementGroup, _store
from taskmesh._core.strategies import PlacementGroupID

# Ray's topology label of a node itself: its strategy is the group's `strategy`.
NODE_ID_LABEL_KEY = "ray.io/node-id"


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
        if "object_store_memory" in bundle:  # as Ray: it reserves nothing, so it is dropped
            deprecation.warn_user(
                "Setting 'object_store_memory' for bundles is deprecated since it doesn't actually "
                "reserve the required object store memory. Objects spill to disk when shared memory "
                "is full (on by default): rely on that instead.")
        out.append({k: float(v) for k, v in bundle.items() if v and k != "object_store_memory"})
    return out


def _check_topology_strategy(topology_strategy: Any) -> None:
    """Ray's checks of `topology_strategy`. Node labels other than the node's id are not
    kept by taskmesh, so a group asking to pack within one is refused."""
    if not isinstance(topology_strategy, dict):
        raise ValueError(f"`topology_strategy` must be a dict, got {type(topology_strategy).__name__}.")
    if len(topology_strategy) > 2:
        raise ValueError(f"`topology_strategy` must contain 0, 1, or 2 entries: `{NODE_ID_LABEL_KEY}` "
                         f"plus an optional topology label. Got {len(topology_strategy)} entries.")
    for key, value in topology_strategy.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"`topology_strategy` keys must be non-empty strings, got {key!r}.")
        if value not in scheduler.PG_STRATEGIES:
            raise ValueError(f"Invalid topology strategy {value!r} for label {key!r}. Supported "
                             f"strategies are: {set(scheduler.PG_STRATEGIES)}.")
        if key != NODE_ID_LABEL_KEY and value != "STRICT_PACK":
            raise ValueError(f"Topology strategy {value!r} for label {key!r} is not supported yet; "
                             "only 'STRICT_PACK' is supported for topology labels other than "
                             f"`{NODE_ID_LABEL_KEY}` for now.")
    labels = [key for key in topology_strategy if key != NODE_ID_LABEL_KEY]
    if len(labels) > 1:
        raise ValueError("`topology_strategy` currently supports at most one topology label other "
                         f"than `{NODE_ID_LABEL_KEY}`. Got {labels}.")
    if labels:
        raise NotImplementedError(f"placement_group: topology_strategy on the node label {labels[0]!r} "
                                  "is not supported by taskmesh (nodes carry no labels).")


def _check_label_selectors(bundles: list, selectors: Any) -> None:
    """Ray's checks of `bundle_label_selector`; an empty selector (any node) is all
    taskmesh honours, as its nodes carry no labels."""
    if len(bundles) != len(selectors):
        raise ValueError(f"Invalid bundle label selector {selectors}. The length of "
                         "`bundle_label_selector` should equal the length of `bundles`.")
    for selector in selectors:
        if (not isinstance(selector, dict) or not all(isinstance(k, str) for k in selector)
                or not all(isinstance(v, str) for v in selector.values())):
            raise ValueError("Bundle label selector must be a list of string dictionary label "
                             'selectors. For example: `[{ray.io/market_type": "spot"}, '
                             '{"ray.io/accelerator-type": "A100"}]`.')
    if any(selectors):
        raise NotImplementedError("placement_group: bundle_label_selector (node labels) is not "
                                  "supported by taskmesh.")


def _check_soft_target(node_id: Any, strategy: str) -> None:
    """`_soft_target_node_id`, Ray's "soft hint" of where to place a STRICT_PACK group:
    checked as Ray does, then not acted on (the bundles may be placed anywhere, as a hint
    allows)."""
    if not node_id:
        return
    if strategy != "STRICT_PACK":
        raise ValueError(f"_soft_target_node_id currently only works with STRICT_PACK but got {strategy}")
    try:
        valid = isinstance(node_id, str) and int(node_id, 16) >= 0 and set(node_id.lower()) != {"f"}
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"Invalid hex ID of _soft_target_node_id, got {node_id}")


def placement_group(bundles: list[dict[str, float]], strategy: str | None = None, name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: str | None = None,
                    bundle_label_selector: list[dict[str, str]] | None = None,
                    topology_strategy: dict[str, str] | None = None) -> PlacementGroup:
    """Create a placement group (asynchronously placed: see `ready()` and `wait()`).
    Ray 2.60's arguments and checks; `_soft_target_node_id` is a hint taskmesh does not
    act on, and node labels (`bundle_label_selector`, a `topology_strategy` label other
    than the node's id) are refused with NotImplementedError unless empty."""
    from taskmesh._core.context import get_runtime

    if topology_strategy is not None and strategy is not None:
        raise ValueError("`strategy` and `topology_strategy` cannot both be specified. Pass "
                         f"node-level packing via `topology_strategy['{NODE_ID_LABEL_KEY}']`.")
    if strategy is not None and strategy not in scheduler.PG_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy}. Supported strategies "
                         f"are: {list(scheduler.PG_STRATEGIES)}.")
    if topology_strategy is not None:
        _check_topology_strategy(topology_strategy)
        strategy = topology_strategy.get(NODE_ID_LABEL_KEY, "PACK")
    strategy = strategy or "PACK"
    _check_soft_target(_soft_target_node_id, strategy)
    specs = validate_bundles(bundles)
    if bundle_label_selector is not None:
        if not isinstance(bundle_label_selector, list):
            raise ValueError("Placement group bundle_label_selector must be a list, got "
                             f"{type(bundle_label_selector)}.")
        if bundle_label_selector:
            _check_label_selectors(bundles, bundle_label_selector)
    if lifetime not in (None, "detached"):
        raise ValueError("Placement group `lifetime` argument must be either `None` or "
                         f"'detached'. Got {lifetime}.")
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
