"""The Redis connection, the key schema and the Lua scripts: the only module that knows
what a taskmesh key looks like.

Key schema (every key starts with the cluster prefix, `tm` by default; `{owner}` is the
8-hex-digit tag of the process that owns a task or object, a Redis Cluster hash tag so that
one Lua script can touch a task's objects and its owner's done stream together):

| key                          | type    | holds                                                 | written by            | TTL |
|------------------------------|---------|-------------------------------------------------------|-----------------------|-----|
| tm:node:{node_id}            | hash    | ip, hostname, pid, obj_port (object-transfer server), resources_total/_available (JSON), state, start_ms, end_ms, death_cause, draining_deadline_ms (while it drains), object store usage (store_capacity, store_capacity_note (why that size), store_used, store_objects, store_spilled, store_spilled_objects, store_free_pool; bytes), lease counters: lease_missed_wakes (lease reads left to time out although a queue they left out got room), runs_sent (entries sent to workers), grants (... with a lease grant), grant_entries_settled (entries of exited workers' grants taken back), grant_entries_returned (... of those, handed back unstarted), grant_adoptions (creations leased under a grant) | node agent; monitor marks DEAD | none |
| tm:nodes:alive               | zset    | node_id scored by last heartbeat (ms)                 | node agent            | none |
| tm:nodes:all                 | set     | every node id that registered (alive or dead), for the built-in metrics | node agent | none |
| tm:deadletter                | stream  | malformed queue entries, moved out of their queue: queue, entry, reason, fields (msgpack) | agent, actor worker | capped ~10,000 |
| tm:drivers                   | zset    | "<owner tag> <job id>" of live drivers, scored by last heartbeat (ms, Redis clock) | driver (driver_alive.lua); removed at shutdown or by the monitor | none |
| tm:monitor                   | string  | node_id of the agent holding the failure-monitor lease | monitor (SET NX PX, renew_lease.lua) | lease_ms |
| tm:fn:{fn_id}                | string  | cloudpickled function, exported once per definition   | driver / worker       | none |
| tm:shapes                    | set     | resource shapes that have a queue ("CPU=1")           | submitter             | none |
| tm:q:{shape}                 | stream  | pending tasks of one shape; group `agents`, one consumer per node (+ one per worker holding a lease grant, `<node_id>:<pid>`; + `monitor`, holding dead nodes' entries while it settles them); fields task, name, attempt, spec, args (+ kind, ev, rebuild: see _base/wire.py QueueEntry) | submitter; agents and granted workers ack+delete | none |
| tm:q:node:{node_id}          | stream  | tasks and actor creations for one node (node affinity, SPREAD, data locality); same group and fields as a shape queue plus shape (the demand) and soft (1: may run elsewhere: handed back to its shape queue when the node cannot start it soon or dies) | submitter; the node's agent | deleted when the node is settled |
| tm:q:pg:{pg_id}:{bundle}     | stream  | tasks and actor creations for one bundle of a placement group (`any`: for any of its bundles); fields as a node queue's | submitter; agents hosting the bundle | deleted with the group |
| tm:node_reserved:{node_id}   | hash    | placement-group bundles reserved on the node: "<pg>:<bundle>" -> resources (JSON) | reserve_pg / remove_pg scripts | deleted when the node is settled |
| tm:pinned                    | set     | the node and bundle queue names (node:<id>, pg:<id>:<bundle>), for the failure monitor | agent, placement_group | none |
| tm:pg:{pg_id}                | hash    | name, namespace, strategy, bundles (JSON list), bundle_count, state (PENDING/CREATED/RESCHEDULING/REMOVED), bundle_nodes (JSON index -> node), job_id, detached, created_ms | placement_group; reserve_pg / remove_pg scripts | deleted when its job ends (non-detached) |
| tm:pgs                       | set     | every placement group id (placement_group_table)      | placement_group       | none |
| tm:pgs:pending               | set     | groups waiting for room (placed by the monitor when it appears) | placement_group; reserve_pg script | none |
| tm:named_pg:{namespace}      | hash    | placement group name -> id                            | placement_group       | none |
| tm:job:{job_id}:pgs          | set     | the job's non-detached placement groups (removed when it ends) | placement_group | none |
| tm:{owner}:obj:{object_id}   | hash    | kind (value/error/shm/actor), data (serialized value; for shm "<size> <node_id>" of the node that made it; for actor, a non-detached actor's token, the actor id), size (bytes), held (1 while the owner holds a ref); for a task's shm result also lineage (its queue entry, msgpack: run again when every copy is lost) and, while that runs, state "rebuilding" (no kind/data then) | completing worker or agent (a small result only if its ref left its owner before it came: otherwise its owner keeps it and stores it when the ref leaves, Store.store_kept), put; reconstruct.lua; create_actor.lua (tokens) | deleted when nobody holds it (a freed token ends its actor) |
| tm:{owner}:obj:{object_id}:loc | set   | other nodes holding a shared-memory copy (fetched there) | the fetching process | deleted with the object |
| tm:{owner}:obj:{object_id}:refs | hash  | holders besides the owner -> count: `p:<tag>` a process that borrowed a ref, `o:<object_id>` an object containing it | release.lua | deleted when empty |
| tm:{owner}:obj:{object_id}:nested | set | refs the object contains (it holds them as `o:<object_id>`) | the process that stored it | deleted with the object |
| tm:{tag}:borrows             | set     | objects the process `tag` holds as a borrower (released for it if it dies) | that process | deleted when it ends |
| tm:{owner}:gen:{task_id}     | string  | items of a streaming generator call its caller has taken (generator backpressure: the generator waits while too many are not) | the caller | 1 h; deleted when the call ends and its generator is dropped |
| tm:{owner}:done              | stream  | completion notices for the owner's tasks (fields 1, 2, ...: up to 64 per entry) | completion script | owner trims |
| tm:{owner}:fence             | hash    | task_id -> lowest attempt whose results are still accepted: set when the monitor retries or fails a task of a dead node, so a late completion of the old attempt (a node cut off, not dead) is ignored; field `*`: the owner is gone (ended or died), none of its results is stored any more | monitor, owner's end, agent for its exited workers (Store.owners_gone); read by complete.lua and get_objects | 1 day after the last fence |
| tm:job:{job_id}              | hash    | driver pid/host, namespace, start_ms, end_ms          | driver                | none |
| tm:jobs                      | counter | last job number handed out                            | driver                | none |
| tm:jobs:ended                | zset    | ended jobs scored by end time (ms): agents drop their queued tasks when leased, kill their running ones, and load the set when they start | Store.end_job (driver shutdown, monitor) | the newest 10,000 kept |
| tm:actor:{actor_id}          | hash    | class_name, state (PENDING/ALIVE/RESTARTING/DEAD), node_id, pid, restarts (restarts_drained of them because their node was drained), max_restarts, no_restart (killed: never comes back), death_cause, name, namespace, shape, spec | driver, agent, actor worker | none |
| tm:actors                    | set     | every actor id created (its hash says its state), for the built-in metrics | create_actor script | none |
| tm:actor:{actor_id}:calls    | stream  | the actor's pending method calls (fields task, name, attempt, spec, args); group `actor`, consumer = actor id | caller; actor worker acks | deleted when the actor dies |
| tm:node_actors:{node_id}     | set     | actors that became ALIVE on the node (recovered when it dies) | actor worker | deleted when the node is settled |
| tm:node_procs:{node_id}      | set     | owner tags of the node's worker processes (their holds are released when the node dies) | worker at start; agent removes | deleted when the node is settled |
| tm:nodes:lost                | set     | nodes declared dead whose actors the monitor has not recovered yet | mark_node_dead script; monitor | none |
| tm:named:{namespace}         | hash    | actor name -> actor id                                | create_actor / actor_down scripts | none |
| tm:job:{job_id}:actors       | set     | actors created by the job (killed when it ends unless detached) | create_actor script | none |
| tm:chan:node:{node_id}       | pub/sub | orders for one node's agent: `kill <actor_id>`, `free <object_id> ...` (drop shared-memory copies) | kill, freeing process | -   |
| tm:chan:cancel               | pub/sub | `<task_id> <force 0/1> <recursive 0/1>`: agents drop the task if queued, interrupt (SIGINT) or kill its worker if running, tell their actors | taskmesh.cancel | -   |
| tm:chan:job_end              | pub/sub | `<job_id>`: the job ended; agents drop its queued tasks and kill its running ones (tasks of a detached actor's process apart) and tell their workers | Store.end_job | -   |
| tm:chan:shapes               | pub/sub | a new shape queue exists (agents start reading it)   | submitter             | -   |
| tm:chan:log:{job_id}         | pub/sub | worker stdout/stderr lines for the job's driver       | worker                | -   |
| tm:versions                  | string  | JSON {python: "3.11", taskmesh: "0.1.0", protocol: "2"}: the versions every driver and node agent must run (checked when one joins, see _base/versions.py) | the first process to meet the cluster (SET NX); `start --head` (SET) | none |
| tm:_secret:transfer          | string  | the cluster secret object-transfer servers challenge for (hex); `_` keys are hidden from the readonly ACL role | first node agent (SET NX) | none |
| tm:events                    | stream  | task events (field e: a msgpack list of up to 100 {task_id, attempt, state, ts (µs), ...}: one entry per flushed batch; see _core/events.py) for `list tasks`, `summary`, `timeline` | submitter (with its submissions), worker (background flush), agent (retries) | capped ~2,000 entries (TASKMESH_TASK_EVENTS_MAXLEN) |
| tm:task_counts               | hash    | "<counter> <function name>" -> count; counters submitted, retried, started, finished, failed (wire.task_counts), added with each batch of task events (the same pipeline) | submitter, worker, agent (with their events) | none |
| tm:logs:{job_id}             | stream  | the job's worker stdout/stderr (field l: msgpack {pid, node, actor, lines}), for `taskmesh logs` on any machine | worker (with the pub/sub message) | capped ~5,000 entries; 7 days after its last line |
| tm:metrics                   | hash    | metric name -> JSON definition (type, description, tag_keys, boundaries) | util.metrics flush | none |
| tm:metric:{name}             | hash    | one metric's series: JSON tags (+ `\x1f`bucket/sum/count for histograms) -> value | util.metrics flush (HINCRBYFLOAT/HSET) | none |
| tm:pkg:{digest}              | string  | a zipped runtime_env working_dir / py_modules entry, named by the SHA-1 of the zip | the submitting process (SET NX) | none (content-addressed) |
| tm:submission:{submission_id} | hash  | a submitted job (`taskmesh job submit`, JobSubmissionClient): submission_id, entrypoint, status (PENDING/RUNNING/STOPPED/SUCCEEDED/FAILED), message, error_type, start_time/end_time (ms), metadata, runtime_env (JSON), entrypoint_num_cpus/_gpus, entrypoint_resources (JSON), actor_id (its supervisor actor), driver_node_id, driver_pid, driver_exit_code, job_id (its first driver's job), stop_requested | submitting client (submission_new.lua); supervisor and stop_job (submission_status.lua); its driver's init (job_id) | deleted by delete_job |
| tm:submission:{submission_id}:logs | stream | the driver's stdout and stderr lines (field l: a batch of lines) | the job's supervisor | capped ~10,000 entries; deleted with the job |
| tm:submission:{submission_id}:drivers | set | "<owner tag> <job id>" of each driver the entrypoint started (`init()` with $TASKMESH_SUBMISSION_ID): ended by the supervisor when the entrypoint exits without shutting them down | driver at init | deleted with the job |
| tm:submissions               | zset    | submission ids scored by submission time (ms)        | submitting client     | none |

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
actor id is its creator's tag + 16 hex digits; the actor's keys carry it as hash tag. The
id grammar is in _base/ids.py; queue names (what follows `tm:q:`: a shape, a node's or a
bundle's queue) are built and parsed in _base/queues.py; the fields of queue and call
stream entries are encoded in _base/wire.py.
"""  # noqa: E501 - the key table: one row per key (tests/test_store.py reads it)

from __future__ import annotations

from dataclasses import dataclass

from taskmesh._base import queues
from taskmesh._base.ids import owner_of


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key; the prefix appears nowhere else."""

    prefix: str = "tm"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def nodes_alive(self) -> str:
        return f"{self.prefix}:nodes:alive"

    def nodes_all(self) -> str:
        return f"{self.prefix}:nodes:all"

    def drivers(self) -> str:
        return f"{self.prefix}:drivers"

    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    def monitor(self) -> str:
        return f"{self.prefix}:monitor"

    def versions(self) -> str:
        return f"{self.prefix}:versions"

    def fn(self, fn_id: str) -> str:
        return f"{self.prefix}:fn:{fn_id}"

    def shapes(self) -> str:
        return f"{self.prefix}:shapes"

    def queue(self, name: str) -> str:
        """The stream of a queue, by its name (a shape, a node's or a bundle's queue:
        the grammar of names is in _base/queues.py)."""
        return f"{self.prefix}:q:{name}"

    def queue_name(self, key: str) -> str:
        """The name of the queue whose stream is `key` (the inverse of `queue`)."""
        return key[len(self.queue("")):]

    def node_queue(self, node_id: str) -> str:
        return self.queue(queues.node_queue(node_id))

    def bundle_queue(self, pg_id: str, bundle: int | str) -> str:
        return self.queue(queues.bundle_queue(pg_id, bundle))

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
        return f"{self.prefix}:{{{owner_of(object_id)}}}:obj:{object_id}"

    def all_objects(self) -> str:
        """SCAN pattern matching every object hash (and location set)."""
        return f"{self.prefix}:{{*}}:obj:*"

    def obj_loc(self, object_id: str) -> str:
        return f"{self.prefix}:{{{owner_of(object_id)}}}:obj:{object_id}:loc"

    def obj_refs(self, object_id: str) -> str:
        return f"{self.prefix}:{{{owner_of(object_id)}}}:obj:{object_id}:refs"

    def obj_nested(self, object_id: str) -> str:
        return f"{self.prefix}:{{{owner_of(object_id)}}}:obj:{object_id}:nested"

    def owned_objects(self, tag: str) -> str:
        """SCAN pattern matching the object keys of one owner."""
        return f"{self.prefix}:{{{tag}}}:obj:*"

    def borrows(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:borrows"

    def done(self, owner: str) -> str:
        return f"{self.prefix}:{{{owner}}}:done"

    def gen_consumed(self, task_id: str) -> str:
        return f"{self.prefix}:{{{owner_of(task_id)}}}:gen:{task_id}"

    def fence(self, owner: str) -> str:
        return f"{self.prefix}:{{{owner}}}:fence"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def all_jobs(self) -> str:
        """SCAN pattern matching every job hash (and each job's actor and group sets)."""
        return f"{self.prefix}:job:*"

    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def chan_shapes(self) -> str:
        return f"{self.prefix}:chan:shapes"

    def chan_cancel(self) -> str:
        return f"{self.prefix}:chan:cancel"

    def jobs_ended(self) -> str:
        return f"{self.prefix}:jobs:ended"

    def chan_job_end(self) -> str:
        return f"{self.prefix}:chan:job_end"

    def chan_log(self, job_id: str) -> str:
        return f"{self.prefix}:chan:log:{job_id}"

    def actor(self, actor_id: str) -> str:
        return f"{self.prefix}:actor:{{{actor_id}}}"

    def actors(self) -> str:
        return f"{self.prefix}:actors"

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

    def task_counts(self) -> str:
        return f"{self.prefix}:task_counts"

    def logs(self, job_id: str) -> str:
        return f"{self.prefix}:logs:{job_id}"

    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    def metric(self, name: str) -> str:
        return f"{self.prefix}:metric:{name}"

    def package(self, digest: str) -> str:
        return f"{self.prefix}:pkg:{digest}"

    def submission(self, submission_id: str) -> str:
        return f"{self.prefix}:submission:{submission_id}"

    def submission_logs(self, submission_id: str) -> str:
        return f"{self.prefix}:submission:{submission_id}:logs"

    def submission_drivers(self, submission_id: str) -> str:
        return f"{self.prefix}:submission:{submission_id}:drivers"

    def submissions(self) -> str:
        return f"{self.prefix}:submissions"
