"""Placing, removing and ending placement groups: the logic behind the handle, used by
the creator, the failure monitor and a job's end. It takes a Store and needs no runtime.

A group reserves bundles of resources on nodes, all or none (reserve_pg.lua checks every
node of a plan against what is already reserved there, in one step). The creator tries to
place it at once; a group that does not fit waits in `tm:pgs:pending`, and the failure
monitor tries again every second, so it is placed as soon as room appears. Tasks and
actors scheduled into a bundle wait in the bundle's queue until then.
"""

from __future__ import annotations

from typing import Any

from taskmesh import scheduler
from taskmesh._base import queues
from taskmesh._core import failure as _failure


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


def remove(store: Any, pg_id: str) -> None:
    info = store.pg_info(pg_id)
    if info is None:
        return
    store.remove_pg(pg_id)
    names = queues.bundle_queues(pg_id, len(info["bundles"]))
    _failure.fail_queued(store, names, "placement group was removed")
    store.drop_pinned(names)


def end_job_groups(store: Any, job_id: str) -> None:
    """The job ended: its placement groups go with it, except detached ones (as Ray)."""
    for pg_id in store.job_pgs(job_id):
        remove(store, pg_id)
        store.forget_pg(pg_id, job_id)
