"""The Store: a pooled connection to the cluster's Redis with one typed method per
operation. The key schema is in keys.py, the Lua scripts in lua/ (loaded by scripts.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import msgpack
import redis
import redis.sentinel
from redis.typing import KeyT, StreamIdT

from taskmesh._base import config, queues
from taskmesh._base.wire import WireError, node_resources, notices_of
from taskmesh.store.actor_table import ActorMethods
from taskmesh.store.connection import (
    SENTINEL_SCHEME,
    TlsFiles,
    _sentinel_client,
    env_password,
    parse_sentinel_address,
    round_trip,
    tls_connection_kwargs,
)
from taskmesh.store.directory import KIND_REBUILD, LINEAGE_KINDS, ObjectMethods
from taskmesh.store.groups import ScheduleMethods
from taskmesh.store.keys import Keys
from taskmesh.store.observe import ObserveMethods
from taskmesh.store.records import (
    _NO_REPLICA_BACKOFF_S,
    GONE_FENCE,
    GROUP,
    Completion,
    Leased,
    Liveness,
    Outgoing,
    _bytes,
    _fields,
    _flat,
    _forget_frames,
    _now_ms,
    _opt_bytes,
    _text,
    parse_entries,
    scan_hashes,
    stream_entries,
    translate_errors,
    warn_once,
)
from taskmesh.store.scripts import Scripts
from taskmesh.store.submissions import SubmissionMethods

# A last "object" (id, KIND_FENCE, b"<task_id> <attempt>") of a Completion names the
# attempt that produced it; complete.lua ignores it when the task was fenced past it.
KIND_FENCE = b"fence"
FENCE_TTL_MS = 24 * 3600 * 1000
# objects.KIND_ERROR. A completion that stores only errors (with its fence) runs the
# allow-oom copy of complete.lua: Redis stores it even over maxmemory, since it is small
# and the only way its caller learns that the task failed (a refused result, say).
_KIND_ERROR = b"error"
# Ended jobs kept in tm:jobs:ended (agents drop the tasks of those they know of).
ENDED_JOBS_KEPT = 10_000

__all__ = ["KIND_FENCE", "Store"]  # the store's other names: taskmesh.store (__init__.py)


class Store(ActorMethods, ObjectMethods, ObserveMethods, ScheduleMethods, SubmissionMethods):
    """A pooled connection to the cluster's Redis plus one typed method per operation."""

    def __init__(self, url: str, *, prefix: str = "tm", tls: TlsFiles | None = None,
                 **connection_kwargs: Any):
        """`tls`: CA/certificate/key files for a `rediss://` address (default: the
        TASKMESH_TLS_* variables, which child processes inherit). An address without a
        password uses $TASKMESH_REDIS_PASSWORD, if set (it stays out of `url`)."""
        self.url = url
        self.keys = Keys(prefix)
        connection_kwargs = {**tls_connection_kwargs(url, tls), **connection_kwargs}
        password = env_password(url)
        if password is not None:
            connection_kwargs.setdefault("password", password)
        self._sentinel: redis.sentinel.Sentinel | None = None
        self._wait_replicas = 0
        self._wait_timeout_ms = 0
        self._skip_wait_until = 0.0
        if url.startswith(f"{SENTINEL_SCHEME}://"):
            self._sentinel, self.redis = _sentinel_client(url, connection_kwargs)
            self._wait_replicas = config.WAIT_REPLICAS.get()
            self._wait_timeout_ms = config.WAIT_TIMEOUT_MS.get()
        else:
            self.redis = redis.Redis.from_url(
                url, health_check_interval=30, socket_keepalive=True, **connection_kwargs
            )
        self.scripts = Scripts(self.redis)

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
    def primary(self) -> tuple[str, int] | None:
        """The (host, port) of the primary the Sentinels name; None without Sentinels."""
        if self._sentinel is None:
            return None
        return self._sentinel.discover_master(parse_sentinel_address(self.url).master_name)

    @translate_errors
    def eviction_policy(self) -> str | None:
        """The server's maxmemory-policy; None when the server allows neither INFO nor
        CONFIG (managed services), which is then trusted."""
        try:  # INFO rather than CONFIG, which the ACL roles may not run
            policy = self.redis.info("memory").get("maxmemory_policy")
            if policy is None:
                policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:  # forbidden: managed services
            return None
        return policy

    @translate_errors
    def cluster_versions(self, mine: dict[str, str]) -> dict[str, str] | None:
        """The versions recorded for the cluster, recording `mine` first on a fresh one
        (SET NX). A role that may not write the key (an ACL driver: the agents, which
        come first, record it) only reads it, and one that may not read it compares
        nothing. None when nothing is recorded (or readable), {} when the record is
        unreadable."""
        key = self.keys.versions()
        try:
            value = self.redis.get(key)
            if value is None:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(key, json.dumps(mine, sort_keys=True), nx=True)
                pipe.get(key)
                _, value = pipe.execute(raise_on_error=False)
                if isinstance(value, Exception):
                    raise value
        except redis.exceptions.NoPermissionError:
            return None
        if value is None:
            return None
        try:
            recorded = json.loads(value)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}

    @translate_errors
    def set_cluster_versions(self, versions: dict[str, str]) -> None:
        """Record the cluster's versions, replacing older ones (a head restarted on the
        data of an earlier cluster)."""
        self.redis.set(self.keys.versions(), json.dumps(versions, sort_keys=True))

    # ---- jobs and functions -------------------------------------------------------

    @translate_errors
    def new_job(self, info: dict[str, str]) -> str:
        number = self.redis.incr(self.keys.jobs())
        job_id = f"{number:08x}"
        self.redis.hset(self.keys.job(job_id), mapping=_fields(info))
        return job_id

    @translate_errors
    def job_infos(self) -> list[dict[str, str]]:
        """Every job's hash with its id and state (SCAN: for the CLI, not hot paths)."""
        out = []
        for key, raw in scan_hashes(self.redis, self.keys.all_jobs(), (b":actors", b":pgs")):
            info = {_text(k): _text(v) for k, v in raw.items()}
            info["job_id"] = _text(key).rpartition(":")[2]
            info["state"] = "FINISHED" if info.get("end_ms") else "RUNNING"
            out.append(info)
        return sorted(out, key=lambda j: j["job_id"])

    @translate_errors
    def end_job(self, job_id: str) -> None:
        """Record the job's end (the first end time stays), add it to the ended jobs
        (the newest ENDED_JOBS_KEPT of them are kept) and tell the agents, which drop its
        queued tasks and kill its running ones. Idempotent."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(self.keys.job(job_id), "end_ms", str(_now_ms()))
        pipe.zadd(self.keys.jobs_ended(), {job_id: _now_ms()}, nx=True)
        pipe.zremrangebyrank(self.keys.jobs_ended(), 0, -ENDED_JOBS_KEPT - 1)
        pipe.publish(self.keys.chan_job_end(), job_id)
        pipe.execute()

    @translate_errors
    def job_ended(self, job_id: str) -> bool:
        return self.redis.zscore(self.keys.jobs_ended(), job_id) is not None

    @translate_errors
    def ended_jobs(self, since_ms: int = 0) -> list[tuple[str, int]]:
        """(job id, end time in ms) of the ended jobs recorded (the newest
        ENDED_JOBS_KEPT), those that ended at `since_ms` or later, oldest first."""
        rows = cast(list, self.redis.zrangebyscore(self.keys.jobs_ended(), since_ms, "+inf",
                                                   withscores=True))
        return [(_text(job_id), int(ms)) for job_id, ms in rows]

    @translate_errors
    def export_function(self, fn_id: str, blob: bytes) -> None:
        self.redis.set(self.keys.fn(fn_id), blob, nx=True)

    @translate_errors
    def get_function(self, fn_id: str) -> bytes | None:
        return _opt_bytes(self.redis.get(self.keys.fn(fn_id)))

    @translate_errors
    def put_package(self, digest: str, blob: bytes) -> None:
        self.redis.set(self.keys.package(digest), blob, nx=True)

    @translate_errors
    def get_package(self, digest: str) -> bytes | None:
        return _opt_bytes(self.redis.get(self.keys.package(digest)))

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
        """The shape queues; a member of the set that is not a shape (written by hand)
        is left out, with a warning once."""
        out = []
        for member in self.redis.smembers(self.keys.shapes()):
            name = _text(member, errors="replace")
            try:
                queues.parse_shape(name)
            except ValueError as e:
                warn_once(f"{self.keys.shapes()} holds {e}: left out")
                continue
            out.append(name)
        return sorted(out)

    @translate_errors
    def ensure_groups(self, shapes: Iterable[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for shape in shapes:
            pipe.xgroup_create(self.keys.queue(shape), GROUP, id="0", mkstream=True)
        _forget_frames(pipe.execute(raise_on_error=False))

    @translate_errors
    def submit_tasks(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """XADD each (queue, fields) entry as given, pipelined in one round trip."""
        self._submit([(queue, None, fields) for queue, fields in entries], ())

    @translate_errors
    def submit(
        self, entries: Sequence[Outgoing], events: Sequence[dict[str, Any]] = (),
    ) -> list[tuple[int, str]]:
        """Send tasks to their queues and method calls to actors in one pipelined round
        trip: one script call per queue or actor, entries in submission order within
        each, and the batch's task events as one entry of the events stream. Returns
        (index, death cause) of calls to dead actors (not appended)."""
        return self._submit([(e.target, e.actor_id, e.entry.to_fields()) for e in entries], events)

    def _submit(self, entries: Sequence[tuple[str, str | None, dict[str, Any]]],
                events: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, (target, actor_id, _) in enumerate(entries):
            groups.setdefault((target, actor_id), []).append(i)

        def queue_commands(pipe: Any) -> None:
            for (target, actor_id), indexes in groups.items():
                args: list[Any] = []
                for i in indexes:
                    fields = entries[i][2]
                    args.append(len(fields))
                    for kv in fields.items():
                        args += kv
                if actor_id is None:
                    pipe.evalsha(self.scripts["submit"].sha, 1, self.keys.queue(target), *args)
                else:
                    pipe.evalsha(self.scripts["actor_call"].sha, 2, self.keys.actor(actor_id),
                                 self.keys.actor_calls(actor_id), *args)
            self.queue_events(pipe, events)  # its reply comes after the scripts': unread

        # Direct (round_trip): a failed send raises, and the submitter keeps the batch
        # for its next try (Runtime._send_batch), as it would after redis-py's retry.
        replies = self.run_scripts(queue_commands, (self.scripts["submit"], self.scripts["actor_call"]),
                                   durable=True, direct=True)
        dead = []
        # The events entry's reply follows the scripts': not read.
        for ((_, actor_id), indexes), reply in zip(groups.items(), replies, strict=False):
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
                    # redis-py types XREADGROUP's group name `str` alone (bytes is sent the same way).
                    pipe.xreadgroup(GROUP, consumer, {self.keys.queue(shape): ">"},  # type: ignore[arg-type]
                                    count=n)
                # Each read's reply on its own: entries one delivered are pending for
                # this consumer whatever another read answered (NOGROUP for a queue
                # whose group is gone), and must not be dropped with its error.
                replies = pipe.execute(raise_on_error=False)
                leased = [e for reply in replies if not isinstance(reply, Exception)
                          for e in parse_entries(reply)]
                error = next((r for r in replies if isinstance(r, Exception)), None)
                if error is not None and not leased:
                    raise error
                if error is not None and _no_group(error):
                    self.ensure_groups(counts)
                if leased or block_ms is None:
                    return leased
            streams: dict[KeyT, StreamIdT] = {self.keys.queue(shape): ">" for shape in counts}
            # redis-py types XREADGROUP's group name `str` alone (bytes is sent the same way).
            reply = client.xreadgroup(GROUP, consumer, streams,  # type: ignore[arg-type]
                                      count=min(counts.values()), block=block_ms)
        except redis.ResponseError as e:
            if not _no_group(e):
                raise
            self.ensure_groups(counts)
            return []
        return parse_entries(reply)

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
            # redis-py types XREADGROUP's group name `str` alone (bytes is sent the same way).
            pipe.xreadgroup(GROUP, consumer, {self.keys.queue(shape): "0"},  # type: ignore[arg-type]
                            count=10_000)
        return [e for reply in _forget_frames(pipe.execute(raise_on_error=False))
                if not isinstance(reply, Exception) for e in parse_entries(reply)]

    @translate_errors
    def own_idle(self, client: redis.Redis, consumer: str, shapes: Sequence[str],
                 min_idle_ms: int) -> list[Leased]:
        """Entries pending for this consumer that nobody touched for min_idle_ms, with
        their fields (XPENDING IDLE, then XCLAIM to the same consumer, which re-checks
        the idle time and resets it)."""
        out = []
        for shape in shapes:
            queue = self.keys.queue(shape)
            rows = client.xpending_range(queue, GROUP, "-", "+", 1000, consumername=consumer,
                                         idle=min_idle_ms)
            ids: list[Any] = [_bytes(cast("bytes | str", row["message_id"])) for row in rows]
            if ids:
                reply = client.xclaim(queue, GROUP, consumer, min_idle_ms, ids)
                out += [Leased(queue, eid, fields) for eid, fields in stream_entries(reply)]
        return out

    @translate_errors
    def complete_tasks(
        self, completions: Sequence[Completion], acks: dict[str, list[bytes]], group: bytes = GROUP,
        then_lease: tuple[str, str, int] | None = None,
    ) -> list[Leased]:
        """Store results + notify owners (one script per task), then ack and delete the
        queue entries, in one pipelined round trip. A crash between the two only re-runs
        a task; the script makes the second result a no-op. A last "object" of kind
        KIND_LINEAGE or KIND_REBUILD carries the task's queue entry (see complete.lua).

        `then_lease` = (shape, consumer, count): the same round trip then leases up to
        `count` entries of that shape's queue for the consumer (a worker under a grant),
        returned."""
        by_owner: dict[tuple[str, bool], list[Completion]] = {}
        for c in completions:
            if c.objects:  # num_returns=0: nothing to store, nobody to notify
                by_owner.setdefault((c.owner, _reports_error(c)), []).append(c)

        def queue_commands(pipe: Any) -> None:
            for (owner, error), batch in by_owner.items():
                keys = [self.keys.done(owner)]
                args: list[Any] = []
                # Kept results are only notified, unless fenced out: all of them in one
                # argument, [[notice, fence data], ...] (see complete.lua), packed with
                # msgpack's old raw strings: the Lua cmsgpack of Redis reads no bin type.
                kept = [(c.notice, c.objects[-1][2] if c.objects[-1][1] == KIND_FENCE else b"")
                        for c in batch if c.kept]
                if kept:
                    args += [msgpack.packb(kept, use_bin_type=False), -2]
                for c in batch:
                    if c.kept:
                        continue
                    args += [c.notice, len(c.objects)]
                    rebuild = any(kind == KIND_REBUILD for _, kind, _ in c.objects)
                    for oid, kind, data in c.objects:
                        if kind not in LINEAGE_KINDS and kind != KIND_FENCE:  # see complete.lua
                            keys.append(self.keys.obj(oid))
                            if rebuild:
                                keys.append(self.keys.obj_loc(oid))
                        args += [kind, data]
                keys.append(self.keys.fence(owner))  # last: see complete.lua
                script = self.scripts.allowing_oom("complete") if error else self.scripts["complete"]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for queue, ids in acks.items():
                if ids:
                    pipe.evalsha(self.scripts["ack"].sha, 1, queue, group, b" ".join(ids))
            if then_lease is not None:
                shape, consumer, count = then_lease
                pipe.xreadgroup(group, consumer, {self.keys.queue(shape): ">"}, count=count)

        scripts = (self.scripts["complete"], self.scripts.allowing_oom("complete"), self.scripts["ack"])
        replies = self.run_scripts(queue_commands, scripts, durable=True, direct=True)
        return parse_entries(replies[-1]) if then_lease is not None and replies else []

    def run_scripts(
        self, queue_commands: Callable[[Any], None], scripts: tuple[Any, ...], *, durable: bool = False,
        direct: bool = False,
    ) -> list:
        """Run a pipeline of EVALSHAs (and other commands). redis-py's pipelined Script
        objects send SCRIPT EXISTS on every execute; we load the scripts only when the
        server lacks them (a restarted or failed-over Redis) and run the EVALSHAs again,
        in order, keeping the other commands' replies: a command that did its work (an
        XREADGROUP that leased an entry) is never sent twice.

        `durable`: other processes act on these writes, so in replicated mode the
        pipeline ends with WAIT (see the module docstring); its reply is not returned.
        `direct`: the commands are only gathered by the pipeline and sent by
        `round_trip` (replies as Redis sends them, no retry: for the per-batch paths,
        whose callers retry)."""
        pipe = self.redis.pipeline(transaction=False)
        queue_commands(pipe)
        waits = durable and self.should_wait()
        if waits:
            pipe.wait(self._wait_replicas, self._wait_timeout_ms)
        commands = list(pipe.command_stack)
        if direct:
            replies = round_trip(self.redis, [args for args, _ in commands])
        else:
            replies = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            _forget_frames([r for r in replies if isinstance(r, Exception)])
            for script in scripts:
                self.redis.script_load(script.script)
            again = [i for i, (args, _) in enumerate(commands) if args[0] in ("EVALSHA", "WAIT")]
            pipe = self.redis.pipeline(transaction=False)
            for i in again:
                args, options = commands[i]
                pipe.execute_command(*args, **options)
            for i, reply in zip(again, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if waits:
            self._note_replicated(int(replies.pop()))
        return replies

    def should_wait(self) -> bool:
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
    def hand_back(self, leased: Sequence[Leased]) -> None:
        """Return leased entries that never started to their queues as they were
        (requeue.lua each, attempt unchanged), in one round trip."""
        def queue_commands(pipe: Any) -> None:
            for item in leased:
                pipe.evalsha(self.scripts["requeue"].sha, 1, item.queue,
                             *_requeue_args(item.entry_id, item.fields))

        self.run_scripts(queue_commands, (self.scripts["requeue"],), durable=True)

    @translate_errors
    def requeue(self, queue: str, entry_id: bytes, fields: dict[Any, Any],
                dest: str | None = None) -> None:
        """Ack a leased entry of `queue` and add it again (to `dest` when given): one script."""
        self.scripts["requeue"](keys=[queue] if dest is None else [queue, dest],
                                args=_requeue_args(entry_id, fields))

    @translate_errors
    def queue_stats(self, names: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        """queue -> (queued, running): entries not yet leased, and leased not yet acked;
        of the shape queues, or of the queues `names` (`node:<id>`, `pg:<id>:<bundle>`)."""
        shapes = self.shapes() if names is None else list(names)
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
    def publish_cancel(self, task_id: str, force: bool, recursive: bool = True) -> None:
        self.redis.publish(self.keys.chan_cancel(), f"{task_id} {int(force)} {int(recursive)}")

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
        streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", reply or [])
        return [(eid, notice) for _, entries in streams for eid, fields in entries
                for notice in notices_of(fields)]

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

    @translate_errors
    def owners_gone(self, tags: Sequence[str]) -> None:
        """These processes ended: complete.lua stores no result for them from now on
        (field GONE_FENCE of their fence hash, kept FENCE_TTL_MS), so a task of theirs
        that finishes later leaves neither an object nor a done stream behind."""
        pipe = self.redis.pipeline(transaction=False)
        for tag in tags:
            pipe.hset(self.keys.fence(tag), GONE_FENCE, 1)
            pipe.pexpire(self.keys.fence(tag), FENCE_TTL_MS)
        pipe.execute()

    # ---- nodes --------------------------------------------------------------------------

    @translate_errors
    def register_node(self, node_id: str, info: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.node(node_id), mapping=_flat(info))
        pipe.sadd(self.keys.nodes_all(), node_id)
        pipe.execute()
        self.heartbeat(node_id, None)

    @translate_errors
    def heartbeat(self, node_id: str, available: dict[str, float] | None) -> int:
        """Refresh this node's heartbeat (and free resources when they changed);
        returns how many nodes are alive, or -1 when this node was declared dead."""
        keys = [self.keys.nodes_alive(), self.keys.node(node_id)]
        # Over maxmemory too (it grows nothing): a full Redis must not make nodes look dead.
        return int(self.scripts.allowing_oom("heartbeat")(keys=keys, args=[
            node_id, "" if available is None else json.dumps(available)]))

    @translate_errors
    def set_node_fields(self, node_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(self.keys.node(node_id), mapping=_flat(fields))

    @translate_errors
    def unregister_node(self, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.nodes_alive(), node_id)
        pipe.hset(self.keys.node(node_id), mapping=_fields({"state": "DEAD", "end_ms": _now_ms()}))
        pipe.execute()

    @translate_errors
    def nodes(self) -> list[dict[str, Any]]:
        """Every node that has a hash, with `alive` and `last_heartbeat_ms` added."""
        scored = cast("list[tuple[bytes, float]]", self.redis.zrange(
            self.keys.nodes_alive(), 0, -1, withscores=True))
        alive = {_text(m): int(s) for m, s in scored}
        out = []
        for _, raw in scan_hashes(self.redis, self.keys.node("*")):
            info: dict[str, Any] = {_text(k, "replace"): _text(v, "replace") for k, v in raw.items()}
            if "node_id" not in info:
                continue
            bad = []
            for field in ("resources_total", "resources_available"):
                try:
                    info[field] = node_resources(info.get(field), field)
                except WireError as e:
                    info[field] = {}
                    bad.append(str(e))
            if not info.get("pid", "0").isdigit():
                bad.append(f"node field 'pid' must be a process id, got {info['pid'][:60]!r}")
                info["pid"] = "0"
            info["last_heartbeat_ms"] = alive.get(info["node_id"])
            info["alive"] = info["node_id"] in alive and info.get("state") == "ALIVE"
            if bad:  # unusable: listed, but as a node that is not alive
                info["alive"], info["malformed"] = False, "; ".join(bad)
                warn_once(f"node {info['node_id']} is left out: its hash's {info['malformed']}")
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
        return self.scripts["renew_lease"](keys=[self.keys.monitor()], args=[holder, ttl_ms]) == 1

    @translate_errors
    def driver_alive(self, tag: str, job_id: str) -> None:
        self.scripts.allowing_oom("driver_alive")(keys=[self.keys.drivers()], args=[f"{tag} {job_id}"])

    @translate_errors
    def driver_gone(self, tag: str, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.drivers(), f"{tag} {job_id}")
        pipe.unlink(self.keys.borrows(tag))  # see process_holds
        pipe.execute()

    @translate_errors
    def silent_drivers(self, now_ms: int, timeout_ms: int) -> list[tuple[str, str]]:
        """(owner tag, job id) of drivers whose last heartbeat is older than the timeout."""
        return self._drivers(now_ms - timeout_ms)

    @translate_errors
    def drivers(self) -> list[tuple[str, str]]:
        """(owner tag, job id) of every driver that has not ended."""
        return self._drivers("+inf")

    def _drivers(self, before: float | str) -> list[tuple[str, str]]:
        members = cast("list[bytes]", self.redis.zrangebyscore(self.keys.drivers(), "-inf", before))
        out = []
        for member in members:
            tag, _, job_id = _text(member).partition(" ")
            out.append((tag, job_id))
        return out

    @translate_errors
    def dead_letter_count(self) -> int:
        """How many entries the dead-letter stream holds."""
        return int(self.redis.xlen(self.keys.deadletter()))

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
        for shape, reply in zip(shapes, replies, strict=True):
            if isinstance(reply, Exception):  # no group yet: nobody consumes it
                continue
            consumers[shape] = {_text(c["name"]): int(c["pending"]) for c in reply}
        return Liveness({m.decode(): int(score) for m, score in alive}, consumers,
                        seconds * 1000 + micros // 1000)

    @translate_errors
    def mark_node_dead(self, node_id: str, cutoff_ms: int, cause: str) -> bool:
        """DEAD if its heartbeat is still at or before cutoff_ms; True if this call did it."""
        keys = [self.keys.nodes_alive(), self.keys.node(node_id), self.keys.nodes_lost()]
        return self.scripts["mark_node_dead"](
            keys=keys, args=[node_id, cutoff_ms, _now_ms(), cause]) == 1

    @translate_errors
    def pending_ids(self, shape: str, consumer: str, count: int) -> list[bytes]:
        """Ids of the oldest `count` entries of a queue pending for one consumer (none
        where the queue or its group is gone: Redis lost its data)."""
        try:
            rows = self.redis.xpending_range(self.keys.queue(shape), GROUP, "-", "+", count,
                                             consumername=consumer)
        except redis.ResponseError as e:
            if not _no_group(e):
                raise
            return []
        return [_bytes(cast("bytes | str", row["message_id"])) for row in rows]

    @translate_errors
    def claim(self, shape: str, ids: Sequence[bytes], consumer: str, min_idle_ms: int) -> list[Leased]:
        """XCLAIM the entries idle for at least min_idle_ms. A claim resets the idle time,
        so of two claimants racing for one entry only the first gets it."""
        queue = self.keys.queue(shape)
        reply = self.redis.xclaim(queue, GROUP, consumer, min_idle_ms, list(ids))
        return [Leased(queue, eid, fields) for eid, fields in stream_entries(reply)]

    @translate_errors
    def drop_consumer(self, shape: str, consumer: str) -> bool:
        """Delete a consumer from a queue's group if nothing is pending for it (True
        where the queue or its group is gone, and the consumer with it)."""
        try:
            return self.scripts["drop_consumer"](
                keys=[self.keys.queue(shape)], args=[GROUP, consumer]) == 1
        except redis.ResponseError as e:
            if not _no_group(e):
                raise
            return True


def _no_group(error: Exception) -> bool:
    """Whether a reply says a queue's consumer group (or the queue) does not exist."""
    return "NOGROUP" in str(error)


def _requeue_args(entry_id: bytes, fields: Mapping[Any, Any]) -> list[Any]:
    """requeue.lua's ARGV: the group, the leased entry's id, the new entry's fields."""
    args: list[Any] = [GROUP, entry_id]
    for k, v in fields.items():
        args += [k, v]
    return args


def _reports_error(c: Completion) -> bool:
    """Whether a completion stores only errors (see _KIND_ERROR); its first object says
    no at once for a task that returned a value."""
    return c.objects[0][1] == _KIND_ERROR and all(kind in (_KIND_ERROR, KIND_FENCE)
                                                  for _, kind, _ in c.objects)
