"""Utilities with Ray's names (`ray.util`)."""

from __future__ import annotations

from typing import Any

from taskmesh._core.placement_groups import PlacementGroup
from taskmesh.util.actor_pool import ActorPool
from taskmesh.util.check_serialize import inspect_serializability
from taskmesh.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from taskmesh.util.progress_bar import progress
from taskmesh.util.serialization import deregister_serializer, register_serializer


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of the live named actors in the current namespace; with all_namespaces,
    dicts {"name", "namespace"} for every namespace (as Ray returns them)."""
    from taskmesh._core.context import get_runtime

    runtime = get_runtime()
    if all_namespaces:
        return [{"name": name, "namespace": ns} for ns, name in runtime.store.named_actors(None)]
    return [name for _, name in runtime.store.named_actors(runtime.namespace or "")]


__all__ = ["ActorPool", "PlacementGroup", "deregister_serializer", "get_current_placement_group",
           "get_placement_group", "inspect_serializability", "list_named_actors", "placement_group",
           "placement_group_table", "progress", "register_serializer", "remove_placement_group"]
