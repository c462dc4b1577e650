"""The actors' share of the Store: actor hashes and call streams, named actors, a node's
actors and worker processes (recovered or released when it dies). A mixin of
`Store` (client.py), kept apart to keep each module readable; every key comes from `Keys` (keys.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import redis

from taskmesh._base.ids import actor_token
from taskmesh.store.core import StoreCore
from taskmesh.store.records import (
    CALL_GROUP,
    Completion,
    Leased,
    _bytes,
    _flat,
    _now_ms,
    _opt_bytes,
    _opt_text,
    _text,
    parse_entries,
    scan_hashes,
    translate_errors,
)


class ActorMethods(StoreCore):
    """Actors, named actors and per-node actor/process sets (mixed into Store)."""

    @translate_errors
    def create_actor(
        self, actor_id: str, *, job_id: str, namespace: str, name: str, get_if_exists: bool,
        fields: dict[str, Any], token: bool = False,
    ) -> tuple[str, str]:
        """Register an actor; ("created"|"existing"|"taken", actor id). With `token`, a
        created actor's token object (`ids.actor_token`) is written too, held by its
        creator: the actor ends when nothing holds it any more (create_actor.lua)."""
        keys = [self.keys.actor(actor_id), self.keys.actor_calls(actor_id),
                self.keys.job_actors(job_id), self.keys.named(namespace), self.keys.actors(),
                self.keys.obj(actor_token(actor_id))]
        args = [actor_id, name, "1" if get_if_exists else "0", "1" if token else "0"]
        args += [x for kv in fields.items() for x in kv]
        status, found = self.scripts["create_actor"](keys=keys, args=args)
        return status.decode(), found.decode()

    @translate_errors
    def actor_info(self, actor_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.actor(actor_id))
        return {_text(k): _text(v, errors="replace") for k, v in raw.items() if k != b"spec"}

    @translate_errors
    def actors(self) -> list[dict[str, str]]:
        """Every actor's hash (without its spec), for `taskmesh list actors`."""
        out = []
        for key, raw in scan_hashes(self.redis, self.keys.actor("*"), b":calls"):
            info = {_text(k): _text(v, errors="replace") for k, v in raw.items()
                    if k not in (b"spec", b"methods") and not k.startswith(b"retry:")}
            info["actor_id"] = key.decode().rsplit("{", 1)[-1].rstrip("}")
            out.append(info)
        return out

    @translate_errors
    def actor_methods(self, actor_id: str) -> bytes:
        return _bytes(self.redis.hget(self.keys.actor(actor_id), "methods") or msgpack.packb({}))

    @translate_errors
    def actor_spec(self, actor_id: str) -> bytes | None:
        return _opt_bytes(self.redis.hget(self.keys.actor(actor_id), "spec"))

    @translate_errors
    def set_actor_fields(self, actor_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(self.keys.actor(actor_id), mapping=_flat(fields))

    @translate_errors
    def actor_alive(self, actor_id: str, node_id: str, pid: int) -> bool:
        """Record the actor ALIVE on a node (and in that node's actor set, first, so the
        monitor finds it if the node dies); False when it was killed meanwhile (DEAD, or
        no_restart set): this incarnation must not serve."""

        def queue_commands(pipe: Any) -> None:
            pipe.sadd(self.keys.node_actors(node_id), actor_id)
            pipe.evalsha(self.scripts["actor_alive"].sha, 1, self.keys.actor(actor_id),
                         node_id, pid, _now_ms())

        return self.run_scripts(queue_commands, (self.scripts["actor_alive"],))[-1] == 1

    @translate_errors
    def killed_actors(self, actor_ids: Sequence[str]) -> list[str]:
        """Those of the actors that were killed with no_restart (one pipelined read): an
        agent checks its actors now and then, in case a kill order did not reach it."""
        pipe = self.redis.pipeline(transaction=False)
        for actor_id in actor_ids:
            pipe.hget(self.keys.actor(actor_id), "no_restart")
        return [a for a, flag in zip(actor_ids, pipe.execute(), strict=True) if flag == b"1"]

    @translate_errors
    def lost_nodes(self) -> list[str]:
        return [_text(n) for n in self.redis.smembers(self.keys.nodes_lost())]

    @translate_errors
    def actors_on_node(self, node_id: str) -> list[tuple[str, dict[str, str]]]:
        """(actor id, info) of the actors recorded on a node."""
        ids = [_text(a) for a in self.redis.smembers(self.keys.node_actors(node_id))]
        pipe = self.redis.pipeline(transaction=False)
        for actor_id in ids:
            pipe.hmget(self.keys.actor(actor_id), "state", "node_id")
        out = []
        for actor_id, (state, node) in zip(ids, pipe.execute(), strict=True):
            out.append((actor_id, {"state": _text(state or b""), "node_id": _text(node or b"")}))
        return out

    @translate_errors
    def node_settled(self, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.unlink(self.keys.node_actors(node_id), self.keys.node_procs(node_id),
                    self.keys.node_reserved(node_id))
        pipe.srem(self.keys.nodes_lost(), node_id)
        pipe.execute()

    @translate_errors
    def add_node_process(self, node_id: str, tag: str) -> None:
        self.redis.sadd(self.keys.node_procs(node_id), tag)

    @translate_errors
    def remove_node_process(self, node_id: str, tag: str) -> None:
        """Forget a process whose holds were released (see process_holds)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.unlink(self.keys.borrows(tag))
        pipe.srem(self.keys.node_procs(node_id), tag)
        pipe.execute()

    @translate_errors
    def node_processes(self, node_id: str) -> list[str]:
        return sorted(_text(t) for t in self.redis.smembers(self.keys.node_procs(node_id)))

    @translate_errors
    def named_actor(self, namespace: str, name: str) -> str | None:
        return _opt_text(self.redis.hget(self.keys.named(namespace), name))

    @translate_errors
    def named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of live named actors, in one namespace or all of them."""
        if namespace is not None:
            return [(namespace, _text(n)) for n in self.redis.hkeys(self.keys.named(namespace))]
        out = []
        prefix = len(self.keys.named(""))
        for key in self.redis.scan_iter(match=self.keys.named("*"), count=1000):
            out += [(_text(key)[prefix:], _text(n)) for n in self.redis.hkeys(key)]
        return out

    @translate_errors
    def job_actors(self, job_id: str) -> list[str]:
        return [_text(a) for a in self.redis.smembers(self.keys.job_actors(job_id))]

    @translate_errors
    def actor_down(
        self, actor_id: str, *, restart: bool, cause: str, node_id: str = "", drain: bool = False,
    ) -> tuple[str, list[Leased], str]:
        """Restart the actor (when allowed) or declare it dead, draining its calls:
        ("restarting"|"dead"|"already", drained call entries, the death cause recorded:
        `cause`, or the cause a taskmesh.kill left). With `node_id`, only
        if the actor is still recorded on that node (not restarted elsewhere already).
        `drain`: its node is being drained (a restart that max_restarts does not count)."""
        shape, namespace, queue, soft = self.redis.hmget(
            self.keys.actor(actor_id), "shape", "namespace", "queue", "soft")
        shape_s = _text(shape or b"none")
        keys = [self.keys.actor(actor_id), self.keys.actor_calls(actor_id),
                self.keys.queue(_text(queue) if queue else shape_s),
                self.keys.named(_text(namespace or b""))]
        extra = ["shape", shape_s, "soft", soft or b"0"] if queue else []
        mode = "drain" if drain and restart else "restart" if restart else "exit"
        reply = self.scripts["actor_down"](keys=keys, args=[actor_id, mode,
                                                  cause, _now_ms(), node_id, *extra])
        status = reply[0].decode()
        if status != "dead":
            return status, [], cause
        calls = self.keys.actor_calls(actor_id)
        entries = []
        for i in range(2, len(reply), 2):
            flat = reply[i + 1]
            entries.append(Leased(calls, reply[i], dict(zip(flat[::2], flat[1::2], strict=True))))
        return status, entries, _text(reply[1])

    @translate_errors
    def kill_actor(self, actor_id: str, *, no_restart: bool,
                   cause: str = "") -> tuple[str | None, str | None]:
        """Mark the actor killed and tell its node to kill its worker: (state, node).
        `cause`: its death cause should it die of this kill (actor_down.lua)."""
        pipe = self.redis.pipeline(transaction=True)
        if no_restart:
            pipe.hset(self.keys.actor(actor_id), "no_restart", "1")
        if cause:
            pipe.hset(self.keys.actor(actor_id), "kill_cause", cause)
        pipe.hmget(self.keys.actor(actor_id), "state", "node_id")
        state, node = pipe.execute()[-1]
        state_s = state.decode() if state else None
        node_s = node.decode() if node else None
        if node_s and state_s == "ALIVE":
            self.redis.publish(self.keys.chan_node(node_s), f"kill {actor_id}")
        return state_s, node_s

    @translate_errors
    def read_calls(
        self, client: redis.Redis, actor_id: str, count: int, block_ms: int | None, *, pending: bool = False
    ) -> list[Leased]:
        """The actor's next calls; with pending=True, the calls an earlier incarnation
        of the actor had read but not acknowledged."""
        key = self.keys.actor_calls(actor_id)
        # redis-py types XREADGROUP's group name `str` alone (bytes is sent the same way).
        reply = client.xreadgroup(CALL_GROUP, actor_id, {key: "0" if pending else ">"},  # type: ignore[arg-type]
                                  count=count, block=None if pending else block_ms)
        return parse_entries(reply)

    @translate_errors
    def ack_calls(self, actor_id: str, completions: Sequence[Completion], ids: list[bytes]) -> None:
        self.complete_tasks(completions, {self.keys.actor_calls(actor_id): ids}, group=CALL_GROUP)

    @translate_errors
    def count_call_retry(self, actor_id: str, entry_id: bytes) -> int:
        """How many times a call has now been retried after its actor died (kept in the
        actor's hash as `retry:{entry_id}` until the actor dies)."""
        return int(self.redis.hincrby(self.keys.actor(actor_id), f"retry:{entry_id.decode()}", 1))
