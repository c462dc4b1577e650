"""Where one process's objects are written to and read from.

A value is serialized once (objects.serialize_oob). Up to `TASKMESH_INLINE_LIMIT` bytes it
is stored inline in Redis (kind "value"); above that it is written straight into the
shared memory of this process's node (kind "shm", data "<size> <node_id>"), and Redis
holds only that. Reading a "shm" object maps this node's copy read-only (zero-copy for
numpy); when this node has none, the bytes are pulled from a holder's object-transfer
server into this node's shared memory and the node is added to the object's locations.

A process with no node agent on its machine (a driver joining a remote cluster) has no
shared memory: its large objects are stored inline, and objects it reads from other
nodes are pulled into its own memory.

Lineage. A task's result stored in shared memory keeps the task's queue entry in its hash
(field `lineage`, see `QueueEntry.to_lineage` in _base/wire.py, written by the completion
script at no extra command), and holds the task's top-level ref arguments, like refs it
contains. A reader that finds every copy of
such an object gone (its nodes dead, or none answering) queues the task once more
(reconstruct.lua: once, however many readers noticed) and reads again: the value comes
back when the new run completes. The new run's worker, resolving an argument that is lost
too, makes it again the same way, so a chain is rebuilt from its first lost link. A run
again counts as an attempt against the task's max_retries (as in Ray); when none is left,
or the object was made by `put` (no task to run again), the object's value becomes the
ObjectLostError subclass Ray raises there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from taskmesh._base import config, ids, queues
from taskmesh._base.wire import QueueEntry, TaskSpec, WireError
from taskmesh.exceptions import (
    ObjectFetchTimedOutError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    ObjectStoreFullError,
    OwnerDiedError,
    RaySystemError,
)
from taskmesh.objects import ref as objects
from taskmesh.objects.ref import KIND_SHM, KIND_VALUE
from taskmesh.objects.shm import ShmStore
from taskmesh.store import Freed, Release, Store

log = logging.getLogger("taskmesh.objects")


def shm_descriptor(size: int, node_id: str) -> bytes:
    return f"{size} {node_id}".encode()


def parse_descriptor(data: bytes) -> tuple[int, str]:
    size, _, node_id = data.decode().partition(" ")
    return int(size), node_id


class ObjectRebuilding(ObjectLostError):
    """Raised by `ObjectPlane.decode` when the object's copies were lost and it is being
    made again, or already was: the caller reads the object from Redis again (`get`
    waits for the new value)."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What to do with a lost object: queue `entry` (its task's next attempt, marked
    rebuild) on the queue `shape`, re-making `siblings` with it; or store `error` as its
    value."""

    shape: str | None = None
    entry: QueueEntry | None = None
    siblings: tuple[str, ...] = ()
    error: BaseException | None = None


def plan_recovery(object_id: str, lineage: bytes | None, owner_alive: bool) -> Recovery:
    """How a lost object comes back (Ray's rules): its task runs again while its attempts
    are not used up; a put object cannot (ObjectLostError, OwnerDiedError once its owner
    is gone), nor a result without lineage (an actor method's) or with a lineage that
    does not decode."""
    if lineage is None:
        if ids.index_of(object_id) == 0:  # made by put
            return Recovery(error=ObjectLostError(object_id) if owner_alive else OwnerDiedError(object_id))
        return Recovery(error=ObjectReconstructionFailedLineageEvictedError(object_id))
    try:
        entry = QueueEntry.from_lineage(lineage)
    except WireError as e:
        log.warning("object %s: its lineage does not decode (%s)", object_id, e)
        return Recovery(error=ObjectReconstructionFailedLineageEvictedError(object_id))
    spec: TaskSpec = entry.spec  # type: ignore[assignment]
    if spec.max_retries == 0:
        return Recovery(error=ObjectReconstructionFailedError(
            object_id, "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"))
    if not spec.can_retry(entry.attempt):
        return Recovery(error=ObjectReconstructionFailedMaxAttemptsExceededError(object_id))
    again = dataclasses.replace(entry, attempt=entry.attempt + 1, rebuild=True)
    siblings = tuple(oid for oid in (ids.object_id(entry.task, i + 1) for i in range(spec.num_returns))
                     if oid != object_id)
    return Recovery(queues.shape_name(spec.resources), again, siblings)


class ObjectPlane:
    """Encodes values into objects and objects back into values for one process."""

    def __init__(self, store: Store, node_id: str | None, owner: str | None = None):
        self.store = store
        self.node_id = node_id
        self.owner = owner  # this process's owner tag (it is alive)
        self.shm = ShmStore.of_node(node_id)
        self.inline_limit = config.INLINE_LIMIT.get()  # read once: used for every object

    def _shm_node(self) -> str:
        """This node's id, for code that runs only when `self.shm` is set (a store
        exists only for a node)."""
        assert self.node_id is not None, "a shared-memory store without a node"
        return self.node_id

    # ---- writing ----------------------------------------------------------------------

    def encode(self, object_id: str, value: Any) -> tuple[bytes, bytes, tuple[str, ...]]:
        """(kind, data, refs it contains) of `value` stored as `object_id`: a large
        value is written into this node's shared memory now (each buffer copied once)
        and `data` names it."""
        plain = objects.plain_pickle(value)
        if plain is not None and len(plain) <= self.inline_limit:  # most results
            return KIND_VALUE, plain, ()
        # A large plain value (a long str or bytes) is not pickled again.
        ser, nested = (objects.Serialized(plain, ()), ()) if plain is not None else self.serialize(value)
        return (*self.store_serialized(object_id, ser), nested)

    def serialize(self, value: Any) -> tuple[objects.Serialized, tuple[str, ...]]:
        """The value pickled (buffers not copied yet) and the refs it contains."""
        plain = objects.serialize_plain(value)
        if plain is not None:
            return plain, ()
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
        if size <= self.inline_limit or self.shm is None:
            return KIND_VALUE, ser.to_bytes()
        descriptor = shm_descriptor(size, self._shm_node())
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
        return self._pull(object_id, first, data)

    def _pull(self, object_id: str, first: str, data: bytes) -> memoryview:
        from taskmesh.objects.transfer import fetch
        from taskmesh.security import transfer_secret

        holders = [h for h in self.store.object_holders(object_id, first) if h[0] != self.node_id]
        if not holders:
            self._lost(object_id, data)
        try:
            view = fetch([(ip, port) for _, ip, port in holders], object_id, self.shm,
                         secret=transfer_secret(self.store))
        except ObjectFetchTimedOutError:
            raise
        except ObjectLostError:  # no holder could supply it
            self._lost(object_id, data)
        if self.shm is not None and not self.store.add_location(object_id, self._shm_node()):
            self.shm.delete([object_id])  # freed while we copied it: the mapping stays valid
        return view

    def _lost(self, object_id: str, data: bytes) -> NoReturn:
        """Every copy of the object is gone: have it made again, or its error recorded
        (see the module docstring). Always raises: ObjectRebuilding (read it again), or
        ObjectLostError when it was freed meanwhile."""
        kind, current, lineage = self.store.object_lineage(object_id)
        if kind is None and current is None and lineage is None:
            raise ObjectLostError(object_id)  # freed
        if current != data:
            raise ObjectRebuilding(object_id)  # another reader acted already
        owner_alive = True
        if lineage is None and ids.index_of(object_id) == 0:
            tag, nodes = ids.owner_of(object_id), [parse_descriptor(data)[1]]
            owner_alive = tag == self.owner or self.store.process_alive(tag, nodes)
        plan = plan_recovery(object_id, lineage, owner_alive)
        if plan.entry is not None:
            done = self.store.reconstruct(object_id, data, shape=plan.shape,
                                          fields=plan.entry.to_fields(), siblings=plan.siblings)
            if done == 1:
                log.warning("object %s lost with its node: running task %s again (attempt %d)",
                            object_id, plan.entry.task, plan.entry.attempt + 1)
        else:
            done = self.store.reconstruct(object_id, data, error=objects.serialize(plan.error))
            if done == 1:
                log.warning("object %s lost with its node: %s", object_id, type(plan.error).__name__)
        if done == -1:
            raise ObjectLostError(object_id)
        raise ObjectRebuilding(object_id)

    # ---- freeing ----------------------------------------------------------------------

    def release(self, ops: Sequence[Release]) -> list[str]:
        """Apply hold changes; objects nobody holds any more are freed everywhere (their
        metadata by the script, this node's copies here, other nodes' by an order to
        their agents), and the refs they contained are released in turn. Returns the
        actors whose tokens were freed (the caller ends them: lifecycle.release)."""
        ops = list(ops)
        actors: list[str] = []
        while ops:
            freed = self.store.release(ops)
            self._drop_copies(freed)
            actors += [f.actor_id for f in freed if f.actor_id]
            ops = [Release(ref, f"o:{f.object_id}", -1) for f in freed for ref in f.nested]
        return actors

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
