"""Where one process's objects are written to and read from.

A value is serialized once (objects.serialize_oob). Up to `objects.INLINE_LIMIT` bytes it
is stored inline in Redis (kind "value"); above that it is written straight into the
shared memory of this process's node (kind "shm", data "<size> <node_id>"), and Redis
holds only that. Reading a "shm" object maps this node's copy read-only (zero-copy for
numpy); when this node has none, the bytes are pulled from a holder's object-transfer
server into this node's shared memory and the node is added to the object's locations.

A process with no node agent on its machine (a driver joining a remote cluster) has no
shared memory: its large objects are stored inline, and objects it reads from other
nodes are pulled into its own memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from . import objects
from ._shm import ShmStore
from .exceptions import ObjectLostError, ObjectStoreFullError, RaySystemError
from .objects import KIND_SHM, KIND_VALUE
from .store import Freed, Release, Store

log = logging.getLogger("taskmesh.objects")


def shm_descriptor(size: int, node_id: str) -> bytes:
    return f"{size} {node_id}".encode()


def parse_descriptor(data: bytes) -> tuple[int, str]:
    size, _, node_id = data.decode().partition(" ")
    return int(size), node_id


class ObjectPlane:
    """Encodes values into objects and objects back into values for one process."""

    def __init__(self, store: Store, node_id: str | None):
        self.store = store
        self.node_id = node_id
        self.shm = ShmStore.of_node(node_id)

    # ---- writing ----------------------------------------------------------------------

    def encode(self, object_id: str, value: Any) -> tuple[bytes, bytes, tuple[str, ...]]:
        """(kind, data, refs it contains) of `value` stored as `object_id`: a large
        value is written into this node's shared memory now (each buffer copied once)
        and `data` names it."""
        ser, nested = self.serialize(value)
        return (*self.store_serialized(object_id, ser), nested)

    def serialize(self, value: Any) -> tuple[objects.Serialized, tuple[str, ...]]:
        """The value pickled (buffers not copied yet) and the refs it contains."""
        try:
            with objects.collecting_refs() as found:
                ser = objects.serialize_oob(value)
        except Exception as e:
            raise TypeError(f"Could not serialize the object of type {type(value).__name__}: "
                            f"{type(e).__name__}: {e}") from e
        return ser, tuple(dict.fromkeys(found))

    def store_serialized(self, object_id: str, ser: objects.Serialized) -> tuple[bytes, bytes]:
        """(kind, data): inline bytes, or the value written into shared memory."""
        size = ser.size
        if size <= objects.INLINE_LIMIT or self.shm is None:
            return KIND_VALUE, ser.to_bytes()
        descriptor = shm_descriptor(size, self.node_id)  # type: ignore[arg-type]
        try:
            segment = self.shm.create(object_id, size)
        except FileExistsError:  # a retried task wrote this return before: same value
            return KIND_SHM, descriptor
        except ObjectStoreFullError:
            raise
        except OSError as e:
            raise ObjectStoreFullError(
                f"Could not store object {object_id} ({size} bytes) in this node's shared "
                f"memory ({self.shm.root}): {e}") from e
        with segment:
            ser.write_into(segment.buf)
        return KIND_SHM, descriptor

    # ---- reading ----------------------------------------------------------------------

    def decode(self, object_id: str, kind: bytes, data: bytes) -> Any:
        """The value of a stored object (errors are returned as values, not raised)."""
        if kind != KIND_SHM:
            return objects.deserialize(data)
        return objects.deserialize(self.view(object_id, data))

    def view(self, object_id: str, data: bytes) -> memoryview:
        """The bytes of a shared-memory object: this node's copy, else one pulled here."""
        try:
            size, first = parse_descriptor(data)
        except ValueError:
            raise RaySystemError(f"object {object_id}: malformed location {data[:80]!r}") from None
        if self.shm is not None:
            local = self.shm.open(object_id)
            if local is not None:
                if local.nbytes < size:
                    local.release()
                    raise RaySystemError(f"object {object_id}: the shared-memory segment holds "
                                         f"fewer bytes than the {size} recorded; it is corrupt")
                return local
        return self._pull(object_id, first)

    def _pull(self, object_id: str, first: str) -> memoryview:
        from ._transfer import fetch

        holders = [h for h in self.store.object_holders(object_id, first) if h[0] != self.node_id]
        if not holders:
            raise ObjectLostError(object_id)
        view = fetch([(ip, port) for _, ip, port in holders], object_id, self.shm)
        if self.shm is not None and not self.store.add_location(object_id, self.node_id):
            self.shm.delete([object_id])  # freed while we copied it: the mapping stays valid
        return view

    # ---- freeing ----------------------------------------------------------------------

    def release(self, ops: Sequence[Release]) -> None:
        """Apply hold changes; objects nobody holds any more are freed everywhere (their
        metadata by the script, this node's copies here, other nodes' by an order to
        their agents), and the refs they contained are released in turn."""
        ops = list(ops)
        while ops:
            freed = self.store.release(ops)
            self._drop_copies(freed)
            ops = [Release(ref, f"o:{f.object_id}", -1) for f in freed for ref in f.nested]

    def _drop_copies(self, freed: Sequence[Freed]) -> None:
        by_node: dict[str, list[str]] = {}
        for f in freed:
            for node in f.nodes:
                by_node.setdefault(node, []).append(f.object_id)
        mine = by_node.pop(self.node_id, None) if self.node_id else None
        if mine and self.shm is not None:
            self.shm.delete(mine)
        if by_node:
            self.store.publish_orders({node: "free " + " ".join(oids) for node, oids in by_node.items()})


def sweep_orphans(store: Store, shm: ShmStore, *, min_age_s: float) -> int:
    """Remove this node's copies of objects that no longer exist in Redis (their free
    order was lost, or their writer died before storing the metadata) and partial files
    whose writer is gone. Only files older than `min_age_s` are judged: a fresh one may
    belong to a put whose metadata is being written right now."""
    stale = shm.files_older_than(min_age_s)
    existing = store.existing_objects(stale) if stale else set()
    orphans = [oid for oid in stale if oid not in existing]
    removed = shm.delete(orphans) if orphans else 0
    removed += shm.remove_dead_partials(min_age_s)
    shm.reclaim_held()
    if removed:
        log.info("removed %d orphaned object copies from %s", removed, shm.root)
    return removed
