"""Placement groups with Ray's API (`ray.util.placement_group`).

A group reserves bundles of resources on nodes, all or none (reserve_pg.lua checks every
node of a plan against what is already reserved there, in one step). The creator tries to
place it at once; a group that does not fit waits in `tm:pgs:pending`, and the failure
monitor tries again every second, so it is placed as soon as room appears. Tasks and
actors scheduled into a bundle wait in the bundle's queue until then.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import scheduler
from ..objects import ObjectRef


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
        from .scheduling_strategies import PlacementGroupSchedulingStrategy

        return _ready_task().options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self, placement_group_bundle_index=0)).remote(self)  # type: ignore[union-attr]

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
        from ..remote_function import RemoteFunction

        def placement_group_ready(pg: PlacementGroup) -> PlacementGroup:
            return pg

        _READY = RemoteFunction(placement_group_ready, {"num_cpus": 0, "max_retries": -1})
    return _READY


def _store() -> Any:
    from ..api import get_runtime

    return get_runtime(auto_init=True).store


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
    from ..api import get_runtime

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


def try_place(store: Any, pg_id: str) -> str:
    """One attempt to place a waiting group: "placed", "waiting" (no room now) or
    "infeasible" (no set of live nodes could ever hold it), or "gone"."""
    info = store.pg_info(pg_id)
    if info is None or info["state"] not in ("PENDING", "RESCHEDULING"):
        return "gone"
    nodes = {n["node_id"]: n for n in store.nodes() if n["alive"]}
    free = {}
    for node_id, bundles in store.reservations(sorted(nodes)).items():
        reserved: dict[str, float] = {}
        for res in bundles.values():
            reserved = scheduler.add(reserved, res)
        free[node_id] = scheduler.subtract(nodes[node_id]["resources_total"], reserved)
    fixed = {i: node for i, node in info["bundle_nodes"].items() if node in nodes}
    todo = {i: b for i, b in enumerate(info["bundles"]) if i not in fixed}
    plan = scheduler.plan_bundles(todo, info["strategy"], free, fixed)
    if plan is None:
        totals = {n: node["resources_total"] for n, node in nodes.items()}
        ever = scheduler.plan_bundles(todo, info["strategy"], totals, fixed)
        return "waiting" if ever is not None else "infeasible"
    if store.reserve_pg(pg_id, {i: (node, todo[i]) for i, node in plan.items()}) == 1:
        return "placed"
    return "waiting"


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's resources back. Tasks and actors still waiting for its bundles
    fail (TaskPlacementGroupRemoved / ActorPlacementGroupRemoved); actors in it are
    killed; tasks already running in it finish."""
    from ..api import get_runtime

    runtime = get_runtime()
    _remove(runtime.store, placement_group.id.hex())


def _remove(store: Any, pg_id: str) -> None:
    from .. import _failure

    info = store.pg_info(pg_id)
    if info is None:
        return
    store.remove_pg(pg_id)
    queues = [f"pg:{pg_id}:{i}" for i in range(len(info["bundles"]))] + [f"pg:{pg_id}:any"]
    _failure.fail_queued(store, queues, "placement group was removed")
    store.drop_pinned(queues)


def end_job_groups(store: Any, job_id: str) -> None:
    """The job ended: its placement groups go with it, except detached ones (as Ray)."""
    for pg_id in store.job_pgs(job_id):
        _remove(store, pg_id)
        store.forget_pg(pg_id, job_id)


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The named group of the current namespace."""
    from ..api import get_runtime

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
    from ..api import get_runtime

    pg = get_runtime().context.pg
    return PlacementGroup(PlacementGroupID(pg[0])) if pg else None


__all__ = ["PlacementGroup", "get_current_placement_group", "get_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]
