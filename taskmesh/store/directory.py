"""The object directory's share of the Store: objects inline or in shared memory, their
locations, who holds them (see release.lua), and their lineage (see reconstruct.lua). A
mixin of `Store` (client.py), kept apart to keep each module readable; every key still
comes from `Keys` (keys.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskmesh._base.ids import owner_of
from taskmesh._base.wire import WireError, node_port
from taskmesh.store.core import StoreCore
from taskmesh.store.records import (
    GONE_FENCE,
    KIND_OWNER_GONE,
    Freed,
    Release,
    _fields,
    _opt_bytes,
    _text,
    translate_errors,
    warn_once,
)

# Pseudo-objects a worker appends to a task's results: the task's queue entry, stored with
# its shared-memory results (lineage), or marking a run that re-makes lost ones (rebuild).
KIND_LINEAGE = b"lineage"
KIND_REBUILD = b"rebuild"
LINEAGE_KINDS = (KIND_LINEAGE, KIND_REBUILD)


class ObjectMethods(StoreCore):
    """Object metadata, locations and holds (mixed into Store)."""

    @translate_errors
    def put_object(self, object_id: str, kind: bytes, data: bytes, size: int,
                   nested: Sequence[str] = ()) -> None:
        """Store an object held by its owner; the refs it contains are held by it."""
        mapping = _fields({"kind": kind, "data": data, "size": size, "held": 1})
        if not nested and not self.should_wait():
            self.redis.hset(self.keys.obj(object_id), mapping=mapping)
            return
        self.hold_nested({object_id: nested} if nested else {}, durable=True,
                         extra=lambda pipe: pipe.hset(self.keys.obj(object_id), mapping=mapping))

    @translate_errors
    def store_kept(self, values: Sequence[tuple[str, bytes, bytes, bool]]) -> None:
        """Store small values their owner kept until now (see wire.Notice.kept), whose
        refs are leaving its process: (object_id, kind, data, held by the owner)."""
        def queue_commands(pipe: Any) -> None:
            for object_id, kind, data, held in values:
                owner_hold = {"held": 1} if held else {}
                pipe.hset(self.keys.obj(object_id),
                          mapping={"kind": kind, "data": data, "size": len(data), **owner_hold})

        self.run_scripts(queue_commands, (), durable=True)

    @translate_errors
    def hold_nested(self, containers: Mapping[str, Sequence[str]],
                    extra: Callable[[Any], None] | None = None, *, durable: bool = False) -> None:
        """Record the refs each container object holds, and hold them (one round trip);
        `durable` as in `_run_scripts`."""
        ops = [Release(ref, f"o:{container}", 1)
               for container, refs in containers.items() for ref in refs]

        def queue_commands(pipe: Any) -> None:
            for container, refs in containers.items():
                pipe.sadd(self.keys.obj_nested(container), *refs)
            self._queue_release(pipe, ops)
            if extra is not None:
                extra(pipe)

        self.run_scripts(queue_commands, (self.scripts["release"],), durable=durable)

    @translate_errors
    def get_objects(self, object_ids: Sequence[str],
                    reader: str | None = None) -> list[tuple[bytes, bytes] | None]:
        """(kind, data) for each object, None where it does not exist (yet). An object
        owned by another process than `reader` (its owner tag) that ended (owners_gone)
        reads (KIND_OWNER_GONE, b""), whatever is stored: Ray's OwnerDiedError. One
        round trip: a HEXISTS per other owner rides along."""
        owners = sorted({owner_of(oid) for oid in object_ids} - {reader}) if reader else []
        pipe = self.redis.pipeline(transaction=False)
        for oid in object_ids:
            pipe.hmget(self.keys.obj(oid), "kind", "data")
        for tag in owners:
            pipe.hexists(self.keys.fence(tag), GONE_FENCE)
        replies = pipe.execute()
        gone = {tag for tag, dead in zip(owners, replies[len(object_ids):], strict=True) if dead}
        out: list[tuple[bytes, bytes] | None] = []
        for oid, (kind, data) in zip(object_ids, replies, strict=False):
            if gone and owner_of(oid) in gone:
                out.append((KIND_OWNER_GONE, b""))
            else:
                out.append(None if kind is None else (kind, data))
        return out

    @translate_errors
    def objects_exist(self, object_ids: Sequence[str]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        for oid in object_ids:
            pipe.exists(self.keys.obj(oid))
        return [bool(x) for x in pipe.execute()]

    def _queue_release(self, pipe: Any, ops: Sequence[Release]) -> list[list[Release]]:
        """Queue one release.lua call per owner (an owner's keys share a slot), plus the
        borrowers' index updates; returns the ops of each script call, in order."""
        by_owner: dict[str, list[Release]] = {}
        for op in ops:
            by_owner.setdefault(owner_of(op.object_id), []).append(op)
        groups = list(by_owner.values())
        for group in groups:
            keys, args = [], []
            for op in group:
                oid = op.object_id
                keys += [self.keys.obj(oid), self.keys.obj_loc(oid), self.keys.obj_refs(oid),
                         self.keys.obj_nested(oid)]
                args += [op.holder, op.delta]
            pipe.evalsha(self.scripts["release"].sha, len(keys), *keys, *args)
        for op in ops:
            if op.holder.startswith("p:"):
                index = self.keys.borrows(op.holder[2:])
                (pipe.sadd if op.delta > 0 else pipe.srem)(index, op.object_id)
        return groups

    @translate_errors
    def release(self, ops: Sequence[Release]) -> list[Freed]:
        """Apply hold changes in one round trip; returns the objects that were freed."""
        groups: list[list[Release]] = []

        def queue_commands(pipe: Any) -> None:
            groups[:] = self._queue_release(pipe, ops)

        replies = self.run_scripts(queue_commands, (self.scripts["release"],))
        freed = []
        # The borrowers' index updates follow the scripts' replies: not read.
        for group, reply in zip(groups, replies, strict=False):
            for op, result in zip(group, reply, strict=True):
                if result:
                    nodes, nested, *actor = result
                    freed.append(Freed(op.object_id, tuple(_text(n) for n in nodes),
                                       tuple(_text(n) for n in nested),
                                       _text(actor[0]) if actor else None))
        return freed

    @translate_errors
    def process_holds(self, tag: str) -> list[Release]:
        """What a process that died was holding: its borrowed refs and its own objects.
        Its borrows index is kept until the caller has released them and forgets the
        process (remove_node_process, driver_gone): a caller that dies in between leaves
        the index to the next one, and releasing twice changes nothing."""
        borrowed = [_text(o) for o in self.redis.smembers(self.keys.borrows(tag))]
        owned = {_text(k).split(":obj:")[1].partition(":")[0]
                 for k in self.redis.scan_iter(match=self.keys.owned_objects(tag), count=1000)}
        return ([Release(oid, f"p:{tag}", 0) for oid in borrowed]
                + [Release(oid, "owner", -1) for oid in sorted(owned)])

    @translate_errors
    def publish_orders(self, orders: dict[str, str]) -> None:
        """Send each node agent one order on its channel (pipelined)."""
        pipe = self.redis.pipeline(transaction=False)
        for node_id, order in orders.items():
            pipe.publish(self.keys.chan_node(node_id), order)
        pipe.execute()

    @translate_errors
    def object_holders(self, object_id: str, first: str) -> list[tuple[str, str, int]]:
        """(node_id, ip, object port) of the live nodes holding a copy: `first` (the
        node that made it) and then the others of its location set."""
        nodes = [first] + sorted(_text(n) for n in self.redis.smembers(self.keys.obj_loc(object_id))
                                 if _text(n) != first)
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hmget(self.keys.node(node), "ip", "obj_port", "state")
        out = []
        for node, (ip, port, state) in zip(nodes, pipe.execute(), strict=True):
            if not (ip and port and state == b"ALIVE"):
                continue
            try:
                out.append((node, _text(ip), node_port(port)))
            except (WireError, UnicodeDecodeError) as e:  # written by hand: not a holder to ask
                warn_once(f"node {node} is not asked for objects: its hash's {e}")
        return out

    @translate_errors
    def add_location(self, object_id: str, node_id: str) -> bool:
        """Record a new copy; False when the object was freed meanwhile (the copy must go)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.exists(self.keys.obj(object_id))
        pipe.sadd(self.keys.obj_loc(object_id), node_id)
        exists, _ = pipe.execute()
        if not exists:
            self.redis.unlink(self.keys.obj_loc(object_id))
        return bool(exists)

    @translate_errors
    def object_lineage(self, object_id: str) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(kind, data, lineage) of an object; all None when it does not exist, kind and
        data None while it is being made again."""
        kind, data, lineage = self.redis.hmget(self.keys.obj(object_id), "kind", "data", "lineage")
        return _opt_bytes(kind), _opt_bytes(data), _opt_bytes(lineage)

    @translate_errors
    def reconstruct(self, object_id: str, seen: bytes, *, shape: str | None = None,
                    fields: dict[str, Any] | None = None, error: bytes | None = None,
                    siblings: Sequence[str] = ()) -> int:
        """Every copy of `object_id` (data `seen`) is gone: queue its task again with
        `fields` on the queue of `shape` (its sibling return objects lost with it are
        made again too), or store `error` as its value. Exactly one of the readers that
        saw `seen` acts (reconstruct.lua): 1 when this call did, 0 when the object had
        changed, -1 when it was freed."""
        obj = self.keys.obj(object_id)
        keys = [obj, self.keys.obj_loc(object_id), self.keys.queue(shape) if shape else obj]
        for sibling in siblings:
            keys += [self.keys.obj(sibling), self.keys.obj_loc(sibling)]
        if fields is not None:
            args: list[Any] = [seen, "resubmit", *(x for kv in fields.items() for x in kv)]
        else:
            args = [seen, "fail", error]
        return int(self.scripts["reconstruct"](keys=keys, args=args))

    @translate_errors
    def process_alive(self, tag: str, dead_nodes: Sequence[str] = ()) -> bool:
        """Whether the process `tag` looks alive: a driver still heartbeating, or a worker
        of a live node (not one of `dead_nodes`). For failure paths only (reads every
        driver and live node)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(self.keys.drivers(), 0, -1)
        pipe.zrange(self.keys.nodes_alive(), 0, -1)
        drivers, alive = pipe.execute()
        if any(_text(m).partition(" ")[0] == tag for m in drivers):
            return True
        nodes = [n for n in map(_text, alive) if n not in dead_nodes]
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.sismember(self.keys.node_procs(node), tag)
        return any(pipe.execute()) if nodes else False

    @translate_errors
    def existing_objects(self, object_ids: Sequence[str]) -> set[str]:
        return {oid for oid, ok in zip(object_ids, self.objects_exist(object_ids), strict=True) if ok}

    @translate_errors
    def object_summaries(self) -> list[dict[str, Any]]:
        """Every object's id, kind, size, owner tag, nodes and holders (SCAN: for
        debugging commands, not for hot paths)."""
        keys = [k for k in self.redis.scan_iter(match=self.keys.all_objects(), count=1000)
                if b":" not in k.rpartition(b":obj:")[2]]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            oid = _text(key).rpartition(":")[2]
            pipe.hmget(key, "kind", "size", "data", "held")
            pipe.smembers(self.keys.obj_loc(oid))
            pipe.hgetall(self.keys.obj_refs(oid))
        replies = pipe.execute()
        out = []
        for key, (kind, size, data, held), copies, refs in zip(
                keys, replies[::3], replies[1::3], replies[2::3], strict=True):
            if kind is None:
                continue
            oid = _text(key).rpartition(":")[2]
            nodes = [_text(data).partition(" ")[2]] if kind == b"shm" and data else []
            holders = (["owner"] if held else []) + sorted(_text(h) for h in refs)
            out.append({"object_id": oid, "owner": owner_of(oid), "kind": _text(kind),
                        "size": int(size or 0), "nodes": nodes + sorted(_text(c) for c in copies),
                        "holders": holders})
        return out
