"""The scheduler's share of the Store: node and bundle queues, placement groups and their
reservations (reserve_pg.lua / remove_pg.lua). A mixin of `Store` (client.py); every key comes
from `Keys` (keys.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from taskmesh._base import queues
from taskmesh.store.core import StoreCore
from taskmesh.store.records import (
    GROUP,
    Leased,
    _fields,
    _flat,
    _opt_text,
    _text,
    parse_entries,
    translate_errors,
)


class ScheduleMethods(StoreCore):
    """Pinned queues and placement groups (mixed into Store)."""

    # ---- node and bundle queues ---------------------------------------------------------

    @translate_errors
    def register_pinned(self, names: Iterable[str]) -> None:
        """Create the queues (and their consumer group) and list them for the monitor."""
        names = list(names)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.xgroup_create(self.keys.queue(name), GROUP, id="0", mkstream=True)
        pipe.sadd(self.keys.pinned(), *names)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    @translate_errors
    def pinned_queues(self) -> list[str]:
        return sorted(_text(n) for n in self.redis.smembers(self.keys.pinned()))

    @translate_errors
    def queued_entries(self, names: Iterable[str]) -> list[Leased]:
        """Every entry in these queues, delivered or not."""
        streams = [self.keys.queue(name) for name in names]
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xrange(stream, "-", "+")
        return [Leased(stream, entry_id, fields)
                for stream, reply in zip(streams, pipe.execute(), strict=True)
                for entry_id, fields in reply]

    @translate_errors
    def take_entries(self, name: str, consumer: str, count: int) -> list[Leased]:
        """Read undelivered entries of a queue as `consumer` (the monitor draining it)."""
        # redis-py types XREADGROUP's group name `str` alone (bytes is sent the same way).
        reply = self.redis.xreadgroup(GROUP, consumer, {self.keys.queue(name): ">"},  # type: ignore[arg-type]
                                      count=count)
        return parse_entries(reply)

    @translate_errors
    def queue_empty(self, name: str) -> bool:
        return int(self.redis.xlen(self.keys.queue(name))) == 0

    @translate_errors
    def node_state(self, node_id: str) -> str | None:
        return _opt_text(self.redis.hget(self.keys.node(node_id), "state"))

    @translate_errors
    def drop_pinned(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            pipe = self.redis.pipeline(transaction=True)
            pipe.unlink(*(self.keys.queue(n) for n in names))
            pipe.srem(self.keys.pinned(), *names)
            pipe.execute()

    # ---- placement groups ---------------------------------------------------------------

    @translate_errors
    def create_pg(self, pg_id: str, *, name: str, namespace: str, strategy: str,
                  bundles: list[dict[str, float]], job_id: str, detached: bool) -> None:
        if name and not self.redis.hsetnx(self.keys.named_pg(namespace), name, pg_id):
            raise ValueError(f"Failed to create placement group: the name {name!r} is already "
                             f"taken in namespace {namespace!r}.")
        self.register_pinned(queues.bundle_queues(pg_id, len(bundles)))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.pg(pg_id), mapping=_flat({
            "pg_id": pg_id, "name": name, "namespace": namespace, "strategy": strategy,
            "bundles": json.dumps(bundles), "bundle_count": len(bundles), "state": "PENDING",
            "bundle_nodes": "{}", "job_id": job_id, "detached": int(detached)}))
        pipe.sadd(self.keys.pgs(), pg_id)
        pipe.sadd(self.keys.pgs_pending(), pg_id)
        if not detached and job_id:
            pipe.sadd(self.keys.job_pgs(job_id), pg_id)
        pipe.execute()

    @translate_errors
    def pg_info(self, pg_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.keys.pg(pg_id))
        return _pg_fields(raw) if raw else None

    @translate_errors
    def pg_state(self, pg_id: str) -> str | None:
        return _opt_text(self.redis.hget(self.keys.pg(pg_id), "state"))

    @translate_errors
    def pg_infos(self) -> list[dict[str, Any]]:
        ids = sorted(_text(i) for i in self.redis.smembers(self.keys.pgs()))
        pipe = self.redis.pipeline(transaction=False)
        for pg_id in ids:
            pipe.hgetall(self.keys.pg(pg_id))
        return [_pg_fields(raw) for raw in pipe.execute() if raw]

    @translate_errors
    def named_pg(self, namespace: str, name: str) -> str | None:
        return _opt_text(self.redis.hget(self.keys.named_pg(namespace), name))

    @translate_errors
    def pending_pgs(self) -> list[str]:
        return sorted(_text(i) for i in self.redis.smembers(self.keys.pgs_pending()))

    @translate_errors
    def job_pgs(self, job_id: str) -> list[str]:
        return [_text(i) for i in self.redis.smembers(self.keys.job_pgs(job_id))]

    @translate_errors
    def reserve_pg(self, pg_id: str, plan: Mapping[int, tuple[str, Mapping[str, float]]]) -> int:
        """Reserve bundles (index -> (node, resources)) atomically; see reserve_pg.lua."""
        nodes = sorted({node for node, _ in plan.values()})
        index = {node: 4 + 2 * i for i, node in enumerate(nodes)}
        wire = [[index[node], node, i, dict(res)] for i, (node, res) in sorted(plan.items())]
        keys = [self.keys.pg(pg_id), self.keys.nodes_alive(), self.keys.pgs_pending()]
        for n in nodes:
            keys += [self.keys.node(n), self.keys.node_reserved(n)]
        return int(self.scripts["reserve_pg"](
            keys=keys, args=[pg_id, json.dumps(wire), self.keys.chan_node("")]))

    @translate_errors
    def remove_pg(self, pg_id: str) -> bool:
        """Give the group's reservations back and mark it REMOVED; False if it was already."""
        info = self.pg_info(pg_id)
        if info is None:
            return False
        nodes = sorted(set(info["bundle_nodes"].values()))
        keys = [self.keys.pg(pg_id), self.keys.pgs_pending(), *(self.keys.node_reserved(n) for n in nodes)]
        removed = bool(self.scripts["remove_pg"](keys=keys, args=[pg_id, self.keys.chan_node(""), *nodes]))
        if removed and info["name"]:
            self.redis.hdel(self.keys.named_pg(info["namespace"]), info["name"])
        return removed

    @translate_errors
    def forget_pg(self, pg_id: str, job_id: str) -> None:
        """Delete a removed group's keys (when its job ends)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.unlink(self.keys.pg(pg_id))
        pipe.srem(self.keys.pgs(), pg_id)
        pipe.srem(self.keys.job_pgs(job_id), pg_id)
        pipe.execute()

    @translate_errors
    def unplace_bundles(self, pg_id: str, node_id: str) -> bool:
        """Bundles of a group that were on a dead node wait to be placed again."""
        info = self.pg_info(pg_id)
        if info is None or info["state"] not in ("CREATED", "RESCHEDULING"):
            return False
        kept = {i: n for i, n in info["bundle_nodes"].items() if n != node_id}
        if len(kept) == len(info["bundle_nodes"]):
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.pg(pg_id), mapping=_fields({
            "bundle_nodes": json.dumps({str(i): n for i, n in kept.items()}), "state": "RESCHEDULING"}))
        pipe.sadd(self.keys.pgs_pending(), pg_id)
        pipe.execute()
        return True

    @translate_errors
    def node_reservations(self, node_id: str) -> dict[str, dict[str, float]]:
        """"<pg>:<bundle>" -> resources reserved on the node."""
        return {_text(k): json.loads(v) for k, v in
                self.redis.hgetall(self.keys.node_reserved(node_id)).items()}

    @translate_errors
    def reservations(self, node_ids: list[str]) -> dict[str, dict[str, dict[str, float]]]:
        pipe = self.redis.pipeline(transaction=False)
        for n in node_ids:
            pipe.hgetall(self.keys.node_reserved(n))
        return {n: {_text(k): json.loads(v) for k, v in raw.items()}
                for n, raw in zip(node_ids, pipe.execute(), strict=True)}


def _pg_fields(raw: Mapping[bytes, bytes] | Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    info: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    info["bundles"] = json.loads(info.get("bundles", "[]"))
    info["bundle_nodes"] = {int(i): n for i, n in json.loads(info.get("bundle_nodes") or "{}").items()}
    info["detached"] = info.get("detached") == "1"
    return info
