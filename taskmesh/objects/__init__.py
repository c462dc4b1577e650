"""Objects: refs and their ids, serialization (ref.py), the node's shared-memory store
(shm.py) and its default size (capacity.py), the transfer between nodes (transfer.py)
and the object plane that ties them to the store's object directory (plane.py). It
imports the store and the leaves, never the core, actors or workers."""

from taskmesh._base.ids import new_owner_tag, new_task_id, object_id
from taskmesh.objects.ref import (
    INLINE_ARG_LIMIT,
    KIND_ERROR,
    KIND_SHM,
    KIND_VALUE,
    MAGIC,
    ObjectRef,
    RefTracker,
    Serialized,
    collecting_refs,
    deserialize,
    plain_call_pickle,
    plain_pickle,
    serialize,
    serialize_definition,
    serialize_oob,
    serialize_plain,
    set_tracker,
)

__all__ = [
    "INLINE_ARG_LIMIT", "KIND_ERROR", "KIND_SHM", "KIND_VALUE", "MAGIC", "ObjectRef",
    "RefTracker", "Serialized", "collecting_refs", "deserialize", "new_owner_tag", "new_task_id",
    "object_id", "serialize", "serialize_definition", "serialize_oob", "serialize_plain",
    "plain_call_pickle", "plain_pickle", "set_tracker",
]
