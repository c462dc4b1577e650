"""The Redis connection, the key schema and the Lua scripts: the only module that knows
what a taskmesh key looks like.

Key schema (every key starts with the cluster prefix, `tm` by default; `{owner}` is the
8-hex-digit tag of the process that owns a task or object, a Redis Cluster hash tag so that
one Lua script can touch a task's objects and its owner's done stream together):

| key                          | type    | holds                                                 | written by            | TTL |
|------------------------------|---------|-------------------------------------------------------|-----------------------|-----|
| tm:node:{node_id}            | hash    | ip, hostname, pid, obj_port (object-transfer server), resources_total/_available (JSON), state, start_ms, end_ms, death_cause, draining_deadline_ms (while it drains), object store usage (store_capacity, store_used, store_objects, store_spilled, store_spilled_objects, store_free_pool; bytes) | node agent; monitor marks DEAD | none |
| tm:nodes:alive               | zset    | node_id scored by last heartbeat (ms)                 | node agent            | none |
| tm:deadletter                | stream  | malformed queue entries, moved out of their queue: queue, entry, reason, fields (msgpack) | agent, actor worker | capped ~10,000 |
| tm:drivers                   | zset    | "<owner tag> <job id>" of live drivers, scored by last heartbeat (ms, Redis clock) | driver (driver_alive.lua); removed at shutdown or by the monitor | none |
| tm:monitor                   | string  | node_id of the agent holding the failure-monitor lease | monitor (SET NX PX, renew_lease.lua) | lease_ms |
| tm:fn:{fn_id}                | string  | cloudpickled function, exported once per definition   | driver / worker       | none |
| tm:shapes                    | set     | resource shapes that have a queue ("CPU=1")           | submitter             | none |
| tm:q:{shape}                 | stream  | pending tasks of one shape; group `agents`, one consumer per node (+ `monitor`, holding dead nodes' entries while it settles them); fields task, name, attempt, spec | submitter; agents ack+delete | none |
| tm:q:node:{node_id}          | stream  | tasks and actor creations for one node (node affinity, SPREAD, data locality); same group and fields as a shape queue plus shape (the demand) and soft (1: may run elsewhere: handed back to its shape queue when the node cannot start it soon or dies) | submitter; the node's agent | deleted when the node is settled |
| tm:q:pg:{pg_id}:{bundle}     | stream  | tasks and actor creations for one bundle of a placement group (`any`: for any of its bundles); fields as a node queue's | submitter; agents hosting the bundle | deleted with the group |
| tm:node_reserved:{node_id}   | hash    | placement-group bundles reserved on the node: "<pg>:<bundle>" -> resources (JSON) | reserve_pg / remove_pg scripts | deleted when the node is settled |
| tm:pinned                    | set     | the node and bundle queue names ("node:<id>", "pg:<id>:<bundle>"), for the failure monitor | agent, placement_group | none |
| tm:pg:{pg_id}                | hash    | name, namespace, strategy, bundles (JSON list), bundle_count, state (PENDING/CREATED/RESCHEDULING/REMOVED), bundle_nodes (JSON index -> node), job_id, detached, created_ms | placement_group; reserve_pg / remove_pg scripts | deleted when its job ends (non-detached) |
| tm:pgs                       | set     | every placement group id (placement_group_table)      | placement_group       | none |
| tm:pgs:pending               | set     | groups waiting for room (placed by the monitor when it appears) | placement_group; reserve_pg script | none |
| tm:named_pg:{namespace}      | hash    | placement group name -> id                            | placement_group       | none |
| tm:job:{job_id}:pgs          | set     | the job's non-detached placement groups (removed when it ends) | placement_group | none |
| tm:{owner}:obj:{object_id}   | hash    | kind (value/error/shm), data (serialized value; for shm "<size> <node_id>" of the node that made it), size (bytes), held (1 while the owner holds a ref); for a task's shm result also lineage (its queue entry, msgpack: run again when every copy is lost) and, while that runs, state "rebuilding" (no kind/data then) | completing agent, put; reconstruct.lua | deleted when nobody holds it |
| tm:{owner}:obj:{object_id}:loc | set   | other nodes holding a shared-memory copy (fetched there) | the fetching process | deleted with the object |
| tm:{owner}:obj:{object_id}:refs | hash  | holders besides the owner -> count: `p:<tag>` a process that borrowed a ref, `o:<object_id>` an object containing it | release.lua | deleted when empty |
| tm:{owner}:obj:{object_id}:nested | set | refs the object contains (it holds them as `o:<object_id>`) | the process that stored it | deleted with the object |
| tm:{tag}:borrows             | set     | objects the process `tag` holds as a borrower (released for it if it dies) | that process | deleted when it ends |
| tm:{owner}:gen:{task_id}     | string  | items of a streaming generator call its caller has taken (generator backpressure: the generator waits while too many are not) | the caller | 1 h; deleted when the call ends and its generator is dropped |
| tm:{owner}:done              | stream  | completion notices for the owner's tasks (field n)    | completion script     | owner trims |
| tm:{owner}:fence             | hash    | task_id -> lowest attempt whose results are still accepted: set when the monitor retries or fails a task of a dead node, so a late completion of the old attempt (a node cut off, not dead) is ignored | monitor; read by complete.lua | 1 day after the last fence |
| tm:job:{job_id}              | hash    | driver pid/host, namespace, start_ms, end_ms          | driver                | none |
| tm:jobs                      | counter | last job number handed out                            | driver                | none |
| tm:actor:{actor_id}          | hash    | class_name, state (PENDING/ALIVE/RESTARTING/DEAD), node_id, pid, restarts (restarts_drained of them because their node was drained), max_restarts, no_restart (killed: never comes back), death_cause, name, namespace, shape, spec | driver, agent, actor worker | none |
| tm:actor:{actor_id}:calls    | stream  | the actor's pending method calls; group `actor`, consumer = actor id | caller; actor worker acks | deleted when the actor dies |
| tm:node_actors:{node_id}     | set     | actors that became ALIVE on the node (recovered when it dies) | actor worker | deleted when the node is settled |
| tm:node_procs:{node_id}      | set     | owner tags of the node's worker processes (their holds are released when the node dies) | worker at start; agent removes | deleted when the node is settled |
| tm:nodes:lost                | set     | nodes declared dead whose actors the monitor has not recovered yet | mark_node_dead script; monitor | none |
| tm:named:{namespace}         | hash    | actor name -> actor id                                | create_actor / actor_down scripts | none |
| tm:job:{job_id}:actors       | set     | actors created by the job (killed when it ends unless detached) | create_actor script | none |
| tm:chan:node:{node_id}       | pub/sub | orders for one node's agent: `kill <actor_id>`, `free <object_id> ...` (drop shared-memory copies) | kill, freeing process | -   |
| tm:chan:cancel               | pub/sub | `<task_id> <force 0/1>`: agents drop the task if queued, interrupt (SIGINT) or kill its worker if running | taskmesh.cancel | -   |
| tm:chan:shapes               | pub/sub | a new shape queue exists (agents start reading it)   | submitter             | -   |
| tm:chan:log:{job_id}         | pub/sub | worker stdout/stderr lines for the job's driver       | worker                | -   |
| tm:_secret:transfer          | string  | the cluster secret object-transfer servers challenge for (hex); `_` keys are hidden from the readonly ACL role | first node agent (SET NX) | none |
| tm:events                    | stream  | task events (field e: a msgpack list of up to 100 {task_id, attempt, state, ts (µs), ...}: one entry per flushed batch; see _events.py) for `list tasks`, `summary`, `timeline` | submitter (with its submissions), worker (background flush), agent (retries) | capped ~2,000 entries (TASKMESH_TASK_EVENTS_MAXLEN) |
| tm:logs:{job_id}             | stream  | the job's worker stdout/stderr (field l: msgpack {pid, node, actor, lines}), for `taskmesh logs` on any machine | worker (with the pub/sub message) | capped ~5,000 entries; 7 days after its last line |
| tm:metrics                   | hash    | metric name -> JSON definition (type, description, tag_keys, boundaries) | util.metrics flush | none |
| tm:metric:{name}             | hash    | one metric's series: JSON tags (+ `\x1f`bucket/sum/count for histograms) -> value | util.metrics flush (HINCRBYFLOAT/HSET) | none |
| tm:pkg:{digest}              | string  | a zipped runtime_env working_dir / py_modules entry, named by the SHA-1 of the zip | the submitting process (SET NX) | none (content-addressed) |

Replication and failover: with a `redis+sentinel://` address every client (driver,
agent, worker) asks the Sentinels for the primary and asks again after losing it, so after
a failover it follows the promoted replica; until then calls fail with
StoreUnavailableError and callers retry. Replication is asynchronous, so a write the primary
acknowledged can be lost if the primary dies before a replica received it. The pipelines
that make work durable for other processes (task submission, results and acks, `put`) end
with `WAIT 1 <timeout>` (TASKMESH_WAIT_REPLICAS, TASKMESH_WAIT_TIMEOUT_MS; 1 and 100 ms by
default) in the same round trip: when it returns, the writes reached at least one replica,
which a failover then promotes. WAIT does not make the write durable on disk, and on timeout
we continue: the window remains open for that write (a lagging or disconnected replica). A
primary without connected replicas (for instance right after a failover) is not waited for:
after a shortfall the store checks ROLE and skips WAIT for a second when there is no
replica. Other writes (heartbeats, actor state, refcounts) are not waited for: a failover
may roll them back by a few milliseconds. Plain `redis://` addresses never WAIT.

Ids: a task id is `{owner}` + 16 hex digits; an object id is its task id + 4 hex digits
(return index, 0 for `put`), so a key builder finds the owner tag in the id itself. An
actor id is its creator's tag + 16 hex digits; the actor's keys carry it as hash tag.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgpack
import redis
import redis.sentinel

from . import _services, security
from ._store_base import (
    _NO_REPLICA_BACKOFF_S,
    ENV_WAIT_REPLICAS,
    ENV_WAIT_TIMEOUT_MS,
    GROUP,
    OWNER_TAG_LEN,
    Completion,
    Freed,
    Leased,
    Liveness,
    Outgoing,
    Release,
    _flat,
    _forget_frames,
    _now_ms,
    _sentinel_client,
    _text,
    keep_listening,
    retry_transient,
    translate_errors,
)
from ._store_actors import ActorMethods
from ._store_objects import KIND_REBUILD, LINEAGE_KINDS, ObjectMethods
from ._store_observe import ObserveMethods
from ._store_sched import ScheduleMethods

# A last "object" (id, KIND_FENCE, b"<task_id> <attempt>") of a Completion names the
# attempt that produced it; complete.lua ignores it when the task was fenced past it.
KIND_FENCE = b"fence"
FENCE_TTL_MS = 24 * 3600 * 1000

__all__ = [
    "GROUP", "KIND_FENCE", "OWNER_TAG_LEN", "Completion", "Freed", "Keys", "Leased", "Liveness", "Outgoing",
    "Release", "Store", "keep_listening", "retry_transient", "translate_errors",
]


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key; the prefix appears nowhere else."""

    prefix: str = "tm"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def nodes_alive(self) -> str:
        return f"{self.prefix}:nodes:alive"

    def drivers(self) -> str:
        return f"{self.prefix}:drivers"

    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    def monitor(self) -> str:
        return f"{self.prefix}:monitor"

    def fn(self, fn_id: str) -> str:
        return f"{self.prefix}:fn:{fn_id}"

    def shapes(self) -> str:
        return f"{self.prefix}:shapes"

    def queue(self, shape: str) -> str:
        return f"{self.prefix}:q:{shape}"

    def node_queue(self, node_id: str) -> str:
        return self.queue(f"node:{node_id}")

    def bundle_queue(self, pg_id: str, bundle: str) -> str:
        return self.queue(f"pg:{pg_id}:{bundle}")

    def node_reserved(self, node_id: str) -> str:
        return f"{self.prefix}:node_reserved:{node_id}"

    def pinned(self) -> str:
        return f"{self.prefix}:pinned"

    def pg(self, pg_id: str) -> str:
        return f"{self.prefix}:pg:{pg_id}"

    def pgs(self) -> str:
        return f"{self.prefix}:pgs"

    def pgs_pending(self) -> str:
        return f"{self.prefix}:pgs:pending"

    def named_pg(self, namespace: str) -> str:
        return f"{self.prefix}:named_pg:{namespace}"

    def job_pgs(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:pgs"

    def obj(self, object_id: str) -> str:
        return f"{self.prefix}:{{{object_id[:OWNER_TAG_LEN]}}}:obj:{object_id}"

    def all_objects(self) -> str:
        """SCAN pattern matching every object hash (and location set)."""
        return f"{self.prefix}:{{*}}:obj:*"

    def obj_loc(self, object_id: str) -> str:
        return f"{self.prefix}:{{{object_id[:OWNER_TAG_LEN]}}}:obj:{object_id}:loc"

    def obj_refs(self, object_id: str) -> str:
        return f"{self.prefix}:{{{object_id[:OWNER_TAG_LEN]}}}:obj:{object_id}:refs"

    def obj_nested(self, object_id: str) -> str:
        return f"{self.prefix}:{{{object_id[:OWNER_TAG_LEN]}}}:obj:{object_id}:nested"

    def owned_objects(self, tag: str) -> str:
        """SCAN pattern matching the object keys of one owner."""
        return f"{self.prefix}:{{{tag}}}:obj:*"

    def borrows(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:borrows"

    def done(self, owner: str) -> str:
        return f"{self.prefix}:{{{owner}}}:done"

    def gen_consumed(self, task_id: str) -> str:
        return f"{self.prefix}:{{{task_id[:OWNER_TAG_LEN]}}}:gen:{task_id}"

    def fence(self, owner: str) -> str:
        return f"{self.prefix}:{{{owner}}}:fence"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def all_jobs(self) -> str:
        """SCAN pattern matching every job hash (and each job's actor set)."""
        return f"{self.prefix}:job:*"

    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def chan_shapes(self) -> str:
        return f"{self.prefix}:chan:shapes"

    def chan_cancel(self) -> str:
        return f"{self.prefix}:chan:cancel"

    def chan_log(self, job_id: str) -> str:
        return f"{self.prefix}:chan:log:{job_id}"

    def actor(self, actor_id: str) -> str:
        return f"{self.prefix}:actor:{{{actor_id}}}"

    def actor_calls(self, actor_id: str) -> str:
        return f"{self.prefix}:actor:{{{actor_id}}}:calls"

    def named(self, namespace: str) -> str:
        return f"{self.prefix}:named:{namespace}"

    def job_actors(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:actors"

    def chan_node(self, node_id: str) -> str:
        return f"{self.prefix}:chan:node:{node_id}"

    def node_actors(self, node_id: str) -> str:
        return f"{self.prefix}:node_actors:{node_id}"

    def node_procs(self, node_id: str) -> str:
        return f"{self.prefix}:node_procs:{node_id}"

    def nodes_lost(self) -> str:
        return f"{self.prefix}:nodes:lost"

    def transfer_secret(self) -> str:
        return f"{self.prefix}:_secret:transfer"

    def events(self) -> str:
        return f"{self.prefix}:events"

    def logs(self, job_id: str) -> str:
        return f"{self.prefix}:logs:{job_id}"

    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    def metric(self, name: str) -> str:
        return f"{self.prefix}:metric:{name}"

    def package(self, digest: str) -> str:
        return f"{self.prefix}:pkg:{digest}"


def _load_script(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}").read_text()


class Store(ActorMethods, ObjectMethods, ObserveMethods, ScheduleMethods):
    """A pooled connection to the cluster's Redis plus one typed method per operation."""

    def __init__(self, url: str, *, prefix: str = "tm", tls: security.TlsFiles | None = None,
                 **connection_kwargs: Any):
        """`tls`: CA/certificate/key files for a `rediss://` address (default: the
        TASKMESH_TLS_* variables, which child processes inherit)."""
        self.url = url
        self.keys = Keys(prefix)
        connection_kwargs = {**security.tls_connection_kwargs(url, tls), **connection_kwargs}
        self._sentinel: redis.sentinel.Sentinel | None = None
        self._wait_replicas = 0
        self._wait_timeout_ms = 0
        self._skip_wait_until = 0.0
        if url.startswith(f"{_services.SENTINEL_SCHEME}://"):
            self._sentinel, self.redis = _sentinel_client(url, connection_kwargs)
            self._wait_replicas = int(os.environ.get(ENV_WAIT_REPLICAS, "1"))
            self._wait_timeout_ms = int(os.environ.get(ENV_WAIT_TIMEOUT_MS, "100"))
        else:
            self.redis = redis.Redis.from_url(
                url, health_check_interval=30, socket_keepalive=True, **connection_kwargs
            )
        self._complete = self.redis.register_script(_load_script("complete.lua"))
        self._requeue = self.redis.register_script(_load_script("requeue.lua"))
        self._ack = self.redis.register_script(_load_script("ack.lua"))
        self._submit = self.redis.register_script(_load_script("submit.lua"))
        self._renew_lease = self.redis.register_script(_load_script("renew_lease.lua"))
        self._mark_node_dead = self.redis.register_script(_load_script("mark_node_dead.lua"))
        self._heartbeat = self.redis.register_script(_load_script("heartbeat.lua"))
        self._driver_alive = self.redis.register_script(_load_script("driver_alive.lua"))
        self._drop_consumer = self.redis.register_script(_load_script("drop_consumer.lua"))
        self._create_actor = self.redis.register_script(_load_script("create_actor.lua"))
        self._actor_call = self.redis.register_script(_load_script("actor_call.lua"))
        self._actor_down = self.redis.register_script(_load_script("actor_down.lua"))
        self._actor_alive = self.redis.register_script(_load_script("actor_alive.lua"))
        self._release = self.redis.register_script(_load_script("release.lua"))
        self._reconstruct = self.redis.register_script(_load_script("reconstruct.lua"))
        self._sched_scripts()

    def close(self) -> None:
        self.redis.close()
        self.redis.connection_pool.disconnect()
        if self._sentinel is not None:
            self._sentinel.close()

    def dedicated(self) -> redis.Redis:
        """A client on its own single connection, for blocking reads that must be woken
        (CLIENT UNBLOCK) or that would otherwise hold a pooled connection."""
        return redis.Redis(connection_pool=self.redis.connection_pool, single_connection_client=True)

    @translate_errors
    def ping(self) -> bool:
        return bool(self.redis.ping())

    @translate_errors
    def check_server(self, *, allow_insecure: bool | None = None) -> None:
        """Refuse a Redis that may evict keys: an evicted queue entry, result or actor
        record is lost work (servers that allow neither INFO nor CONFIG are trusted).
        And refuse one on another machine that runs commands without a password unless
        `allow_insecure` (default: $TASKMESH_ALLOW_INSECURE), see security.py."""
        if allow_insecure is None:
            allow_insecure = security.allow_insecure_default()
        primary = None
        if self._sentinel is not None:
            primary = self._sentinel.discover_master(
                _services.parse_sentinel_address(self.url).master_name)
        security.check_not_open(self.redis, self.url, allow_insecure=allow_insecure,
                                primary=primary)
        try:  # INFO rather than CONFIG, which the ACL roles may not run
            policy = self.redis.info("memory").get("maxmemory_policy")
            if policy is None:
                policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:  # forbidden: managed services
            return
        if policy not in (None, "noeviction"):
            raise ValueError(
                f"The Redis at {_services.mask_password(self.url)} has maxmemory-policy "
                f"{policy!r}: it may evict taskmesh's keys and lose tasks and objects. Set "
                "'maxmemory-policy noeviction' (CONFIG SET maxmemory-policy noeviction).")

    # ---- jobs and functions -------------------------------------------------------

    @translate_errors
    def new_job(self, info: dict[str, str]) -> str:
        number = self.redis.incr(self.keys.jobs())
        job_id = f"{number:08x}"
        self.redis.hset(self.keys.job(job_id), mapping=info)
        return job_id

    @translate_errors
    def job_infos(self) -> list[dict[str, str]]:
        """Every job's hash with its id and state (SCAN: for the CLI, not hot paths)."""
        keys = [k for k in self.redis.scan_iter(match=self.keys.all_jobs(), count=1000)
                if not k.endswith(b":actors")]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        out = []
        for key, raw in zip(keys, pipe.execute()):
            info = {_text(k): _text(v) for k, v in raw.items()}
            info["job_id"] = _text(key).rpartition(":")[2]
            info["state"] = "FINISHED" if info.get("end_ms") else "RUNNING"
            out.append(info)
        return sorted(out, key=lambda j: j["job_id"])

    @translate_errors
    def end_job(self, job_id: str) -> None:
        self.redis.hset(self.keys.job(job_id), "end_ms", str(_now_ms()))

    @translate_errors
    def export_function(self, fn_id: str, blob: bytes) -> None:
        self.redis.set(self.keys.fn(fn_id), blob, nx=True)

    @translate_errors
    def get_function(self, fn_id: str) -> bytes | None:
        return self.redis.get(self.keys.fn(fn_id))

    @translate_errors
    def put_package(self, digest: str, blob: bytes) -> None:
        self.redis.set(self.keys.package(digest), blob, nx=True)

    @translate_errors
    def get_package(self, digest: str) -> bytes | None:
        return self.redis.get(self.keys.package(digest))

    # ---- task queues ----------------------------------------------------------------

    @translate_errors
    def register_shape(self, shape: str) -> None:
        """Create the shape's queue and consumer group, and tell agents it exists."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xgroup_create(self.keys.queue(shape), GROUP, id="0", mkstream=True)
        pipe.sadd(self.keys.shapes(), shape)
        added = _forget_frames(pipe.execute(raise_on_error=False))[1]
        if added == 1:
            self.redis.publish(self.keys.chan_shapes(), shape)

    @translate_errors
    def shapes(self) -> list[str]:
        return sorted(s.decode() for s in self.redis.smembers(self.keys.shapes()))

    @translate_errors
    def ensure_groups(self, shapes: Iterable[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for shape in shapes:
            pipe.xgroup_create(self.keys.queue(shape), GROUP, id="0", mkstream=True)
        _forget_frames(pipe.execute(raise_on_error=False))

    @translate_errors
    def submit_tasks(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """XADD each (shape, fields) entry, pipelined in one round trip."""
        self.submit([Outgoing(shape, fields) for shape, fields in entries])

    @translate_errors
    def submit(self, entries: Sequence[Outgoing], events: Sequence[dict[str, Any]] = ()) -> list[tuple[int, str]]:
        """Send tasks to shape queues and method calls to actors in one pipelined round
        trip: one script call per queue or actor, entries in submission order within
        each, and the batch's task events as one entry of the events stream. Returns
        (index, death cause) of calls to dead actors (not appended)."""
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, e in enumerate(entries):
            groups.setdefault((e.target, e.actor_id), []).append(i)

        def queue_commands(pipe: Any) -> None:
            for (target, actor_id), indexes in groups.items():
                args: list[Any] = []
                for i in indexes:
                    fields = entries[i].fields
                    args.append(len(fields))
                    for kv in fields.items():
                        args += kv
                if actor_id is None:
                    pipe.evalsha(self._submit.sha, 1, self.keys.queue(target), *args)
                else:
                    pipe.evalsha(self._actor_call.sha, 2, self.keys.actor(actor_id),
                                 self.keys.actor_calls(actor_id), *args)
            self.queue_events(pipe, events)  # its reply comes after the scripts': unread

        replies = self._run_scripts(queue_commands, (self._submit, self._actor_call), durable=True)
        dead = []
        for ((_, actor_id), indexes), reply in zip(groups.items(), replies):
            if actor_id is not None and reply[0] == 0:
                dead += [(i, reply[1].decode()) for i in indexes]
        return dead

    @translate_errors
    def lease(
        self, client: redis.Redis, consumer: str, counts: dict[str, int], block_ms: int | None
    ) -> list[Leased]:
        """XREADGROUP new entries, at most counts[shape] from each shape queue.

        XREADGROUP's COUNT applies to every stream it reads, so shapes with different
        counts are first read without blocking, each with its own count, in one
        pipeline; only when all are empty does one blocking read wait on all of them,
        with the smallest count (never more than any shape's share).
        """
        if not counts:
            return []
        try:
            if len(set(counts.values())) > 1:
                pipe = client.pipeline(transaction=False)
                for shape, n in counts.items():
                    pipe.xreadgroup(GROUP, consumer, {self.keys.queue(shape): ">"}, count=n)
                leased = [e for reply in pipe.execute() for e in self._entries(reply)]
                if leased or block_ms is None:
                    return leased
            streams = {self.keys.queue(shape): ">" for shape in counts}
            reply = client.xreadgroup(GROUP, consumer, streams, count=min(counts.values()),
                                      block=block_ms)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self.ensure_groups(counts)
            return []
        return self._entries(reply)

    @translate_errors
    def dead_letter(self, entries: Sequence[tuple[Leased, str]], group: bytes = GROUP) -> None:
        """Move malformed entries to the dead-letter stream (with the reason), and ack and
        delete them where they were, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for entry, reason in entries:
            pipe.xadd(self.keys.deadletter(), {
                "queue": entry.queue, "entry": entry.entry_id, "reason": reason,
                "fields": msgpack.packb(entry.fields, use_bin_type=True)}, maxlen=10_000, approximate=True)
            pipe.xack(entry.queue, group, entry.entry_id)
            pipe.xdel(entry.queue, entry.entry_id)
        pipe.execute()

    @translate_errors
    def own_pending(self, client: redis.Redis, consumer: str, shapes: Sequence[str]) -> list[Leased]:
        """Entries delivered to this consumer and not acknowledged (XREADGROUP from id 0):
        after a lost connection, a read whose reply never arrived left its entries here."""
        pipe = client.pipeline(transaction=False)
        for shape in shapes:
            pipe.xreadgroup(GROUP, consumer, {self.keys.queue(shape): "0"}, count=10_000)
        return [e for reply in _forget_frames(pipe.execute(raise_on_error=False))
                if not isinstance(reply, Exception) for e in self._entries(reply)]

    @staticmethod
    def _entries(reply: Any) -> list[Leased]:
        out = []
        for stream, entries in reply or []:
            queue = stream.decode()
            for entry_id, fields in entries:
                if fields is not None:
                    out.append(Leased(queue, entry_id, fields))
        return out

    @translate_errors
    def complete_tasks(
        self, completions: Sequence[Completion], acks: dict[str, list[bytes]], group: bytes = GROUP
    ) -> None:
        """Store results + notify owners (one script per task), then ack and delete the
        queue entries, in one pipelined round trip. A crash between the two only re-runs
        a task; the script makes the second result a no-op. A last "object" of kind
        KIND_LINEAGE or KIND_REBUILD carries the task's queue entry (see complete.lua)."""
        by_owner: dict[str, list[Completion]] = {}
        for c in completions:
            if c.objects:  # num_returns=0: nothing to store, nobody to notify
                by_owner.setdefault(c.owner, []).append(c)

        def queue_commands(pipe: Any) -> None:
            for owner, batch in by_owner.items():
                keys = [self.keys.done(owner)]
                args: list[Any] = []
                for c in batch:
                    args += [c.notice, len(c.objects)]
                    rebuild = any(kind == KIND_REBUILD for _, kind, _ in c.objects)
                    for oid, kind, data in c.objects:
                        if kind not in LINEAGE_KINDS and kind != KIND_FENCE:  # see complete.lua
                            keys.append(self.keys.obj(oid))
                            if rebuild:
                                keys.append(self.keys.obj_loc(oid))
                        args += [kind, data]
                keys.append(self.keys.fence(owner))  # last: see complete.lua
                pipe.evalsha(self._complete.sha, len(keys), *keys, *args)
            for queue, ids in acks.items():
                pipe.evalsha(self._ack.sha, 1, queue, group, *ids)

        self._run_scripts(queue_commands, (self._complete, self._ack), durable=True)

    def _run_scripts(
        self, queue_commands: Callable[[Any], None], scripts: tuple[Any, ...], *, durable: bool = False,
    ) -> list:
        """Run a pipeline of EVALSHAs. redis-py's pipelined Script objects send SCRIPT
        EXISTS on every execute; we load the scripts only when the server lacks them
        (a restarted or failed-over Redis) and run the pipeline again.

        `durable`: other processes act on these writes, so in replicated mode the
        pipeline ends with WAIT (see the module docstring); its reply is not returned."""
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            queue_commands(pipe)
            waits = durable and self._should_wait()
            if waits:
                pipe.wait(self._wait_replicas, self._wait_timeout_ms)
            try:
                replies = pipe.execute()
            except redis.exceptions.NoScriptError as e:
                if attempt:
                    raise
                _forget_frames([e])
                for script in scripts:
                    self.redis.script_load(script.script)
                continue
            if waits:
                self._note_replicated(int(replies.pop()))
            return replies
        return []

    def _should_wait(self) -> bool:
        return self._wait_replicas > 0 and time.monotonic() >= self._skip_wait_until

    def _note_replicated(self, replicas: int) -> None:
        """After a WAIT that timed out, ask the primary how many replicas it has: with
        fewer than we wait for, every WAIT would only cost its full timeout, so skip
        WAIT for a while (a replica that reconnects is waited for again after that)."""
        if replicas >= self._wait_replicas:
            return
        role = self.redis.execute_command("ROLE")
        connected = len(role[2]) if role and role[0] == b"master" else 0
        if connected < self._wait_replicas:
            self._skip_wait_until = time.monotonic() + _NO_REPLICA_BACKOFF_S

    @translate_errors
    def requeue(self, queue: str, entry_id: bytes, fields: dict[bytes, Any],
                dest: str | None = None) -> None:
        """Ack a leased entry of `queue` and add it again (to `dest` when given): one script."""
        args: list[Any] = [GROUP, entry_id]
        for k, v in fields.items():
            args += [k, v]
        self._requeue(keys=[queue] if dest is None else [queue, dest], args=args)

    @translate_errors
    def queue_stats(self) -> dict[str, tuple[int, int]]:
        """shape -> (queued, running): entries not yet leased, and leased not yet acked."""
        shapes = self.shapes()
        pipe = self.redis.pipeline(transaction=False)
        for shape in shapes:
            pipe.xlen(self.keys.queue(shape))
            pipe.xpending(self.keys.queue(shape), GROUP)
        replies = _forget_frames(pipe.execute(raise_on_error=False))
        stats = {}
        for i, shape in enumerate(shapes):
            length, pending = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, Exception):
                continue
            running = 0 if isinstance(pending, Exception) else int(pending["pending"])
            stats[shape] = (max(int(length) - running, 0), running)
        return stats

    # ---- objects ----------------------------------------------------------------------

    @translate_errors
    def publish_cancel(self, task_id: str, force: bool) -> None:
        self.redis.publish(self.keys.chan_cancel(), f"{task_id} {int(force)}")

    @translate_errors
    def read_done(
        self, client: redis.Redis, owner: str, after: bytes, block_ms: int, trim_below: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        """Block for completion notices after `after` (on `client`, a dedicated
        connection that CLIENT UNBLOCK can wake), trimming the ones already consumed."""
        key = self.keys.done(owner)
        if trim_below is not None:  # on the shared pool: `client` must stay the blocked one
            self.redis.xtrim(key, minid=trim_below, approximate=False)
        reply = client.xread({key: after}, count=10_000, block=block_ms)
        return [(eid, fields[b"n"]) for _, entries in reply or [] for eid, fields in entries]

    @translate_errors
    def delete_done(self, owner: str) -> None:
        self.redis.unlink(self.keys.done(owner))

    @translate_errors
    def set_generators_consumed(self, consumed: dict[str, int | None]) -> None:
        """Record how many items of each streaming call its caller has taken (None:
        the call is over, forget it), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id, count in consumed.items():
            if count is None:
                pipe.unlink(self.keys.gen_consumed(task_id))
            else:
                pipe.set(self.keys.gen_consumed(task_id), count, ex=3600)
        pipe.execute()

    @translate_errors
    def generator_consumed(self, task_id: str) -> int:
        return int(self.redis.get(self.keys.gen_consumed(task_id)) or 0)

    # ---- task fencing ----------------------------------------------------------------

    @translate_errors
    def fence_tasks(self, fences: Sequence[tuple[str, str, int]]) -> None:
        """(owner, task id, attempt): from now on only results of `attempt` or later are
        accepted for the task (one pipelined round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for owner, task_id, attempt in fences:
            pipe.hset(self.keys.fence(owner), task_id, attempt)
            pipe.pexpire(self.keys.fence(owner), FENCE_TTL_MS)
        pipe.execute()


    # ---- nodes --------------------------------------------------------------------------

    @translate_errors
    def register_node(self, node_id: str, info: dict[str, Any]) -> None:
        self.redis.hset(self.keys.node(node_id), mapping=_flat(info))
        self.heartbeat(node_id, None)

    @translate_errors
    def heartbeat(self, node_id: str, available: dict[str, float] | None) -> int:
        """Refresh this node's heartbeat (and free resources when they changed);
        returns how many nodes are alive, or -1 when this node was declared dead."""
        keys = [self.keys.nodes_alive(), self.keys.node(node_id)]
        return int(self._heartbeat(keys=keys, args=[
            node_id, "" if available is None else json.dumps(available)]))

    @translate_errors
    def set_node_fields(self, node_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(self.keys.node(node_id), mapping=_flat(fields))

    @translate_errors
    def unregister_node(self, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.nodes_alive(), node_id)
        pipe.hset(self.keys.node(node_id), mapping={"state": "DEAD", "end_ms": _now_ms()})
        pipe.execute()

    @translate_errors
    def nodes(self) -> list[dict[str, Any]]:
        """Every node that has a hash, with `alive` and `last_heartbeat_ms` added."""
        alive = {m.decode(): int(s) for m, s in self.redis.zrange(
            self.keys.nodes_alive(), 0, -1, withscores=True)}
        node_keys = list(self.redis.scan_iter(match=self.keys.node("*"), count=1000))
        pipe = self.redis.pipeline(transaction=False)
        for key in node_keys:
            pipe.hgetall(key)
        out = []
        for raw in pipe.execute():
            info = {k.decode(): v.decode() for k, v in raw.items()}
            if "node_id" not in info:
                continue
            for field in ("resources_total", "resources_available"):
                info[field] = json.loads(info.get(field) or "{}")
            info["last_heartbeat_ms"] = alive.get(info["node_id"])
            info["alive"] = info["node_id"] in alive and info.get("state") == "ALIVE"
            out.append(info)
        return sorted(out, key=lambda n: n.get("start_ms", ""))

    # (worker output, task events and metrics: _store_observe.py)

    # ---- failure monitor ----------------------------------------------------------------

    @translate_errors
    def acquire_monitor_lease(self, holder: str, ttl_ms: int) -> bool:
        return bool(self.redis.set(self.keys.monitor(), holder, nx=True, px=ttl_ms))

    @translate_errors
    def renew_monitor_lease(self, holder: str, ttl_ms: int) -> bool:
        """Extend the lease if `holder` still has it; ttl_ms=0 gives it up."""
        return self._renew_lease(keys=[self.keys.monitor()], args=[holder, ttl_ms]) == 1

    @translate_errors
    def driver_alive(self, tag: str, job_id: str) -> None:
        self._driver_alive(keys=[self.keys.drivers()], args=[f"{tag} {job_id}"])

    @translate_errors
    def driver_gone(self, tag: str, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.drivers(), f"{tag} {job_id}")
        pipe.unlink(self.keys.borrows(tag))  # see process_holds
        pipe.execute()

    @translate_errors
    def silent_drivers(self, now_ms: int, timeout_ms: int) -> list[tuple[str, str]]:
        """(owner tag, job id) of drivers whose last heartbeat is older than the timeout."""
        members = self.redis.zrangebyscore(self.keys.drivers(), "-inf", now_ms - timeout_ms)
        return [tuple(_text(m).split(" ", 1)) for m in members]  # type: ignore[misc]

    @translate_errors
    def liveness(self, shapes: Sequence[str]) -> Liveness:
        """Heartbeats and every queue's consumers in one MULTI, so that a node which
        registers and then leases is never seen as a consumer without a heartbeat."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.time()
        pipe.zrange(self.keys.nodes_alive(), 0, -1, withscores=True)
        for shape in shapes:
            pipe.xinfo_consumers(self.keys.queue(shape), GROUP)
        (seconds, micros), alive, *replies = _forget_frames(pipe.execute(raise_on_error=False))
        consumers = {}
        for shape, reply in zip(shapes, replies):
            if isinstance(reply, Exception):  # no group yet: nobody consumes it
                continue
            consumers[shape] = {_text(c["name"]): int(c["pending"]) for c in reply}
        return Liveness({m.decode(): int(score) for m, score in alive}, consumers,
                        seconds * 1000 + micros // 1000)

    @translate_errors
    def mark_node_dead(self, node_id: str, cutoff_ms: int, cause: str) -> bool:
        """DEAD if its heartbeat is still at or before cutoff_ms; True if this call did it."""
        keys = [self.keys.nodes_alive(), self.keys.node(node_id), self.keys.nodes_lost()]
        return self._mark_node_dead(keys=keys, args=[node_id, cutoff_ms, _now_ms(), cause]) == 1

    @translate_errors
    def pending_ids(self, shape: str, consumer: str, count: int) -> list[bytes]:
        """Ids of the oldest `count` entries of a queue pending for one consumer."""
        rows = self.redis.xpending_range(self.keys.queue(shape), GROUP, "-", "+", count,
                                         consumername=consumer)
        return [row["message_id"] for row in rows]

    @translate_errors
    def claim(self, shape: str, ids: Sequence[bytes], consumer: str, min_idle_ms: int) -> list[Leased]:
        """XCLAIM the entries idle for at least min_idle_ms. A claim resets the idle time,
        so of two claimants racing for one entry only the first gets it."""
        queue = self.keys.queue(shape)
        reply = self.redis.xclaim(queue, GROUP, consumer, min_idle_ms, list(ids))
        return [Leased(queue, eid, fields) for eid, fields in reply if fields is not None]

    @translate_errors
    def drop_consumer(self, shape: str, consumer: str) -> bool:
        """Delete a consumer from a queue's group if nothing is pending for it."""
        return self._drop_consumer(keys=[self.keys.queue(shape)], args=[GROUP, consumer]) == 1
