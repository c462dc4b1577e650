"""A worker process: runs tasks its node agent hands it over a socket pair, then leases
more of the same kind itself.

The agent sends one task at a time; the worker resolves top-level ref arguments, runs the
function, serializes the returns and sends them back, and the agent stores them in Redis
(batched with other completions). A task from a shape queue comes with a grant: after
it, the worker goes on leasing from that queue as its own consumer (`<node>:<pid>`),
storing each result and acking its entry in the round trip that leases the next one,
until the queue is empty (or the agent ends the grant); the agent, which holds the
task's resources for it meanwhile, is off the path of those tasks (docs/architecture.md,
"Lease grants"). An actor's creation turns the worker into the actor's process
(actor_runner.py). A worker dies with its agent: PR_SET_PDEATHSIG plus a parent-pid watch.

The messages on the socket (Run, Ready, Done, Requeue, Retiring, Blocked, Unblocked and
the actor's ActorAlive, ActorFailed, ActorExiting) are records of _base/wire.py, whose
docstring documents the protocol.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from types import GeneratorType
from typing import Any, NamedTuple

import msgpack

from taskmesh import objects, runtime_env
from taskmesh._base import config, queues, wire
from taskmesh._base.config import temp_root
from taskmesh._base.ids import task_of
from taskmesh._base.wire import CallSpec, QueueEntry, TaskContext, TaskSpec, encode_notice
from taskmesh._core import context
from taskmesh._core import events as _events
from taskmesh._core import generators as _generator
from taskmesh._core.failure import set_aside_malformed, should_retry
from taskmesh._core.lifecycle import EndedJobs, dropped_with_job
from taskmesh._core.runtime import Runtime
from taskmesh.exceptions import TaskCancelledError
from taskmesh.objects import KIND_ERROR, KIND_SHM, ObjectRef
from taskmesh.store import KIND_FENCE, Completion, Leased, Store, retry_transient
from taskmesh.store.client import ENDED_JOBS_KEPT
from taskmesh.store.directory import KIND_LINEAGE, KIND_REBUILD
from taskmesh.workers import process as _process
from taskmesh.workers.actor_runner import ActorServer
from taskmesh.workers.execution import (
    LineForwarder,
    error_text,
    fixed_returns,
    owner_keeps,
    placement,
    serialize_error,
    set_omp_threads,
    split_returns,
)

# Leasing under a grant (Worker._lease_under_grant): a batch is sized to about this much
# work, of at most this many entries; a task running longer than _HOLD_S hands the rest
# of its batch back.
_BATCH_S = 0.005
_BATCH_MAX = 64
_HOLD_S = 0.05


class Worker:
    def __init__(self, conn: Connection, store: Store, node_id: str, slot_fd: int | None = None):
        self.conn = conn
        self.store = store
        self.node_id = node_id
        self.pid = os.getpid()
        self.runtime = Runtime(store, job_id=None, namespace=None, node_id=node_id, is_worker=True)
        self.runtime.on_block = lambda: self._send(wire.Blocked())
        self.runtime.on_unblock = self._on_unblock
        # Set while the task's arguments are awaited: if their wait lent its CPU out, the
        # task runs only once the agent gives it back (Reacquire, Resume); a wait in the
        # task's own `get` takes it back at once (Unblocked).
        self._awaiting_args = False
        self._owes_cpu = False
        self._resumed = threading.Event()
        self._send_lock = threading.Lock()
        self._functions: dict[str, tuple[Any, str]] = {}
        self._interruptible = False  # a task is running: SIGINT cancels it
        self._calls: dict[str, int] = {}
        self._arg_refs: list[str] = []  # the running task's top-level ref arguments
        self._log_lock = threading.Lock()
        self._log_lines: list[list[str]] = []
        self._log_job: str | None = None
        self._out = LineForwarder(self, "stdout", sys.__stdout__)
        self._err = LineForwarder(self, "stderr", sys.__stderr__)
        self.events = _events.EventBuffer()  # sent by the output flush thread
        self.items = _generator.ItemSender(store)  # generator items, stored as yielded
        # Messages from the agent, read by a thread so that Cancel and EndGrant arrive
        # while a task runs; None: the agent is gone.
        self._inbox: queue.SimpleQueue[wire.Message | None] = queue.SimpleQueue()
        # Cancelled tasks and actor calls (value: recursive, whether their children go too).
        self._cancelled_ids: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self.runtime.canceled = lambda task_id: task_id in self._cancelled_ids
        self._running_task: str | None = None  # the task it runs now (sent or leased)
        self._actor: ActorServer | None = None  # the actor this process serves
        self._ended_jobs = EndedJobs(store)
        self._grant_ending = False
        self._leased_entry: QueueEntry | None = None  # the task it runs that it leased itself
        # Leasing a batch at a time under a grant (see _lease_under_grant).
        self._slot = _process.RunningSlot(slot_fd) if slot_fd is not None else None
        if slot_fd is not None:
            os.close(slot_fd)  # the mapping stays
        # Leased, decoded (set_aside_malformed), not started.
        self._batch: collections.deque[tuple[Leased, QueueEntry]] = collections.deque()
        self._batch_cond = threading.Condition()
        self._watch_from: float | None = None  # a batch's task started then (others wait)
        self._watcher_idle = False
        self._task_s = _BATCH_S  # how long tasks run here (a moving average)
        if self._slot is not None:
            threading.Thread(target=self._watch_batch, name="taskmesh-batch", daemon=True).start()

    @property
    def context(self) -> TaskContext:
        return self.runtime.context

    def _send(self, msg: wire.Message) -> None:
        if os.getpid() != self.pid:  # a task's forked child: the socket is not its own
            return
        data = wire.encode_message(msg)
        with self._send_lock:
            self.conn.send_bytes(data)

    # ---- logs -------------------------------------------------------------------------

    def add_log_lines(self, stream: str, lines: list[str]) -> None:
        name = self.context.task_name or "worker"
        with self._log_lock:
            self._log_job = self.context.job_id
            self._log_lines.extend([name, stream, line] for line in lines)
            big = len(self._log_lines) > 1000
        if big:
            self.flush_logs()

    def flush_logs(self, with_events: bool = False) -> None:
        """Send printed lines (to the job's driver and its log stream) and, from the
        periodic flush, task events: one round trip, only when there is something."""
        if not with_events and not self._log_lines:
            return
        with self._log_lock:
            lines, self._log_lines = self._log_lines, []
            job = self._log_job
        counts: dict[str, int] = {}
        events = self.events.drain(counts) if with_events and len(self.events) else []
        payload = None
        if lines and job is not None:
            payload = msgpack.packb({"pid": self.pid, "node": self.node_id,
                                     "actor": self.context.actor_id, "lines": lines})
        if payload is not None or events:
            try:
                self.store.worker_output(job, payload, events, counts)
            except Exception:
                pass  # output and events are best effort: a task never waits for them

    def _record_end(self, task_id: str, attempt: int, objs: list[list] | None) -> None:
        """The running task ended: its end event (EventBuffer.ended)."""
        failed = objs is None or any(kind == KIND_ERROR for _, kind, _ in objs)
        self.events.ended(task_id, attempt, _events.now_us(), error_text(objs) if failed else None,
                          failed=failed)

    def _log_flush_loop(self) -> None:
        while True:
            time.sleep(0.2)
            self.flush_logs(with_events=True)

    # ---- tasks ------------------------------------------------------------------------

    def serve(self) -> None:
        context.set_runtime(self.runtime)
        threading.Thread(target=self._log_flush_loop, name="taskmesh-logs", daemon=True).start()
        sys.stdout, sys.stderr = self._out, self._err
        # Known to Redis before it can hold anything: if its node dies, the monitor
        # releases what it held.
        retry_transient(lambda: self.store.add_node_process(self.node_id, self.runtime.owner))
        signal.signal(signal.SIGINT, self._on_sigint)
        threading.Thread(target=self._read_loop, name="taskmesh-inbox", daemon=True).start()
        self._send(wire.Ready(self.pid, self.runtime.owner))
        while True:
            run = self._inbox.get()
            if run is None:
                return
            if not isinstance(run, wire.Run):
                continue
            # Decoded once here; the agent set aside entries that do not decode.
            entry = QueueEntry.from_fields(run.fields)
            if entry.creates_actor:
                self._actor = ActorServer(self, run.entry_id, entry, run.gpus)
                self._actor.run()  # returns only if creation failed
                self._actor = None
                continue
            self._grant_ending = False
            try:
                ran = self._run(entry, run.gpus)
            finally:
                if self._slot is not None:  # the agent set it: the task has run (agent._not_run_yet)
                    self._slot.clear()
            if ran.retiring:  # before the result: the agent must not hand it another task
                self._send(wire.Retiring())
            if ran.objs is None:
                self._send(wire.Requeue(run.entry_id))
            elif run.grant is not None and not ran.retiring:
                # Stored and acked by this worker, in the round trip of its first lease
                # under the grant: no hop through the agent on the way to the caller.
                first = (self._completion(ran, entry), run.entry_id)
                if self._lease_under_grant(run.grant, first):
                    self._send(wire.GrantEnded())
                continue
            else:
                self._send(wire.Done(run.entry_id, ran.owner, ran.notice, ran.stored, ran.kept))
            if run.grant is not None:  # retiring, or its task queued again: it leases no more
                self._send(wire.GrantEnded())
            if ran.retiring:
                return

    def _read_loop(self) -> None:
        while True:
            try:
                msg = wire.decode_message(self.conn.recv_bytes())
            except (EOFError, OSError):
                self._inbox.put(None)
                return
            except wire.WireError as e:
                print(f"taskmesh worker {self.pid}: bad message from the agent: {e}", file=sys.__stderr__)
                continue
            if isinstance(msg, wire.Cancel):
                self._on_cancel(msg)
            elif isinstance(msg, wire.JobsEnded):
                self._on_jobs_ended(msg)
            elif isinstance(msg, wire.EndGrant):
                self._grant_ending = True
            elif isinstance(msg, wire.Resume):
                self._resumed.set()
            else:
                self._inbox.put(msg)

    def _on_cancel(self, msg: wire.Cancel) -> None:
        """Cancelled tasks: not run if leased later under a grant; the one it runs now is
        interrupted (KeyboardInterrupt in the task) or, with force, its children are
        cancelled and the process ends (the agent then acks its entry rather than
        retrying it). An actor skips such calls or cancels a running async one."""
        for task_id in msg.task_ids:
            self._cancelled_ids[task_id] = msg.recursive
        while len(self._cancelled_ids) > 10_000:
            self._cancelled_ids.popitem(last=False)
        if self._actor is not None:
            self._actor.cancel(msg.task_ids)
        if self._running_task is None or self._running_task not in msg.task_ids:
            return
        if msg.force:
            if msg.recursive:
                self._cancel_children(force=True)
            os.kill(self.pid, signal.SIGKILL)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def _on_jobs_ended(self, msg: wire.JobsEnded) -> None:
        """Ended jobs: their tasks leased later under a grant are only acked; the one it
        leased itself and runs now ends with the process, as a forced cancel (the agent
        signals the tasks it handed out, and acks the entry: _task_failed)."""
        for job_id in msg.job_ids:
            self._ended_jobs[job_id] = None
        while len(self._ended_jobs) > ENDED_JOBS_KEPT:
            self._ended_jobs.popitem(last=False)
        entry = self._leased_entry
        if entry is not None and dropped_with_job(entry, set(msg.job_ids)):
            os.kill(self.pid, signal.SIGKILL)

    def _lease_under_grant(self, shape: str, first: tuple[Completion | None, bytes]) -> bool:
        """Lease from the shape queue as this worker's own consumer and run what comes,
        until the queue is empty or the agent ends the grant: True, and the caller sends
        GrantEnded. False when the grant ended another way (an actor's creation was
        leased: Adopt; or it retired on max_calls: GrantEnded and Retiring sent).

        `first` is the task the agent sent with the grant, (its completion, its entry id):
        stored and acked in the round trip of the first lease, then the agent is told
        (Done with `stored`). Were this process to die between the two, the agent would
        take the task for one that died running: it may then run again, as any task
        whose worker dies before its end is known.

        Entries are leased a batch at a time, sized to about _BATCH_S of work from how
        long tasks have taken here (one at a time until they prove short, at most
        _BATCH_MAX); the batch's results are stored and its entries acked in the round
        trip that leases the next batch. A task that may not run twice (max_retries=0)
        has its result stored at once; so do results older than 2 * _BATCH_S. The entry
        running is in the running slot, so that the agent retries only that one if this
        process dies (the rest go back as they were), and a task running longer than
        _HOLD_S hands the batch's unstarted entries back for other workers (_watch_batch)."""
        consumer = queues.worker_consumer(self.node_id, self.pid)
        leased = self._batch
        completion, entry_id = first
        got = self._store_done([completion] if completion is not None else [], [entry_id], shape, consumer,
                               (shape, consumer, self._batch_size()))
        self._send(wire.Done(entry_id, "", b"", (), stored=True))
        leased.extend(set_aside_malformed(self.store, got))
        done: list[Completion] = []
        acks: list[bytes] = []
        oldest: float | None = None  # when the oldest result not stored yet was made
        while True:
            with self._batch_cond:
                taken = leased.popleft() if leased and not self._grant_ending else None
                self._watch_from = time.monotonic() if taken is not None and leased else None
                if self._watch_from is not None and self._watcher_idle:
                    self._batch_cond.notify()
            if taken is None:  # the batch is done (or handed back, or the grant ends)
                more = None if self._grant_ending else (shape, consumer, self._batch_size())
                got = self._store_done(done, acks, shape, consumer, more)
                done, acks = [], []
                oldest = None
                if not got:
                    break
                leased.extend(set_aside_malformed(self.store, got))
                continue
            item, entry = taken
            if entry.creates_actor:  # the agent takes it (and the grant's resources) over
                self._hand_back_batch()
                self._store_done(done, acks, shape, consumer, None)
                self._send(wire.Adopt(item.entry_id, item.fields))
                self._actor = ActorServer(self, item.entry_id, entry, None)
                self._actor.run()  # returns only if creation failed
                self._actor = None
                return False
            retiring, ran = False, None
            # A cancelled task, or one of an ended job, is only acked. The entry is
            # recorded before the job check: a JobsEnded read meanwhile sees it.
            self._leased_entry = entry
            if entry.task in self._cancelled_ids or (self._ended_jobs  # (asks Redis on a hit)
                                                     and dropped_with_job(entry, self._ended_jobs)):
                self._leased_entry = None
                acks.append(item.entry_id)
                ended = time.monotonic()
            else:
                began = time.monotonic()
                if self._slot is not None:
                    self._slot.set(item.entry_id)
                try:
                    ran = self._run(entry, None)
                finally:
                    self._leased_entry = None
                    if self._slot is not None:
                        self._slot.clear()
                    self._watch_from = None  # the watcher reads it under the lock: late is harmless
                ended = time.monotonic()
                self._task_s += (ended - began - self._task_s) * 0.25
                retiring = ran.retiring
                if ran.objs is None:  # retry_exceptions: queue it again, attempt + 1 (acks it)
                    self._requeue(item, entry)
                else:
                    completion = self._completion(ran, entry)
                    if completion is not None:
                        done.append(completion)
                    acks.append(item.entry_id)
            if acks and oldest is None:
                oldest = ended
            if ran is not None and (retiring or entry.spec.max_retries == 0  # type: ignore[union-attr]
                                    or oldest is not None and ended - oldest > 2 * _BATCH_S):
                if retiring:
                    self._hand_back_batch()
                self._store_done(done, acks, shape, consumer, None)
                done, acks, oldest = [], [], None
            if retiring:  # what it leased meanwhile is settled by the agent when it exits
                self._send(wire.GrantEnded())
                self._send(wire.Retiring())
                return False
        self._hand_back_batch()
        return True

    @staticmethod
    def _completion(ran: _Ran, entry: QueueEntry) -> Completion | None:
        """What complete.lua stores of a task that ran here, fenced by its attempt; None
        for a task with no returns (nothing to store, nobody to notify)."""
        if not ran.stored:
            return None
        return Completion(ran.owner, ran.notice, (*ran.stored, ("", KIND_FENCE, entry.fence())), ran.kept)

    def _batch_size(self) -> int:
        """How many entries to lease at once: about _BATCH_S of work, going by how long
        tasks took here lately; one without a running slot (see _lease_under_grant)."""
        if self._slot is None:
            return 1
        return max(1, min(_BATCH_MAX, int(_BATCH_S / max(self._task_s, 1e-6))))

    def _store_done(self, done: list[Completion], acks: list[bytes], shape: str, consumer: str,
                    more: tuple[str, str, int] | None) -> list[Leased]:
        """Store finished tasks' results and ack their entries in one round trip, which
        also leases the next batch with `more`; returns what it leased."""
        if not done and not acks and more is None:
            return []
        call = functools.partial(self.store.complete_tasks, done,
                                 {self.store.keys.queue(shape): acks} if acks else {}, then_lease=more)
        if more is None:
            self._durably(call)
            return []
        return self._leasing(call, shape, consumer)

    def _hand_back_batch(self) -> None:
        """Give the entries leased and not started back to their queue, as they were."""
        with self._batch_cond:
            rest, self._watch_from = [leased for leased, _ in self._batch], None
            self._batch.clear()
        if rest:
            self._durably(lambda: self.store.hand_back(rest))

    def _watch_batch(self) -> None:
        """A task of a batch that runs longer than _HOLD_S gives the batch's entries not
        started yet back to their queue, for other workers (they were leased on the
        guess that tasks here are short)."""
        while True:
            with self._batch_cond:
                while True:
                    if self._watch_from is None:
                        self._watcher_idle = True
                        self._batch_cond.wait()
                        self._watcher_idle = False
                        continue
                    left = self._watch_from + _HOLD_S - time.monotonic()
                    if left <= 0:
                        break
                    self._batch_cond.wait(left)
            self._hand_back_batch()

    def _leasing(self, call: Any, shape: str, consumer: str) -> list[Leased]:
        """A Redis round trip that leases for this worker, tried through a Redis
        restart. A try whose reply was lost may have leased entries all the same: then
        what is pending for this worker (its own consumer, from id 0) is read back
        instead, and that includes what the last try leased."""
        tries = 0

        def attempt() -> list[Leased]:
            nonlocal tries
            tries += 1
            return call()

        got = self._durably(attempt)
        if tries > 1:
            return self._durably(lambda: self.store.own_pending(self.store.redis, consumer, [shape]))
        return got

    def _requeue(self, item: Leased, entry: QueueEntry) -> None:
        retry = entry.with_attempt(entry.attempt + 1)
        self._durably(lambda: self.store.requeue(item.queue, item.entry_id, retry.to_fields()))
        if entry.events:
            self.events.add(_events.event(entry.task, retry.attempt, _events.PENDING, name=entry.name))

    def _durably(self, write: Any) -> Any:
        """A Redis write of work it leased itself: tried through a Redis restart; when
        it cannot be done, the worker exits and its agent settles what it had leased."""
        try:
            return retry_transient(write, deadline_s=3600)
        except Exception as e:
            print(f"taskmesh worker {self.pid}: storing leased work failed: {e!r}", file=sys.__stderr__)
            os._exit(1)

    def _sync_refs(self) -> None:
        """Register what the task kept of the refs it was lent (and the refs its results
        contain) before the caller learns it is done and drops them."""
        try:
            retry_transient(self.runtime.sync_refs, deadline_s=60)
        except Exception as e:
            print(f"taskmesh worker {self.pid}: could not record held refs: {e!r}", file=sys.__stderr__)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT is how the agent cancels the running task; between tasks it is ignored."""
        if self._interruptible:
            raise KeyboardInterrupt

    def send(self, msg: wire.Message) -> None:
        self._send(msg)

    def end_output(self) -> None:
        """Flush what the running task printed (called when a task or call ends)."""
        self._out.finish()
        self._err.finish()
        self.flush_logs()

    def function(self, fn_id: str) -> Any:
        return self._function(fn_id)[0]

    def resolve_args(self, args: list, kwargs: dict, timeout_s: float | None = None) -> bytes | None:
        return self._resolve_args(args, kwargs, timeout_s)

    def _function(self, fn_id: str) -> tuple[Any, str]:
        """The exported function and its `module.qualname` (the runtime context's
        function name), loaded once per process."""
        known = self._functions.get(fn_id)
        if known is None:
            # Through a Redis restart: a task must not fail because Redis blinked.
            blob = retry_transient(lambda: self.store.get_function(fn_id))
            if blob is None:
                raise RuntimeError(f"function {fn_id} was never exported to this cluster")
            fn = objects.deserialize(blob)
            known = self._functions[fn_id] = (
                fn, f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn_id)}")
        return known

    def _run(self, entry: QueueEntry, gpus: tuple[int, ...] | None) -> _Ran:
        """Run one task: what to store (None: queue it again, retry_exceptions), and
        whether this worker must exit afterwards (max_calls)."""
        task_id, name, attempt = entry.task, entry.name, entry.attempt
        spec: TaskSpec = entry.spec  # type: ignore[assignment]
        return_ids = ([objects.object_id(task_id, 1)] if spec.num_returns == 1
                      else [objects.object_id(task_id, i + 1) for i in range(spec.num_returns)])
        runtime = self.runtime
        runtime.job_id = spec.job_id
        runtime.detached = spec.detached  # a detached actor's work: so are its children
        runtime.namespace = spec.namespace
        runtime.context = (
            TaskContext(spec.job_id, task_id, name, spec.resources, None, spec.pg) if gpus is None
            else TaskContext(spec.job_id, task_id, name, spec.resources, **placement(spec.pg, gpus)))
        record = entry.events
        if record:  # its RUNNING event is made by the next events flush if it still runs
            self.events.started(task_id, attempt, name, spec.job_id, self.node_id, self.pid, _events.now_us())
        self._arg_refs = []
        restore_env, env_error = None, None
        if spec.runtime_env:
            runtime.runtime_env = spec.runtime_env  # what the tasks it submits inherit
            restore_env, env_error = self._apply_env(spec.runtime_env)
        set_omp_threads(spec.resources)
        try:
            self._running_task, self._interruptible = task_id, True
            if task_id in self._cancelled_ids:  # cancelled after it was handed to this worker
                raise KeyboardInterrupt
            objs = (self._execute(spec, attempt, name, return_ids) if env_error is None
                    else [[oid, KIND_ERROR, env_error] for oid in return_ids])
        except _Retry:
            objs = None
        except KeyboardInterrupt:  # taskmesh.cancel, arriving between the task and here
            objs = self._cancelled(return_ids)
        finally:
            self._running_task, self._interruptible = None, False
            runtime.context = _IDLE
            self.end_output()
            if restore_env is not None:
                restore_env()
            runtime.runtime_env = None
        if spec.generator:
            self.items.flush()  # its items go before its end (a cancelled one's too)
        lineage = self._lineage(entry, return_ids, objs)
        if runtime.holds_due():
            self._sync_refs()
        if record:
            self._record_end(task_id, attempt, objs)
        retiring = False
        if spec.max_calls:
            self._calls[spec.fn_id] = calls = self._calls.get(spec.fn_id, 0) + 1
            retiring = calls >= spec.max_calls
        if objs is None:
            return _Ran(None, spec.owner, b"", (), retiring, False)
        # holds_refs forgets what it answers: asked of every result, whatever the rest says
        kept = owner_keeps(objs, runtime.holds_refs) and not lineage and not spec.generator
        return _Ran(objs, spec.owner, encode_notice(task_id, objs, kept=kept),
                    (*objs, *lineage), retiring, kept)

    def _lineage(self, entry: QueueEntry, return_ids: list[str], objs: list[list] | None) -> list[list]:
        """The pseudo-object that carries the task's lineage to the completion script
        (see objects/plane.py): with its shared-memory results, which then hold the
        task's ref arguments; and with every result of a run that re-makes lost ones.
        Nothing for a task whose results are all small (they are never lost)."""
        if objs is None or entry.spec.generator:  # type: ignore[union-attr]
            return []
        if entry.rebuild:
            self.runtime.hold_for_lineage(return_ids, (), rebuild=True)
            return [[entry.task, KIND_REBUILD, entry.to_lineage()]]
        shm = [oid for oid, kind, _ in objs if kind == KIND_SHM]
        if not shm:
            return []
        self.runtime.hold_for_lineage(shm, self._arg_refs, rebuild=False)
        return [[entry.task, KIND_LINEAGE, entry.to_lineage()]]

    def _apply_env(self, env: dict | None) -> tuple[Any, bytes | None]:
        """Apply a task's runtime_env: (what undoes it, None), or (None, the serialized
        RuntimeEnvSetupError that becomes the task's result)."""
        try:
            return runtime_env.apply(env, self.store), None
        except Exception as e:
            return None, objects.serialize(runtime_env.setup_error(env, e))

    def _execute(self, spec: TaskSpec, attempt: int, name: str, return_ids: list[str]) -> list[list]:
        try:
            fn, self.runtime.context.function_name = self._function(spec.fn_id)
            args, kwargs = objects.deserialize(spec.args)
            self._awaiting_args = True  # a task's own arguments (an actor's calls hold no CPU)
            try:
                upstream_error = self._resolve_args(args, kwargs)
            finally:
                self._awaiting_args = False
                if self._owes_cpu:
                    self._take_cpu_back(failing=sys.exc_info()[0] is not None)
            if upstream_error is not None:
                return [[oid, KIND_ERROR, upstream_error] for oid in return_ids]
            try:
                result = fn(*args, **kwargs)
            finally:
                _process.end_if_forked(self.pid)
            if spec.generator:
                return self.generator_run(spec, name, return_ids[0],
                                          retry=lambda e: should_retry(spec, attempt, e)).run(result)
            if isinstance(result, GeneratorType):  # with a fixed num_returns
                fixed = fixed_returns(result, return_ids, name, self.runtime.encode_value,
                                      lambda e: serialize_error(name, e),
                                      lambda e: should_retry(spec, attempt, e))
                if fixed is not None:
                    return fixed
            if len(return_ids) == 1:
                return [self.runtime.encode_value(return_ids[0], result)]
            values = split_returns(result, len(return_ids), name)
            return [self.runtime.encode_value(oid, v) for oid, v in zip(return_ids, values, strict=True)]
        except KeyboardInterrupt:  # taskmesh.cancel interrupted it
            self._interruptible = False
            return self._cancelled(return_ids)
        except Exception as e:
            if should_retry(spec, attempt, e):
                raise _Retry() from e
            data = serialize_error(name, e)
            return [[oid, KIND_ERROR, data] for oid in return_ids]

    def generator_run(self, spec: TaskSpec | CallSpec, name: str, return_id: str,
                      retry: Any = lambda e: False) -> _generator.GeneratorRun:
        """How a generator call's items are stored (see generators.py)."""
        return _generator.GeneratorRun(
            self.runtime, self.items, mode=spec.generator, owner=spec.owner, return_id=return_id,  # type: ignore[arg-type]
            error_of=lambda e: serialize_error(name, e), retry=retry, backpressure=spec.backpressure)

    def _cancelled(self, return_ids: list[str]) -> list[list]:
        """The task was cancelled: so are the tasks it submitted (Ray's recursive=True)."""
        task_id = task_of(return_ids[0]) if return_ids else ""
        if self._cancelled_ids.get(task_id, True):
            self._cancel_children(force=False)
        data = objects.serialize(TaskCancelledError(task_id))
        return [[oid, KIND_ERROR, data] for oid in return_ids]

    def _cancel_children(self, force: bool) -> None:
        try:
            self.runtime.cancel_children(force)
        except Exception as e:
            print(f"taskmesh worker {self.pid}: cancelling child tasks failed: {e!r}", file=sys.__stderr__)

    def _on_unblock(self) -> None:
        """A wait in `get` ended (its CPU was lent out). A task blocked in its own `get`
        takes its CPU back at once (as Ray, this may briefly oversubscribe the node); one
        that waited for its arguments gets it back before it starts (_take_cpu_back), as
        Ray starts no task before its arguments are there."""
        if self._awaiting_args:
            self._owes_cpu = True
        else:
            self._send(wire.Unblocked())

    def _take_cpu_back(self, failing: bool) -> None:
        """Ask for the CPU lent out while the arguments were awaited, and wait until the
        agent gives it (Resume). A task that ends anyway (`failing`: cancelled, say), or
        is cancelled meanwhile, takes it back at once."""
        self._owes_cpu = False
        if failing:
            self._send(wire.Unblocked())
            return
        self._resumed.clear()
        self._send(wire.Reacquire())
        try:
            self._resumed.wait()
        except BaseException:
            self._send(wire.Unblocked())
            raise

    def _resolve_args(self, args: list, kwargs: dict, timeout_s: float | None = None) -> bytes | None:
        """Replace top-level refs by their values, in place; nested refs stay refs.
        Returns the serialized error of a failed argument, which becomes the result;
        GetTimeoutError (nothing replaced) when they are not all there in `timeout_s`."""
        if not args and not kwargs:
            return None
        positions = [i for i, a in enumerate(args) if isinstance(a, ObjectRef)]
        names = [k for k, v in kwargs.items() if isinstance(v, ObjectRef)]
        if not positions and not names:
            return None
        ids = [args[i].hex() for i in positions] + [kwargs[k].hex() for k in names]
        self._arg_refs = list(dict.fromkeys(ids))
        plane = self.runtime.plane

        def value(oid: str, raw: tuple[bytes, bytes]) -> Any:
            return _ArgError(raw[1]) if raw[0] == KIND_ERROR else plane.decode(oid, *raw)

        # A lost argument is made again here (and waited for) by get_decoded.
        values = self.runtime.get_decoded(ids, timeout_s, value)
        for oid in ids:
            if isinstance(values[oid], _ArgError):
                return values[oid].data
        for i in positions:
            args[i] = values[args[i].hex()]
        for k in names:
            kwargs[k] = values[kwargs[k].hex()]
        return None


# The runtime context between tasks (nothing changes it: a task gets a context of its own).
_IDLE = TaskContext()


class _Retry(Exception):
    pass


class _Ran(NamedTuple):
    """A task's end, as _run returns it."""

    objs: list[list] | None  # its results; None: queue it again (retry_exceptions)
    owner: str
    notice: bytes
    stored: tuple  # what complete.lua stores: the results and the lineage pseudo-object
    retiring: bool  # max_calls reached: the worker exits after it
    kept: bool  # the owner keeps the results: they are not stored (Notice.kept)


class _ArgError:
    """A task argument whose object is an error (serialized): it becomes the result."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taskmesh-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--slot-fd", type=int, default=None)
    args = parser.parse_args(argv)
    _process.fate_share_with_parent()
    _process.enable_stack_dumps(temp_root())
    # The agent learns the worker ended by EOF on this socket: no other process may
    # hold it (see process.detach_in_forks).
    os.set_inheritable(args.fd, False)
    _process.detach_in_forks(args.fd)
    conn = Connection(args.fd)
    address = config.ADDRESS.get()
    if not address:
        raise SystemExit(f"{config.ADDRESS.name} is not set: a worker is started by its node agent")
    store = Store(address, prefix=config.PREFIX.get() or "tm")
    worker = Worker(conn, store, config.NODE_ID.get() or "", args.slot_fd)
    worker.serve()
    worker.flush_logs(with_events=True)  # the last task's events (max_calls reached)
    os._exit(0)


if __name__ == "__main__":
    main()
