"""The node agent: registers the node, leases tasks from the shape queues, runs them on a
pool of worker processes and stores their results.

Threads: the main thread multiplexes the workers' sockets and flushes completions to
Redis in pipelined batches; the lease thread blocks in XREADGROUP for as many tasks as
the node has room for; the heartbeat thread keeps the node alive in `tm:nodes:alive`.
A new shape queue is announced on a channel; the agent then wakes its blocked lease
read with CLIENT UNBLOCK, so there is no polling for shapes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from taskmesh import scheduler, security
from taskmesh._base import config, queues, wire
from taskmesh._base.config import temp_root
from taskmesh._base.wire import ActorSpec, QueueEntry
from taskmesh._core import failure as _failure
from taskmesh._core import lifecycle
from taskmesh.exceptions import StoreUnavailableError
from taskmesh.objects.capacity import Capacity, default_capacity
from taskmesh.objects.plane import sweep_orphans
from taskmesh.objects.shm import ShmStore, StoreConfig, default_spill_root, reap_dead_stores
from taskmesh.objects.transfer import TransferServer
from taskmesh.store import KIND_FENCE, Completion, Leased, Store, keep_listening, retry_transient
from taskmesh.store.client import ENDED_JOBS_KEPT
from taskmesh.store.outage import Outage
from taskmesh.workers import process as _process
from taskmesh.workers.actor_runner import DRAIN_SIGNAL
from taskmesh.workers.monitor import Monitor
from taskmesh.workers.resources import NodeResources, starved_pools

log = logging.getLogger("taskmesh.agent")

LEASE_BLOCK_MS = 2000
SHORT_BLOCK_MS = 100
HEARTBEAT_S = 1.0
# A task leased ahead of time that has waited this long for a worker here goes back to
# its queue, so that a node busy with long tasks does not sit on work others could run.
HANDBACK_S = 0.5
# A worker told to cancel its running task with force cancels the task's children and
# exits; one still running it this long after is killed.
FORCE_GRACE_S = 2.0
# How long a put waits for room in a full object store before ObjectStoreFullError.
ENV_FULL_WAIT_S = config.OBJECT_STORE_FULL_WAIT_S.name
# Shared-memory objects whose metadata is gone (a lost free order) are removed this often.
SWEEP_EVERY_S = 10.0
# How long a drained agent (SIGTERM, `taskmesh stop`) lets its running tasks finish before
# it hands them back to their queues (they run again elsewhere, no retry counted).
ENV_GRACE_PERIOD_S = config.GRACE_PERIOD_S.name
DEFAULT_GRACE_PERIOD_S = config.GRACE_PERIOD_S.default
# Actors killed with no_restart are looked for this often, in case the kill order (pub/sub,
# fire-and-forget) did not reach this agent.
KILLED_ACTORS_EVERY_S = 5.0
# An exited worker's grant consumers are settled again this long after it exited (a read
# it sent just before dying may be served after the first pass), then deleted.
SETTLE_AGAIN_S = 2.0
_UNKNOWN = object()  # a worker consumer with no running slot: what it ran is unknown
# Ended jobs are read again this often (their pub/sub message may have been lost), those
# that ended since the last read less this margin (the end times come from the clocks
# of the processes that recorded them).
ENDED_JOBS_EVERY_S = 5.0
ENDED_JOBS_MARGIN_MS = 60_000
# Worker processes are checked for having ended this often, besides the EOF on their
# socket, which never comes while a process they forked below Python holds a copy.
REAP_EVERY_S = 0.5


@dataclass(slots=True)
class _Task:
    lease: Leased  # as read from its queue
    entry: QueueEntry  # ... decoded once, when leased
    demand: dict[str, float]
    leased_at: float = field(default_factory=time.monotonic)
    queue: str = ""  # the queue's name (_base/queues.py): a shape's, a node's or a bundle's
    pool: str | None = None  # the bundle pool ("<pg>:<index>") whose resources it uses, once dispatched
    gpus: list[int] = field(default_factory=list)  # GPU ids assigned while it runs

    @property
    def soft(self) -> bool:
        """A node-queue entry that may run on another node (handed back when stale)."""
        return self.entry.soft

    @property
    def creates_actor(self) -> bool:
        return self.entry.creates_actor


@dataclass(slots=True, eq=False)
class _WorkerHandle:
    proc: subprocess.Popen
    conn: Connection
    ready: bool = False
    task: _Task | None = None
    blocked: bool = False
    actor_id: str | None = None  # set while this worker is an actor's dedicated process
    held: dict[str, float] = field(default_factory=dict)
    exiting: bool = False  # the actor is exiting on purpose: no restart
    pool: str | None = None  # the bundle the actor's held resources came from
    gpus: list[int] = field(default_factory=list)  # GPU ids the actor holds
    tag: str | None = None  # the worker runtime's owner tag (its objects and borrows)
    # A lease grant: the task it was sent with (its resources stay taken for the worker
    # while it leases more of that shape itself), until the worker's GrantEnded.
    grant: _Task | None = None
    leased_from: set[str] = field(default_factory=set)  # the shapes it had grants for
    grant_ending: bool = False  # told to end its grant (EndGrant) for a task waiting for its CPU
    slot: _process.RunningSlot | None = None  # the entry it runs, of those it leased itself

    @property
    def running(self) -> _Task | None:
        """What its resources are taken for: the task sent to it, or its grant's."""
        return self.task or self.grant


def _not_run_yet(handle: _WorkerHandle) -> bool:
    """Whether the worker still runs, or has yet to run, the task sent to it. The
    agent writes the task's entry into the running slot as it sends it and the worker
    clears it once the task has run: a worker that already ran it (its result maybe
    already stored, by itself under a grant) is not killed for its job's end, which
    would lose the task's events; its Done is on the way. Unknown without a slot, or
    for an actor's creation: True."""
    task = handle.task
    if task is None:
        return False
    if handle.slot is None or task.creates_actor:
        return True
    return handle.slot.get() == task.lease.entry_id


@dataclass(slots=True)
class _Outbox:
    """Completions and acks waiting for the next pipelined flush."""

    completions: list[Completion] = field(default_factory=list)
    acks: dict[str, list[bytes]] = field(default_factory=dict)
    requeues: list[tuple[_Task, int]] = field(default_factory=list)
    crashed: list[_Task] = field(default_factory=list)  # its worker died running it

    def ack(self, task: _Task) -> None:
        self.acks.setdefault(task.lease.queue, []).append(task.lease.entry_id)


def detect_node_ip(redis_url: str) -> str:
    """The local address this machine uses to reach Redis (Ray's trick, aimed at Redis)."""
    from urllib.parse import urlparse

    host = urlparse(redis_url).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError as e:
        log.warning("could not find the address that reaches Redis at %s (%s); registering "
                    "127.0.0.1, which other machines cannot reach: pass --node-ip-address", host, e)
        return "127.0.0.1"


def object_store_config(capacity_bytes: int | None, spill_dir: str | None) -> StoreConfig:
    """The node's object-store limits: by default 30 % of the memory the node may use
    (as Ray), no more than its shared memory holds (see objects/capacity.py); spilling
    under the temp dir unless a directory is given (each node spills into its own
    subdirectory)."""
    if capacity_bytes:
        capacity = Capacity(capacity_bytes, "--object-store-memory")
    else:
        capacity = default_capacity(config.shm_root())
    log.info("object store capacity: %d bytes (%s)", capacity.bytes, capacity.note)
    return StoreConfig(capacity_bytes=capacity.bytes, capacity_note=capacity.note,
                       spill_dir=Path(spill_dir) if spill_dir else default_spill_root(),
                       full_wait_s=config.OBJECT_STORE_FULL_WAIT_S.get())


def grace_period_from_env() -> float:
    return config.GRACE_PERIOD_S.get()


class NodeAgent:
    def __init__(
        self,
        address: str,
        *,
        node_id: str | None = None,
        resources: dict[str, float],
        prefix: str = "tm",
        node_ip: str | None = None,
        max_workers: int | None = None,
        object_store: StoreConfig | None = None,
        grace_period_s: float | None = None,
    ):
        self.address = address
        self.grace_period_s = grace_period_from_env() if grace_period_s is None else grace_period_s
        if not isinstance(self.grace_period_s, (int, float)) or self.grace_period_s < 0:
            raise ValueError(f"grace_period_s must be a number of seconds >= 0, got {grace_period_s!r}")
        self._draining = False
        self._lease_parked = threading.Event()  # the lease thread saw the drain
        self.prefix = prefix
        self.store = Store(address, prefix=prefix)
        self.outage = Outage(address, log)  # Redis failures of the loops, logged at a capped rate
        self.node_id = node_id or os.urandom(8).hex()
        self.node_ip = node_ip or detect_node_ip(address)
        self.total = {k: float(v) for k, v in resources.items()}
        self.resources = NodeResources(self.total)
        cpus = int(self.total.get("CPU", 0))
        self.pool_size = max(cpus, 1)
        self.max_workers = max_workers or max(4 * self.pool_size, 16)

        self._cond = threading.Condition()
        self._backlog: collections.deque[_Task] = collections.deque()
        # Workers whose task's arguments arrived while its CPU was lent out (Reacquire):
        # they get it back, in this order, before anything new starts in their pool.
        self._resuming: list[_WorkerHandle] = []
        self._workers: dict[Connection, _WorkerHandle] = {}
        self._outbox = _Outbox()
        self._acking: set[bytes] = set()  # entry ids of the flush in progress
        # Task ids cancelled recently (their results are stored already): skipped when
        # leased, acked rather than retried when their worker dies.
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Ended jobs (tm:jobs:ended): their tasks are acked when leased, never run, and
        # acked rather than retried when their worker dies (_core/lifecycle.dropped_with_job).
        self._ended_jobs = lifecycle.EndedJobs(self.store)
        self._ended_read_ms = 0  # the latest end time read from tm:jobs:ended
        self._recover_own = False
        # How often the node's pending entries in Redis are compared with what this agent
        # knows, and how long one must have been left alone to be taken back then.
        self._reconcile_s = config.RECONCILE_S.get()
        self._next_reconcile = time.monotonic() + self._reconcile_s
        self._shapes: list[str] = []
        self._reload_shapes = True
        self._pinned: list[str] = [queues.node_queue(self.node_id)]  # see NodeResources
        self._reload_bundles = True
        self._stopping = False
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # One selector for the agent's life: worker sockets are added and removed as
        # workers come and go, not re-registered on every loop.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lease_client = self.store.dedicated()
        self._lease_client_id: int | None = None
        self._reading: frozenset[str] | None = None  # queues of the lease read in progress
        self._woken = False  # the read in progress was woken (CLIENT UNBLOCK)
        # Lease counters, reported in the node's hash: reads left to time out although a
        # queue they left out got room (a missed wake-up); entries sent to workers (Run),
        # with a grant; entries of exited workers' grants settled, and of those the ones
        # handed back unstarted; creations adopted.
        self._lease_stats = {"lease_missed_wakes": 0, "runs_sent": 0, "grants": 0,
                             "grant_entries_settled": 0, "grant_entries_returned": 0,
                             "grant_adoptions": 0}
        # (consumer, shape) of exited workers' grants whose entries are still to be
        # settled; a later pass settles what a read sent just before the worker died
        # left there (see _settle_grants).
        self._unsettled: dict[tuple[str, str], float] = {}
        # Exited workers' consumers -> the entry each was running (RunningSlot), or None.
        self._died_running: dict[str, bytes | None] = {}
        self._settling = threading.Lock()
        self._reported_lease_stats: dict[str, int] = {}
        self._pubsub: Any = None
        self._alive_nodes = 1
        self.monitor = Monitor(self.store, self.node_id)
        self.object_store = object_store or StoreConfig()
        self.shm: ShmStore | None = None
        self._reported_usage: dict[str, int] = {}
        self.transfer: TransferServer | None = None

    @property
    def available(self) -> dict[str, float]:
        """The node's own pool (placement-group bundles apart)."""
        return self.resources.available

    # ---- lifecycle ----------------------------------------------------------------------

    def run(self, ready_fd: int | None = None) -> None:
        """Register, serve until SIGTERM (drain: see `drain`; a second one stops at once),
        SIGINT or stop(), then hand back work and exit."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.drain() if not self._draining else self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        _process.enable_stack_dumps(temp_root())
        security.check_server(self.store)
        self.store.ensure_groups(["CPU=1"])
        self.store.register_pinned([queues.node_queue(self.node_id)])
        self._read_ended_jobs()  # a node that joins late never runs a finished job's task
        self._lease_client_id = self._lease_client.client_id()
        # The object store exists before any worker or registration refers to it; the
        # transfer server binds port 0 and the port is registered with the node.
        spill = self.object_store.spill_dir
        for root in reap_dead_stores(spill):
            log.info("removed %s, left by a node agent that died", root)
        self.shm = ShmStore.create_for_node(self.node_id, dataclasses.replace(
            self.object_store, spill_dir=spill / self.node_id if spill else None))
        self.transfer = TransferServer(self.shm, host=self.node_ip, port=0,
                                       secret=security.transfer_secret(self.store))
        self.transfer.start()
        with self._cond:
            for _ in range(self.pool_size):
                self._spawn_worker()
        self.store.register_node(self.node_id, {
            "node_id": self.node_id, "ip": self.node_ip, "hostname": socket.gethostname(),
            "pid": str(os.getpid()), "obj_port": str(self.transfer.port), "state": "ALIVE",
            "start_ms": str(int(time.time() * 1000)),
            "resources_total": json.dumps(self.total), "resources_available": json.dumps(self.total),
        })
        self._pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{self.store.keys.chan_shapes(): self._on_new_shape,
                                  self.store.keys.chan_node(self.node_id): self._on_order,
                                  self.store.keys.chan_cancel(): self._on_cancel,
                                  self.store.keys.chan_job_end(): self._on_job_end})
        # The read waits up to sleep_time on the socket (no Redis command): short, since
        # stopping the agent waits for it.
        self._pubsub_thread = self._pubsub.run_in_thread(sleep_time=0.1, daemon=True,
                                                         exception_handler=keep_listening)
        threads = [
            threading.Thread(target=self._lease_loop, name="taskmesh-lease", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="taskmesh-heartbeat", daemon=True),
        ]
        for t in threads:
            t.start()
        log.info("node %s (%s) registered with %s", self.node_id, self.node_ip, self.total)
        if ready_fd is not None:
            os.write(ready_fd, f"{self.node_id}\n".encode())
            os.close(ready_fd)
        try:
            self._io_loop()
        finally:
            self._shutdown(threads)

    def stop(self) -> None:
        """Stop now: running tasks go back to their queues, actors restart elsewhere."""
        self._stopping = True
        self._stopped.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def drain(self) -> None:
        """Stop gracefully, in the background: lease nothing more, hand back the tasks
        leased but not started (attempt unchanged), let the actors finish the calls they
        have read and restart elsewhere (a drain restart max_restarts does not count, as
        Ray's for preempted nodes), let running tasks finish for up to grace_period_s,
        then stop (what still runs is handed back, attempt unchanged)."""
        if self._draining or self._stopping:
            return
        self._draining = True
        threading.Thread(target=self._drain, name="taskmesh-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_period_s
        log.info("draining node %s (grace period %.1f s)", self.node_id, self.grace_period_s)

        def give_up() -> bool:  # a Redis that is gone takes nothing back
            return self._stopping or self.outage.down_for() > 0

        try:
            retry_transient(lambda: self.store.set_node_fields(self.node_id, {
                "draining_deadline_ms": int((time.time() + self.grace_period_s) * 1000)}),
                stop=give_up)
            self._unblock_lease()
            with self._cond:
                self._cond.notify_all()
            self._lease_parked.wait(timeout=max(deadline - time.monotonic(), 0.1))
            with self._cond:
                leased = list(self._backlog)
                self._backlog.clear()
            for task in leased:  # not started: back to its queue, not a retry
                retry_transient(functools.partial(self._requeue, task, task.entry.attempt),
                                stop=give_up)
            signalled: set[int] = set()
            with self._cond:
                while not self._stopping and time.monotonic() < deadline:
                    actors = [h for h in self._workers.values() if h.actor_id is not None]
                    for h in actors:  # finish the calls read, then exit (see actor_runner.py)
                        if h.proc.pid not in signalled:
                            signalled.add(h.proc.pid)
                            h.proc.send_signal(DRAIN_SIGNAL)
                    for h in self._workers.values():
                        if h.grant is not None and h.proc.pid not in signalled:
                            signalled.add(h.proc.pid)
                            h.conn.send_bytes(wire.encode_message(wire.EndGrant()))
                    if not actors and not any(h.running for h in self._workers.values()):
                        break
                    self._cond.wait(0.1)
        except StoreUnavailableError:  # nothing to drain into: stop now
            log.warning("draining node %s: %s; stopping it", self.node_id, self.outage.message())
        except Exception:
            log.exception("draining node %s failed; stopping it", self.node_id)
        self.stop()

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        self._stopping = True
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        self._unblock_lease()
        for t in threads:
            t.join(timeout=3)
        with self._cond:
            handles = list(self._workers.values())
            give_back = list(self._backlog) + [h.task for h in handles if h.task is not None]
            self._backlog.clear()
        _process.stop_processes([h.proc.pid for h in handles], timeout_s=2)
        if self.outage.ongoing(self.store.redis.ping):
            # Nothing can be handed back: once Redis answers again, the failure monitor
            # declares this node dead and retries its work elsewhere.
            log.warning("%s; exiting without handing back this node's work", self.outage.message())
        else:
            try:
                self._hand_back(handles, give_back)
            except StoreUnavailableError as e:  # lost on the way: the same as above
                log.warning("handing back this node's work failed: %r", e)
        try:
            self._pubsub_thread.stop()
            self._pubsub_thread.join(timeout=2)
            self._pubsub.close()
        except Exception:
            pass
        self.store.close()
        if self.transfer is not None:
            self.transfer.stop()
        if self.shm is not None:
            self.shm.destroy()  # this node's copies go with it (readers keep their mappings)

    def _hand_back(self, handles: list[_WorkerHandle], give_back: list[Any]) -> None:
        """Requeue unfinished work, restart this node's actors elsewhere, unregister."""
        self._release_holds([h.tag for h in handles if h.tag is not None])
        for h in handles:  # what workers leased under their grants goes back too
            for shape in h.leased_from:
                try:
                    give_back += self._settle_consumer(
                        queues.worker_consumer(self.node_id, h.proc.pid), shape, hand_back=True)
                except Exception as e:
                    log.warning("handing back what worker %d leased failed: %r", h.proc.pid, e)
        for task in give_back:  # unfinished work goes back to its queue, attempt unchanged
            self._requeue(task, task.entry.attempt)
        for h in handles:  # this node's actors restart elsewhere when they may
            if h.actor_id is not None:
                self._actor_lost(h.actor_id, "it exited" if h.exiting else "its node was stopped",
                                 restart=not h.exiting)
        self._flush()
        try:
            self.monitor.release()
        except Exception as e:
            log.warning("releasing the monitor lease failed: %r", e)
        self.store.unregister_node(self.node_id)

    # ---- workers ------------------------------------------------------------------------

    def _spawn_worker(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ, TASKMESH_ADDRESS=self.address, TASKMESH_NODE_ID=self.node_id,
                   TASKMESH_PREFIX=self.prefix)
        argv = [sys.executable, "-m", "taskmesh.workers.worker_main", "--fd", str(child.fileno())]
        fds = [child.fileno()]
        made = _process.RunningSlot.create()
        slot, slot_fd = made if made is not None else (None, -1)
        if slot is not None:
            argv += ["--slot-fd", str(slot_fd)]
            fds.append(slot_fd)
        try:
            proc = subprocess.Popen(argv, pass_fds=fds, env=env, preexec_fn=_process.set_pdeathsig)
        finally:
            child.close()
            if slot is not None:
                os.close(slot_fd)
        conn = Connection(parent.detach())
        self._workers[conn] = _WorkerHandle(proc, conn, slot=slot)
        self._selector.register(conn, selectors.EVENT_READ)

    def _on_worker_exit(self, handle: _WorkerHandle) -> None:
        with self._cond:
            self._workers.pop(handle.conn, None)
            self._selector.unregister(handle.conn)
            task = handle.task
            if task is not None:
                self._release(task, handle.blocked)
            if handle.grant is not None and handle.grant is not task:
                self._release(handle.grant, handle.blocked)
            handle.grant = None
            consumer = queues.worker_consumer(self.node_id, handle.proc.pid)
            if handle.slot is not None:
                if handle.leased_from:  # what it died running, of what it leased itself
                    self._died_running[consumer] = handle.slot.get()
                handle.slot.close()
            for shape in handle.leased_from:  # now, and once more a little later
                self._unsettled[(consumer, shape)] = time.monotonic() + SETTLE_AGAIN_S
            self.resources.give(handle.pool, handle.held)
            self.resources.free_gpus(handle.gpus, handle.held.get("GPU"))
        handle.conn.close()
        handle.proc.wait()
        if handle.tag is not None:  # exit code 0: it ended on its own (max_calls)
            threading.Thread(target=self._release_holds, args=([handle.tag], handle.proc.returncode != 0),
                             name="taskmesh-release", daemon=True).start()
        if task is not None and task.creates_actor:
            with self._cond:
                self._outbox.ack(task)
            self._actor_lost(task.entry.task,
                             f"its worker (pid {handle.proc.pid}) died while creating it",
                             on_this_node=False)
        elif task is not None:
            log.warning("worker %d died running task %s", handle.proc.pid, task.entry.task)
            self._task_failed(task)
        if handle.leased_from and not self._stopping:
            self._settle_grants(now=True)
        if handle.actor_id is not None and handle.exiting:
            # Exiting on purpose (terminate, exit_actor) but gone before it recorded its
            # death (killed meanwhile, say by the end of its job): record it now.
            self._actor_lost(handle.actor_id, "it exited", restart=False)
        elif handle.actor_id is not None:
            self._actor_lost(handle.actor_id, f"its worker process (pid {handle.proc.pid}) died "
                             f"unexpectedly (exit code {handle.proc.returncode})")
        with self._cond:
            if not self._stopping and self._pool_count() < self.pool_size:
                self._spawn_worker()
            self._dispatch()
            self._cond.notify_all()

    def _settle_grants(self, now: bool = False) -> None:
        """Entries that exited workers leased under their grants and did not complete:
        taken over (XCLAIM) and retried or failed as a task whose worker died (a
        creation goes back as it was). Each consumer is settled when its worker exits
        and once more SETTLE_AGAIN_S later, for a read the worker sent just before dying
        that Redis served after the first pass; then it is deleted. Failures are tried
        again from the heartbeat loop."""
        with self._settling:
            with self._cond:
                due = [(key, at) for key, at in self._unsettled.items() if now or at <= time.monotonic()]
            for (consumer, shape), at in due:
                try:
                    self._settle_consumer(consumer, shape)
                    if at <= time.monotonic() and self.store.drop_consumer(shape, consumer):
                        with self._cond:
                            self._unsettled.pop((consumer, shape), None)
                            if not any(c == consumer for c, _ in self._unsettled):
                                self._died_running.pop(consumer, None)
                except Exception as e:
                    log.warning("settling the entries of worker consumer %s failed: %r", consumer, e)

    def _settle_consumer(self, consumer: str, shape: str, hand_back: bool = False) -> list[_Task]:
        """Claim what `consumer` holds of `shape`'s queue for this node: the entry its
        worker died running is retried or failed (_task_failed), the others it leased
        and never started (or finished without storing) go back as they were; with
        `hand_back` (this node stops) all are returned (requeued by the caller). Without
        a running slot (no memfds), every entry counts as the one it died running."""
        ids = self.store.pending_ids(shape, consumer, 1000)
        if not ids:
            return []
        claimed = _failure.set_aside_malformed(self.store, self.store.claim(shape, ids, self.node_id, 0))
        tasks = [self._new_task(*pair) for pair in claimed]
        if hand_back:
            return tasks
        with self._cond:
            running = self._died_running.get(consumer, _UNKNOWN)
            # Leased but not started (or its result not stored): back to its queue.
            unstarted = [t.creates_actor or running is not _UNKNOWN and t.lease.entry_id != running
                         for t in tasks]
            self._lease_stats["grant_entries_settled"] += len(tasks)
            self._lease_stats["grant_entries_returned"] += sum(unstarted)
        for task, back in zip(tasks, unstarted, strict=True):
            if back:
                retry_transient(functools.partial(self._requeue, task, task.entry.attempt))
            else:
                log.warning("worker %s died running task %s", consumer, task.entry.task)
                self._task_failed(task)
        return []

    def _release_holds(self, tags: list[str], died: bool = True) -> None:
        """A worker is gone: what it held as a borrower, and its own objects' owner
        holds, are released (objects others still hold live on); see
        lifecycle.release_process_holds for `died`."""
        try:
            retry_transient(lambda: lifecycle.release_process_holds(self.store, tags, self.node_id, died))
        except Exception as e:
            log.warning("releasing the refs of exited workers %s failed: %r", tags, e)

    def _pool_count(self) -> int:
        return sum(1 for h in self._workers.values() if h.actor_id is None)

    def _actor_lost(self, actor_id: str, cause: str, on_this_node: bool = True,
                    restart: bool = True) -> None:
        """An actor's process is gone: restart it (max_restarts) or fail its calls."""
        node = self.node_id if on_this_node else ""
        if self._draining and restart:
            cause = "its node was drained"
        try:
            status = retry_transient(lambda: _failure.actor_down(
                self.store, actor_id, restart=restart, cause=f"The actor died: {cause}",
                node_id=node, drain=self._draining))
            log.warning("actor %s: %s; %s", actor_id, cause, status)
        except Exception:
            log.exception("handling the death of actor %s failed", actor_id)

    def _task_failed(self, task: _Task) -> None:
        """The worker running `task` died: retry it while max_retries allows (not when
        it was killed by taskmesh.cancel: its results are stored already; nor when its
        job ended)."""
        entry = task.entry
        with self._cond:
            if entry.events and not task.creates_actor:
                self._outbox.crashed.append(task)
            if entry.task in self._cancelled or lifecycle.dropped_with_job(entry, self._ended_jobs):
                self._outbox.ack(task)
                return
            if _failure.should_retry(entry.spec, entry.attempt):  # type: ignore[arg-type]
                self._outbox.requeues.append((task, entry.attempt + 1))
                return
            self._outbox.completions.append(
                _failure.crash_completion(entry, "pid of worker unknown to the caller"))
            self._outbox.ack(task)

    def _release(self, task: _Task, blocked: bool) -> None:
        demand = dict(task.demand)
        if blocked:  # its CPU was already lent out while it blocked in get
            demand.pop("CPU", None)
        self.resources.give(task.pool, demand)
        self.resources.free_gpus(task.gpus, task.demand.get("GPU"))
        task.gpus = []
        self._wake_lease_for(task.pool)

    def _starved_pools(self, counts: dict[str, int]) -> bool:
        """Whether a pinned queue is left out of this read while tasks (not actors, which
        hold their resources for long) run in its pool. Under self._cond."""
        running = {h.task.pool for h in self._workers.values() if h.task is not None}
        return starved_pools(self._pinned, counts, running)

    def _wake_lease_for(self, pool: str | None) -> None:
        """A pool got room: if the lease thread is blocked in a read that leaves out a
        queue it could read now (it had no room for it when the read began), wake it, or
        the pool would idle until the read times out. A read that only has queues which
        need no room (0-CPU actors and tasks) must not keep the freed room idle either.
        Under self._cond."""
        reading = self._reading
        if reading is not None and scheduler.read_left_out(reading, self._lease_counts()):
            self._unblock_lease()

    # ---- dispatch (under self._cond) ----------------------------------------------------

    def _resume_waiting(self) -> set[str | None]:
        """Give the CPU back to the tasks whose arguments arrived (Reacquire), in order,
        where their pool has room; the pools of those still waiting start nothing new
        that needs a CPU, and their lease grants end after their running task, so that
        room comes. Under self._cond."""
        waiting: list[_WorkerHandle] = []
        for handle in self._resuming:
            running = handle.running
            if running is None or not handle.blocked or self._workers.get(handle.conn) is not handle:
                continue
            cpu = {"CPU": running.demand.get("CPU", 0.0)}
            if waiting or not self.resources.fits_in(running.pool, cpu):
                waiting.append(handle)
                continue
            self.resources.take(running.pool, cpu)
            handle.blocked = False
            handle.conn.send_bytes(wire.encode_message(wire.Resume()))
        self._resuming = waiting
        pools = {h.running.pool for h in waiting if h.running is not None}
        for h in self._workers.values():
            if h.grant is not None and h.grant.pool in pools and h not in waiting and not h.grant_ending:
                h.grant_ending = True
                h.conn.send_bytes(wire.encode_message(wire.EndGrant()))
        return pools

    def _dispatch(self) -> None:
        held_back = self._resume_waiting() if self._resuming else set()
        idle = [h for h in self._workers.values()
                if h.ready and h.task is None and h.grant is None and h.actor_id is None]
        waiting = 0
        for task in list(self._backlog):
            pool = self.resources.pool_for(task.queue, task.demand)
            if pool is False or (pool in held_back and task.demand.get("CPU")):
                continue
            if not idle:
                waiting += 1
                continue
            handle = idle.pop()
            self._backlog.remove(task)
            task.pool = pool  # type: ignore[assignment]
            self.resources.take(task.pool, task.demand)
            task.gpus = self.resources.assign_gpus(task.demand.get("GPU", 0.0))
            handle.task = task
            if handle.slot is not None and not task.creates_actor:
                # Cleared by the worker when the task has run: see _end_jobs.
                handle.slot.set(task.lease.entry_id)
            # A GPU node: every task learns its GPUs (maybe none).
            gpus = tuple(task.gpus) if self.resources.has_gpus else None
            grant = self._grant_for(task)
            if grant is not None:
                handle.grant, handle.grant_ending = task, False
                handle.leased_from.add(grant)
                self._lease_stats["grants"] += 1
            self._lease_stats["runs_sent"] += 1
            run = wire.Run(task.lease.entry_id, task.lease.fields, gpus, grant)
            handle.conn.send_bytes(wire.encode_message(run))
        starting = sum(1 for h in self._workers.values() if not h.ready)
        room = self.max_workers - len(self._workers)
        for _ in range(min(waiting - starting, room)):
            self._spawn_worker()

    def _grant_for(self, task: _Task) -> str | None:
        """The shape queue a worker sent `task` may go on leasing from itself, holding
        the task's resources (docs/architecture.md, "Lease grants"): a plain task of a
        shape queue without GPUs, while the node takes work. Node and bundle queues,
        actors' creations and GPU tasks stay with the agent, which places them."""
        if (self._draining or self._stopping or task.creates_actor or task.demand.get("GPU")
                or not queues.is_shape_queue(task.queue)):
            return None
        return task.queue

    # ---- main loop: worker sockets and result flushing ----------------------------------

    def _io_loop(self) -> None:
        last_reap = time.monotonic()
        while not self._stopping:
            for key, _ in self._selector.select(timeout=1.0):
                if key.fileobj is self._wake_r:
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    continue
                conn = cast(Connection, key.fileobj)  # registered: the wake socket and worker pipes
                handle = self._workers.get(conn)
                if handle is None:
                    continue
                try:
                    raw = conn.recv_bytes()
                except (EOFError, OSError):
                    self._on_worker_exit(handle)
                    continue
                try:
                    self._on_message(handle, wire.decode_message(raw))
                except Exception:
                    log.exception("bad message from worker %d: %r", handle.proc.pid, raw[:16])
            if time.monotonic() - last_reap >= REAP_EVERY_S:
                last_reap = time.monotonic()
                self._reap_ended()
            self._flush()

    def _reap_ended(self) -> None:
        """Workers whose process ended with no EOF on their socket: a process they forked
        holds a copy (a worker replaces its copy in children Python forks; a fork in C
        code, or an exec, skips that). What they sent before ending is read first."""
        with self._cond:
            ended = [h for h in self._workers.values() if h.proc.poll() is not None]
        for handle in ended:
            eof = False
            try:
                while handle.conn.poll(0):
                    self._on_message(handle, wire.decode_message(handle.conn.recv_bytes()))
            except (EOFError, OSError):
                eof = True  # an ordinary end, seen here before the socket's EOF
            except Exception:
                log.exception("bad message from worker %d", handle.proc.pid)
            if not eof:
                log.warning("worker %d ended, but a process it started holds its socket",
                            handle.proc.pid)
            self._on_worker_exit(handle)

    def _on_message(self, handle: _WorkerHandle, msg: wire.Message) -> None:
        """One message from a worker (see the protocol in _base/wire.py)."""
        with self._cond:
            if isinstance(msg, wire.Done) and msg.stored:  # the worker stored and acked it
                self._finish(handle)
            elif isinstance(msg, wire.Done):
                task = handle.task
                stored: tuple = tuple(msg.objects)
                if task is not None and stored:  # fenced by attempt (see complete.lua)
                    stored += (("", KIND_FENCE, task.entry.fence()),)
                self._outbox.completions.append(Completion(msg.owner, msg.notice, stored, msg.kept))
                self._finish(handle)
                if task is not None:
                    self._outbox.ack(task)
            elif isinstance(msg, wire.Requeue):
                task = handle.task
                self._finish(handle)
                if task is not None:
                    self._outbox.requeues.append((task, task.entry.attempt + 1))
            elif isinstance(msg, wire.Blocked) and (running := handle.running) and not handle.blocked:
                handle.blocked = True
                self.resources.give(running.pool, {"CPU": running.demand.get("CPU", 0.0)})
                self._dispatch()
                self._cond.notify_all()
            elif isinstance(msg, wire.Unblocked) and (running := handle.running) and handle.blocked:
                handle.blocked = False
                if handle in self._resuming:  # cancelled while it waited for its CPU
                    self._resuming.remove(handle)
                self.resources.take(running.pool, {"CPU": running.demand.get("CPU", 0.0)})
            elif isinstance(msg, wire.Reacquire):
                if handle.running is not None and handle.blocked:
                    self._resuming.append(handle)
                    self._dispatch()
                else:  # nothing was lent out
                    handle.conn.send_bytes(wire.encode_message(wire.Resume()))
            elif isinstance(msg, wire.GrantEnded) and handle.grant is not None:
                grant, handle.grant = handle.grant, None
                if handle.task is None:  # else its resources are the running task's
                    self._release(grant, handle.blocked)
                    handle.blocked = False
                self._dispatch()
                self._cond.notify_all()
            elif isinstance(msg, wire.Adopt) and handle.grant is not None:
                self._adopt(handle, msg)
            elif isinstance(msg, wire.Ready):
                handle.ready = True
                handle.tag = msg.tag
                if self._cancelled:  # what it may lease under a grant must not run
                    handle.conn.send_bytes(wire.encode_message(wire.Cancel(list(self._cancelled)[-1000:])))
                if self._ended_jobs:
                    handle.conn.send_bytes(wire.encode_message(wire.JobsEnded(list(self._ended_jobs))))
                self._dispatch()
            elif isinstance(msg, wire.Retiring):  # exits after this task (max_calls): give it no other
                handle.ready = False
            elif isinstance(msg, wire.ActorAlive) and handle.task is not None:
                self._actor_alive(handle, handle.task)
            elif isinstance(msg, wire.ActorFailed):  # creation failed (the actor is dead) or was cancelled
                task = handle.task
                self._finish(handle)
                if task is not None:
                    self._outbox.ack(task)
            elif isinstance(msg, wire.ActorExiting):
                handle.exiting = True

    def _adopt(self, handle: _WorkerHandle, msg: wire.Adopt) -> None:
        """The worker leased an actor's creation under its grant and runs it: the grant's
        resources (the same shape) become the creation's, as if it had been sent. Under
        self._cond."""
        grant, handle.grant = handle.grant, None
        assert grant is not None
        task = self._new_task(Leased(grant.lease.queue, msg.entry_id, dict(msg.fields)),
                              QueueEntry.from_fields(msg.fields))
        task.pool = grant.pool
        handle.task = task
        self._lease_stats["grant_adoptions"] += 1

    def _actor_alive(self, handle: _WorkerHandle, task: _Task) -> None:
        """The worker became the actor's process: it keeps the resources the actor holds
        while alive, gives back the rest of what placing it took. Under self._cond."""
        spec: ActorSpec = task.entry.spec  # type: ignore[assignment]
        handle.actor_id = task.entry.task
        handle.held = {k: float(v) for k, v in spec.held.items()}
        handle.task = None
        handle.pool = task.pool
        if handle.held.get("GPU"):  # the actor keeps its GPUs
            handle.gpus, task.gpus = task.gpus, []
        self._release(task, handle.blocked)  # placement resources back ...
        handle.blocked = False
        self.resources.take(handle.pool, handle.held)  # ... held kept
        self._outbox.ack(task)
        if not self._stopping and self._pool_count() < self.pool_size:
            self._spawn_worker()
        self._dispatch()
        self._cond.notify_all()

    def _finish(self, handle: _WorkerHandle) -> None:
        task = handle.task
        if task is not None and task is not handle.grant:  # a grant's resources stay taken
            self._release(task, handle.blocked)
            handle.blocked = False
        handle.task = None
        self._dispatch()
        self._cond.notify_all()

    def _flush(self) -> None:
        """Store finished tasks' results and acks, and requeue retried tasks. Transient
        Redis errors are retried (the results are kept meanwhile); any other error is a
        bug, logged, and the affected tasks stay leased until the node is declared dead."""
        with self._cond:
            out, self._outbox = self._outbox, _Outbox()
            self._acking = {i for ids in out.acks.values() for i in ids}
            self._acking |= {task.lease.entry_id for task, _ in out.requeues}
        try:
            if out.completions or out.acks:
                # Results exist only here until stored: keep trying through a Redis restart.
                retry_transient(lambda: self.store.complete_tasks(out.completions, out.acks),
                                deadline_s=3600, stop=lambda: self._stopping)
            for task, attempt in out.requeues:
                retry_transient(functools.partial(self._requeue, task, attempt), stop=lambda: self._stopping)
            from taskmesh._core import events as _events

            retried = [_events.event(t.entry.task, t.entry.attempt, _events.FAILED, name=t.entry.name,
                                     node=self.node_id, error="WORKER_DIED") for t in out.crashed]
            retried += [_events.event(t.entry.task, attempt, _events.PENDING, name=t.entry.name)
                        for t, attempt in out.requeues if not t.creates_actor and t.entry.events]
            if retried:  # one stream entry for the batch's crashes and retries (rare: no hot path)
                retry_transient(lambda: self.store.add_events(retried), stop=lambda: self._stopping)
        except Exception:
            log.exception("storing %d results / %d retries failed", len(out.completions),
                          len(out.requeues))
        finally:
            with self._cond:
                self._acking = set()

    def _requeue(self, task: _Task, attempt: int, dest: str | None = None) -> None:
        self.store.requeue(task.lease.queue, task.lease.entry_id,
                           task.entry.with_attempt(attempt).to_fields(), dest)

    # ---- leasing ------------------------------------------------------------------------

    def _on_new_shape(self, message: dict) -> None:
        self._reload_shapes = True
        self._unblock_lease()
        with self._cond:  # the lease thread may be waiting for room rather than in Redis
            self._cond.notify_all()

    def _on_order(self, message: dict) -> None:
        """Orders for this node: `kill <actor_id>` (taskmesh.kill), `free <object_id> ...`
        (objects freed elsewhere that this node holds copies of)."""
        verb, _, arg = message["data"].decode().partition(" ")
        if verb == "pg":  # a bundle was reserved here or given back
            self._reload_bundles = True
            self._unblock_lease()
            with self._cond:
                self._cond.notify_all()
            return
        if verb == "free":
            if self.shm is not None:
                self.shm.delete(arg.split())
            return
        if verb != "kill":
            log.warning("unknown order %r", message["data"])
            return
        self._kill_actors({arg})

    def _kill_actors(self, actor_ids: set[str]) -> None:
        """SIGKILL the processes of these actors, including one still creating its actor
        (its ALIVE may be recorded before its agent hears of it: the order must not miss)."""
        with self._cond:
            victims = [h for h in self._workers.values() if h.actor_id in actor_ids or (
                h.task is not None and h.task.creates_actor and h.task.entry.task in actor_ids)]
        for h in victims:
            h.proc.kill()

    def _kill_killed_actors(self) -> None:
        """Kill this node's actors that were killed with no_restart (taskmesh.kill, or
        their job ended) but still run: their kill order was lost (pub/sub)."""
        with self._cond:
            actor_ids = [h.actor_id for h in self._workers.values() if h.actor_id is not None]
        if not actor_ids:
            return
        try:
            killed = self.store.killed_actors(actor_ids)
        except Exception as e:
            self._store_failed("checking for killed actors", e)
            return
        if killed:
            log.warning("killing actors %s: killed, but their kill order did not arrive", killed)
            self._kill_actors(set(killed))

    def _on_cancel(self, message: dict) -> None:
        """`<task_id> <force> <recursive>` (taskmesh.cancel): drop the task if it waits
        here, and tell every worker: the one running it interrupts it (KeyboardInterrupt
        in the task; it records the task as cancelled first, for is_canceled()) or, with
        force, cancels its children and exits (killed here if it still runs the task
        FORCE_GRACE_S later); the others skip it if they lease it under a grant, and
        actors skip such a call or cancel an async one."""
        task_id, force, recursive = (message["data"].decode().split(" ") + ["1"])[:3]
        with self._cond:
            self._cancelled[task_id] = None
            while len(self._cancelled) > 10_000:
                self._cancelled.popitem(last=False)
            for task in [t for t in self._backlog if t.entry.task == task_id]:
                self._backlog.remove(task)
                self._outbox.ack(task)
            running = [h for h in self._workers.values()
                       if h.task is not None and h.task.entry.task == task_id]
            self._tell_workers(wire.Cancel([task_id], force == "1", recursive == "1"), actors=True)
        if force == "1":
            for handle in running:
                timer = threading.Timer(FORCE_GRACE_S, self._kill_if_running, (handle, task_id))
                timer.daemon = True
                timer.start()

    def _kill_if_running(self, handle: _WorkerHandle, task_id: str) -> None:
        """A forced cancel's worker that has not exited by itself (stuck in C code)."""
        with self._cond:
            still = handle.task is not None and handle.task.entry.task == task_id
        if still:
            try:
                os.kill(handle.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _tell_workers(self, msg: wire.Message, skip: Sequence[_WorkerHandle] = (),
                      actors: bool = False) -> None:
        """Send `msg` to every ready task worker (and actor, with `actors`) but those in
        `skip` (the agent acts on those itself); a worker that just exited is passed
        over. Under self._cond."""
        order = wire.encode_message(msg)
        for h in self._workers.values():
            if h.ready and (actors or h.actor_id is None) and h not in skip:
                try:
                    h.conn.send_bytes(order)
                except OSError:
                    pass

    def _on_job_end(self, message: dict) -> None:
        """`<job_id>`: the job ended (Store.end_job)."""
        self._end_jobs([message["data"].decode()])

    def _read_ended_jobs(self) -> None:
        """Take up the jobs that ended since the last read (all of them at start)."""
        since = max(self._ended_read_ms - ENDED_JOBS_MARGIN_MS, 0) if self._ended_read_ms else 0
        ended = self.store.ended_jobs(since)
        if ended:
            self._ended_read_ms = max(self._ended_read_ms, ended[-1][1])
            self._end_jobs([job_id for job_id, _ in ended])

    def _end_jobs(self, job_ids: list[str]) -> None:
        """Jobs ended: their tasks waiting here are dropped (acked, never run), those
        running here (or sent and not started: _not_run_yet) are killed as by a forced
        cancel (their entries are then acked: _task_failed), and the workers, which
        lease under grants without the agent, are told. Work of a detached actor goes
        on (lifecycle.dropped_with_job)."""
        with self._cond:
            new = [job_id for job_id in job_ids if job_id not in self._ended_jobs]
            if not new:
                return
            for job_id in new:
                self._ended_jobs[job_id] = None
            while len(self._ended_jobs) > ENDED_JOBS_KEPT:
                self._ended_jobs.popitem(last=False)
            ended = set(new)
            dropped = [t for t in self._backlog if lifecycle.dropped_with_job(t.entry, ended)]
            for task in dropped:
                self._backlog.remove(task)
                self._outbox.ack(task)
            running = [h for h in self._workers.values()
                       if h.task is not None and lifecycle.dropped_with_job(h.task.entry, ended)
                       and _not_run_yet(h)]
            self._tell_workers(wire.JobsEnded(new), skip=running)
        for handle in running:
            try:
                handle.proc.kill()
            except ProcessLookupError:
                pass
        if dropped or running:
            log.info("jobs %s ended: %d queued tasks dropped, %d running killed",
                     " ".join(new), len(dropped), len(running))
            self._wake_io()  # the acks go out with the next flush, now

    def _wake_io(self) -> None:
        """Wake the main loop, which flushes the outbox after every wake-up."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _unblock_lease(self) -> None:
        self._woken = True
        if self._lease_client_id is not None:
            try:
                self.store.redis.client_unblock(self._lease_client_id)
            except Exception:
                pass

    def _lease_loop(self) -> None:
        while not self._stopping:
            if self._draining:
                # Lease nothing more, but live on: the workers this thread started die
                # when it ends (PR_SET_PDEATHSIG follows the spawning thread).
                self._lease_parked.set()
                self._stopped.wait(1.0)
                continue
            try:
                if self._recover_own:
                    self._recover_own_entries()
                elif time.monotonic() >= self._next_reconcile:
                    self._next_reconcile = time.monotonic() + self._reconcile_s
                    self._recover_own_entries(min_idle_ms=int(self._reconcile_s * 1000))
                self._lease_once()
            except Exception as e:
                if self._stopping:
                    return
                self._store_failed("leasing", e)
                # A read may have been delivered (and recorded) without its reply
                # reaching us: take back our own unacknowledged entries first.
                self._recover_own = True
                time.sleep(0.5)

    def _recover_own_entries(self, min_idle_ms: int | None = None) -> None:
        """Add entries pending for this node in Redis that this agent does not know of
        (neither queued, running, nor done and waiting to be acked or requeued). After a
        failed read, all of them; periodically, those idle for `min_idle_ms` (whatever
        lost them, the node's own pending list is the truth: a forgotten entry would
        otherwise wait for the node's death)."""
        queues_ = self._shapes + self._pinned
        if min_idle_ms is None:
            found = self.store.own_pending(self._lease_client, self.node_id, queues_)
        else:
            found = self.store.own_idle(self._lease_client, self.node_id, queues_, min_idle_ms)
        pending = _failure.set_aside_malformed(self.store, found)
        with self._cond:
            known = {t.lease.entry_id for t in self._backlog}
            known |= {h.task.lease.entry_id for h in self._workers.values() if h.task is not None}
            known |= {i for ids in self._outbox.acks.values() for i in ids} | self._acking
            lost = [pair for pair in pending if pair[0].entry_id not in known]
            for pair in lost:
                task = self._new_task(*pair)
                if lifecycle.dropped_with_job(task.entry, self._ended_jobs):
                    self._outbox.ack(task)
                else:
                    self._backlog.append(task)
            if lost:
                log.warning("took back %d entries leased to this node whose delivery was lost", len(lost))
                self._dispatch()
        self._recover_own = False

    def _new_task(self, leased: Leased, entry: QueueEntry) -> _Task:
        """A leased entry; its demand is named by its queue, or by its `shape` field in a
        node or bundle queue."""
        queue = self.store.keys.queue_name(leased.queue)
        return _Task(leased, entry, queues.parse_shape(entry.shape or queue), queue=queue)

    def _lease_once(self) -> None:
        if self._reload_shapes:
            self._reload_shapes = False
            self._shapes = [s for s in self.store.shapes()
                            if scheduler.fits(queues.parse_shape(s), self.total)]
            self.store.ensure_groups(self._shapes)
        if self._reload_bundles:
            self._reload_bundles = False
            self._load_bundles()
        self._hand_back_stale()
        with self._cond:
            counts = self._lease_counts()
            if not counts:
                self._cond.wait(1.0)
                return
            block_ms = LEASE_BLOCK_MS if not self._backlog else 20
            if self._starved_pools(counts):
                # A pool with no room now gets some when its running task ends; the
                # wake-up for that (_wake_lease_for) can miss a read not yet sent.
                block_ms = min(block_ms, SHORT_BLOCK_MS)
            self._reading = frozenset(counts)
            self._woken = False
        try:
            leased = self.store.lease(self._lease_client, self.node_id, counts, block_ms)
        finally:
            self._reading = None
        if not leased and not self._woken:
            with self._cond:  # room opened during the read, and nobody woke it
                if scheduler.read_left_out(counts, self._lease_counts()):
                    self._lease_stats["lease_missed_wakes"] += 1
        decoded = _failure.set_aside_malformed(self.store, leased)
        if not decoded:
            return
        skipped = False
        with self._cond:
            for pair in decoded:
                task = self._new_task(*pair)
                if (task.entry.task in self._cancelled
                        or lifecycle.dropped_with_job(task.entry, self._ended_jobs)):
                    self._outbox.ack(task)
                    skipped = True
                    continue
                self._backlog.append(task)
            self._dispatch()
        if skipped:
            self._wake_io()  # acked with the next flush, now rather than in up to 1 s

    def _lease_counts(self) -> dict[str, int]:
        """How many entries to read now from each shape, node and bundle queue. Under
        self._cond."""
        held: dict[str, float] = {}
        for task in self._backlog:
            if not queues.is_bundle_queue(task.queue):
                held = scheduler.add(held, task.demand)
        counts = scheduler.lease_counts(self._shapes, self.resources.unreserved(),
                                        self.available, held)
        counts.update(self.resources.pinned_counts(
            self._pinned, held, collections.Counter(t.queue for t in self._backlog)))
        return counts

    def _load_bundles(self) -> None:
        """Take up the bundles reserved on this node (`tm:node_reserved:{node}`) and let
        go of removed ones: their waiting tasks are dropped (the remover failed them) and
        their actors killed."""
        reserved = self.store.node_reservations(self.node_id)
        with self._cond:
            self.resources.set_reservations(reserved)
            groups = self.resources.groups()
            self._pinned = self.resources.pinned_queues(self.node_id)
            gone = [t for t in self._backlog
                    if queues.is_bundle_queue(t.queue) and queues.group_of_queue(t.queue) not in groups]
            for task in gone:
                self._backlog.remove(task)
                self._outbox.ack(task)
            orphans = [(h, h.actor_id) for h in self._workers.values()
                       if h.actor_id is not None and h.pool is not None
                       and h.pool not in self.resources.bundles]
        for h, actor_id in orphans:
            h.exiting = True
            retry_transient(functools.partial(
                _failure.actor_down, self.store, actor_id, restart=False,
                cause=f"{_failure.PG_REMOVED}The actor's placement group was removed."))
            h.proc.kill()

    def _hand_back_stale(self) -> None:
        if self._alive_nodes < 2:
            return
        now = time.monotonic()
        with self._cond:
            stale = [t for t in self._backlog if now - t.leased_at > HANDBACK_S
                     and (queues.is_shape_queue(t.queue) or t.soft)]
            for task in stale:
                self._backlog.remove(task)
        for task in stale:
            dest = None
            # A soft node entry goes back to its shape queue.
            if not queues.is_shape_queue(task.queue) and task.entry.shape:
                dest = self.store.keys.queue(task.entry.shape)
            retry_transient(functools.partial(self._requeue, task, task.entry.attempt, dest))

    def _report_lease_stats(self) -> None:
        """Lease-read counters into the node's hash, when they changed."""
        self._reported_lease_stats = self._report_fields(
            "lease counters", dict(self._lease_stats), self._reported_lease_stats)

    def _report_fields(self, what: str, fields: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
        """Write `fields` into the node's hash unless they are what was `reported` last;
        returns what the hash now holds (a failed write is tried again next time)."""
        if fields == reported:
            return reported
        try:
            self.store.set_node_fields(self.node_id, fields)
            return fields
        except Exception as e:
            self._store_failed(f"reporting {what}", e)
            return reported

    def _store_failed(self, what: str, error: Exception) -> None:
        """A loop's call failed: an unreachable Redis is logged at a capped rate."""
        if isinstance(error, StoreUnavailableError):
            self.outage.failed(what, error)
        else:
            log.warning("%s failed: %r", what, error)

    def _report_store_usage(self) -> None:
        """Object-store usage into the node's hash (for `taskmesh memory`), when it changed."""
        if self.shm is None:
            return
        u = self.shm.usage()
        fields = {"store_capacity": self.object_store.capacity_bytes or 0,
                  "store_capacity_note": self.object_store.capacity_note, "store_used": u.used_bytes,
                  "store_objects": u.objects, "store_spilled": u.spilled_bytes,
                  "store_spilled_objects": u.spilled_objects, "store_free_pool": u.free_pool_bytes}
        self._reported_usage = self._report_fields("object-store usage", fields, self._reported_usage)

    def _heartbeat_loop(self) -> None:
        last_sent: dict[str, float] | None = None
        last_sweep = last_killed_check = last_ended_check = time.monotonic()
        while not self._stopping:
            if time.monotonic() - last_killed_check > KILLED_ACTORS_EVERY_S:
                last_killed_check = time.monotonic()
                self._kill_killed_actors()
            if time.monotonic() - last_ended_check > ENDED_JOBS_EVERY_S:
                last_ended_check = time.monotonic()
                try:
                    self._read_ended_jobs()
                except Exception as e:
                    log.warning("reading the ended jobs failed: %r", e)
            self._report_store_usage()
            self._report_lease_stats()
            if self._unsettled:
                self._settle_grants()
            if self.shm is not None and time.monotonic() - last_sweep > SWEEP_EVERY_S:
                last_sweep = time.monotonic()
                try:
                    sweep_orphans(self.store, self.shm, min_age_s=SWEEP_EVERY_S)
                except Exception as e:
                    log.warning("sweeping the object store failed: %r", e)
            with self._cond:
                available = dict(self.available)
            try:
                alive = self.store.heartbeat(self.node_id, available if available != last_sent else None)
                if alive < 0:
                    log.error("this node was declared dead (no heartbeat reached Redis in time) "
                              "and its work was handed to other nodes; exiting")
                    self.stop()
                    return
                self._alive_nodes = alive
                last_sent = available
                self.outage.succeeded()
            except Exception as e:
                self._store_failed("heartbeat", e)
            try:
                self.monitor.tick()
            except StoreUnavailableError as e:
                self._store_failed("monitor tick", e)
            except Exception:
                log.exception("monitor tick failed")
            self._stopped.wait(HEARTBEAT_S)
