"""The per-process runtime: submits tasks, tracks the objects this process owns, and
answers get/put/wait. A driver has one after `init()`; every worker has one too, so tasks
can submit tasks.

Submission is buffered and flushed by one background thread in pipelined batches, so a
loop of `.remote()` calls costs one round trip per batch, not per task. Completion notices
for this process's tasks arrive on its `done` stream, read by one listener thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskmesh import objects
from taskmesh._base import config
from taskmesh._base.ids import index_of, owner_of, task_of
from taskmesh._base.wire import (
    QueueEntry,
    TaskContext,
    WireError,
    decode_notice,
    encode_notice,
)
from taskmesh._core import events as _events
from taskmesh._core import lifecycle
from taskmesh._core.failure import call_failures
from taskmesh._core.router import PgTarget, Route, Router
from taskmesh._core.streams import RefState, StreamMethods
from taskmesh.exceptions import (
    GetTimeoutError,
    ObjectStoreFullError,
    OwnerDiedError,
    RayError,
    RayTaskError,
    StoreUnavailableError,
    TaskCancelledError,
)
from taskmesh.objects import KIND_ERROR, KIND_SHM, ObjectRef
from taskmesh.objects.plane import ObjectPlane, ObjectRebuilding, parse_descriptor
from taskmesh.store import KIND_OWNER_GONE, Completion, Outgoing, Release, Store, retry_transient
from taskmesh.store.outage import Outage

if TYPE_CHECKING:
    import redis

_LISTEN_BLOCK_MS = 1000
# The listener lingers _LINGER_S after a read of fewer than _LINGER_BELOW notices while at
# least _LINGER_PENDING results are outstanding.
_LINGER_S = 0.002
_LINGER_BELOW = 64
_LINGER_PENDING = 64
# Submitted task events are sent with the submission flush that comes this long after the
# last send, or once this many have gathered.
_EVENTS_EVERY_S = 0.2
_EVENTS_BATCH = 500


@dataclass(slots=True)
class _PendingTask:
    outgoing: Outgoing
    deps: set[str]
    # (demand, shape, every dependency) of a DEFAULT task: placed near its largest argument
    locality: tuple[dict[str, float], str, tuple[str, ...]] | None = None


class Runtime(StreamMethods):
    """Everything one process needs to talk to the cluster."""

    def __init__(
        self,
        store: Store,
        *,
        job_id: str | None,
        namespace: str | None,
        node_id: str | None = None,
        is_worker: bool = False,
        owner: str | None = None,
    ):
        self.store = store
        self.job_id = job_id
        # Set in a detached actor's process and in the tasks of its work: what it
        # submits outlives the job (_core/lifecycle.dropped_with_job).
        self.detached = False
        self.namespace = namespace
        self.node_id = node_id
        self.is_worker = is_worker
        self.owner = owner or objects.new_owner_tag()
        self.context = TaskContext(job_id=job_id)
        # What the tasks and actors this process submits inherit (the job's runtime_env
        # in a driver, the running task's or actor's in a worker).
        self.runtime_env: dict[str, Any] | None = None
        self._task_events: list[dict[str, Any]] = []  # submitted events not sent yet
        self._events_sent_at = 0.0
        self.plane = ObjectPlane(store, node_id, self.owner)
        self.router = Router(store)
        # Hooks a worker sets to tell its agent it blocks in get (its CPU is lent out).
        self.on_block: Callable[[], None] | None = None
        self.on_unblock: Callable[[], None] | None = None
        # Set by an actor's server: exit_actor() tells it first (from a background asyncio
        # task, no call sees the exception it raises).
        self.on_exit_actor: Callable[[], None] | None = None
        # Set by a worker: whether a task (or actor call) id was cancelled, for
        # get_runtime_context().is_canceled(); an async actor's raises RuntimeError.
        self.canceled: Callable[[str | None], bool] = lambda task_id: False
        self.async_actor = False  # an async actor's process: is_canceled() is refused

        # Redis failures of the background loops, logged at a capped rate; a get gives
        # up once Redis has been unreachable for this long.
        self.outage = Outage(store.url, logging.getLogger("taskmesh"), prefix="taskmesh: ")
        self._unreachable_timeout_s = config.REDIS_UNREACHABLE_TIMEOUT_S.get()
        self._cond = threading.Condition()
        self._results: dict[str, tuple[bytes, bytes | None]] = {}
        self._pending: set[str] = set()
        self._actor_calls: set[str] = set()  # task ids of pending actor calls (force is refused)
        self._errors = 0  # errors stored in _results so far: a get wakes to look for its own
        self._waiting: dict[str, list[_PendingTask]] = {}
        self._discard: set[str] = set()
        self._buffer: list[Outgoing] = []
        self._free: list[Release] = []
        self._release_lock = threading.Lock()
        # Refs this process passed to its pending tasks, held until each task's notice.
        self._task_holds: dict[str, Sequence[str]] = {}
        # Objects just stored that contain refs (they hold them once recorded in Redis).
        self._containers: dict[str, Sequence[str]] = {}  # object id -> refs it holds
        self._ref_holders: set[str] = set()  # values encoded here that hold refs (holds_refs)
        self._exported: set[str] = set()
        self._shapes: set[str] = set()

        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._decrefs: collections.deque[str] = collections.deque()
        # Refs of other owners' objects: those held here (registered in Redis as
        # borrowed by this process), and those newly seen, not registered yet.
        self._borrowed: set[str] = set()
        self._new_borrows: collections.deque[str] = collections.deque()
        self._holder = f"p:{self.owner}"
        # Own refs that left this process in a way nobody tracks (pickled by hand, an
        # actor's constructor arguments): kept until this process shuts down.
        self._escaped: set[str] = set()
        # Own small results that arrived in their completion notice only (Notice.kept):
        # their values live here alone. When a ref of one leaves this process (shared),
        # the value is stored in Redis first, as any object (_stores, sent by the next
        # flush before anything else), so that others can read it; one shared while its
        # task runs is stored when its notice comes (_shared_pending).
        self._unstored: set[str] = set()
        self._shared_pending: set[str] = set()
        self._stores: list[tuple[str, bytes, bytes, bool]] = []
        self._closing = False
        self._wake = threading.Event()
        # What the generator streams (StreamMethods) share with the rest: the same objects.
        self.refs = RefState(self._cond, self._wake, self._results, self._pending, self._free,
                             self._counts, self._counts_lock)
        self._init_streams()
        self._flusher = threading.Thread(target=self._flush_loop, name="taskmesh-flush", daemon=True)
        self._flusher.start()
        self._listener: threading.Thread | None = None
        self._listen_client_id: int | None = None  # the listener's connection, to unblock it
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        objects.set_tracker(self)

    # ---- reference tracking (objects.RefTracker) ------------------------------------

    def incref(self, object_id: str) -> None:
        with self._counts_lock:
            n = self._counts.get(object_id, 0)
            self._counts[object_id] = n + 1
        if n == 0 and owner_of(object_id) != self.owner:
            self._new_borrows.append(object_id)

    def decref(self, object_id: str) -> None:
        # Called from __del__, possibly inside any lock of any thread: never block here.
        self._decrefs.append(object_id)
        cached = self._results.get(object_id)  # one atomic dict read, no lock
        # A dropped shared-memory object is freed now, so that the next large put can
        # reuse its pages; small ones are freed in batches.
        if len(self._decrefs) > 512 or (cached is not None and cached[0] == KIND_SHM):
            self._wake.set()

    def escaped(self, object_id: str) -> None:
        self._escaped.add(object_id)

    def shared(self, object_id: str) -> None:
        """A ref is being serialized (it may leave this process): an own value kept here
        only is stored in Redis with the next flush, before what carries the ref is sent."""
        if owner_of(object_id) != self.owner:
            return
        with self._cond:
            if object_id in self._unstored:
                self._unstored.discard(object_id)
                kind, data = self._results[object_id]
                self._stores.append((object_id, kind, data, True))  # type: ignore[arg-type]
                self._wake.set()
            elif object_id in self._pending:
                self._shared_pending.add(object_id)

    def fail_drained_calls(self, actor_id: str, cause: str) -> None:
        """Declare a not-yet-running actor dead and fail the calls queued for it."""
        from taskmesh._core.failure import actor_down

        actor_down(self.store, actor_id, restart=False, cause=cause)

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=8, thread_name_prefix="taskmesh-future")
        return self._executor.submit(lambda: self.get([ref], None)[0])

    def _release_dropped(self) -> None:
        """Turn ref drops and new borrowed refs into hold changes for the next flush:
        an own object whose last ref here is gone loses its owner's hold (it is freed
        unless another process or object holds it); a borrowed ref is registered while
        this process holds it. Registrations go before releases."""
        dropped, borrow, unborrow = [], [], []
        with self._counts_lock:
            while self._decrefs:
                oid = self._decrefs.popleft()
                n = self._counts.get(oid, 0) - 1
                if n > 0:
                    self._counts[oid] = n
                else:
                    self._counts.pop(oid, None)
                    dropped.append(oid)
                    # A dynamic generator's value held its items here.
                    self._decrefs.extend(self._dynamic_items.pop(oid, ()))
            for oid in dropped:
                if oid in self._borrowed:
                    self._borrowed.discard(oid)
                    unborrow.append(oid)
            while self._new_borrows:
                oid = self._new_borrows.popleft()
                if self._counts.get(oid, 0) > 0 and oid not in self._borrowed:
                    self._borrowed.add(oid)
                    borrow.append(oid)
        ops = [Release(oid, self._holder, 1) for oid in borrow]
        with self._cond:
            ops += self._drop_streams()
            for oid in dropped:
                if owner_of(oid) != self.owner:
                    self._results.pop(oid, None)
                elif oid in self._escaped:
                    continue
                elif oid in self._pending:
                    self._discard.add(oid)
                elif oid in self._unstored:  # never stored: nothing to release
                    self._unstored.discard(oid)
                    self._results.pop(oid, None)
                else:
                    self._results.pop(oid, None)
                    ops.append(Release(oid, "owner", -1))
            ops += [Release(oid, self._holder, -1) for oid in unborrow]
            self._free[:0] = ops[:len(borrow)]
            self._free += ops[len(borrow):]

    def contains_refs(self, object_id: str, refs: Sequence[str] | None = None) -> bool:
        """Whether a value just encoded as `object_id` holds refs (recorded at the next
        `sync_refs`); with `refs`, record that it holds those."""
        with self._cond:
            if refs:
                self._containers[object_id] = (*self._containers.get(object_id, ()), *refs)
            return object_id in self._containers

    def encode_value(self, object_id: str, value: Any) -> list:
        """[object_id, kind, data] of a task's return value, written where it belongs;
        the refs it contains are held by it from the next `sync_refs`."""
        kind, data, nested = self.plane.encode(object_id, value)
        if nested:
            with self._cond:
                self._containers[object_id] = nested
                self._ref_holders.add(object_id)
        return [object_id, kind, data]

    def holds_refs(self, object_id: str) -> bool:
        """Whether the value `encode_value` encoded as `object_id` holds refs (asked once
        per value: the answer is forgotten)."""
        if object_id not in self._ref_holders:  # added before it is asked, by the asker's flow
            return False
        with self._cond:
            if object_id in self._ref_holders:
                self._ref_holders.discard(object_id)
                return True
            return False

    def hold_for_lineage(self, object_ids: Sequence[str], arg_ids: Sequence[str], *,
                         rebuild: bool) -> None:
        """Results that keep their task's lineage hold the task's ref arguments too (so
        the task can run again), from the next `sync_refs`. A run that re-makes lost
        results adds no holds: the results it re-makes still hold what they held."""
        with self._cond:
            for oid in object_ids:
                if rebuild:
                    self._containers.pop(oid, None)
                elif arg_ids:
                    held = self._containers.get(oid, ())
                    self._containers[oid] = tuple(dict.fromkeys((*held, *arg_ids)))

    def sync_refs(self) -> None:
        """Bring Redis up to date with the refs this process holds, now. A worker calls
        it before reporting a task done, since the caller then drops the refs it lent
        the task: what the task kept must be registered first."""
        if self.holds_due():
            self._send_holds()

    # ---- submission -----------------------------------------------------------------

    def export_function(self, fn_id: str, blob_fn: Callable[[], bytes]) -> None:
        if fn_id not in self._exported:
            self.store.export_function(fn_id, blob_fn())
            self._exported.add(fn_id)

    def ensure_shape(self, shape: str, demand: dict[str, float] | None = None) -> None:
        if shape not in self._shapes:
            self.store.register_shape(shape)
            self._shapes.add(shape)
            if demand is not None:
                self.router.warn_if_infeasible(shape, demand)

    def route(self, strategy: Any, demand: dict[str, float], shape: str, deps: Sequence[str],
              *, actor: bool) -> Route:
        """The queue a task or actor creation goes to (see router.py). A task
        inherits its parent's placement group when the parent captures child tasks."""
        from taskmesh._core.strategies import PlacementGroupSchedulingStrategy

        self.ensure_shape(shape, demand)
        pg = None
        if isinstance(strategy, PlacementGroupSchedulingStrategy):
            if strategy.placement_group is not None:
                capture = bool(strategy.placement_group_capture_child_tasks)
                pg = PgTarget(strategy.placement_group.id.hex(),
                              strategy.placement_group_bundle_index, capture)
        elif strategy in (None, "DEFAULT") and self.context.pg and self.context.pg[2]:
            pg = PgTarget(self.context.pg[0], -1, True)
        near = None
        if strategy in (None, "DEFAULT") and pg is None and deps:
            near = self._largest_local(deps)
        return self.router.route(strategy, demand, shape, actor=actor, pg=pg, near=near)

    def _largest_local(self, deps: Sequence[str]) -> str | None:
        """The node holding the most bytes of these (ready) shared-memory arguments."""
        by_node: dict[str, int] = {}
        with self._cond:
            for oid in deps:
                kind, data = self._results.get(oid, (None, None))
                if kind == KIND_SHM and data:
                    size, node = parse_descriptor(data)
                    by_node[node] = by_node.get(node, 0) + size
        return max(by_node, key=by_node.__getitem__) if by_node else None

    def _relocate(self, task: _PendingTask) -> Outgoing:
        """A DEFAULT task whose arguments just became ready goes near the largest."""
        out = task.outgoing
        if task.locality is None:
            return out
        demand, shape, deps = task.locality
        node = self._largest_local(deps)
        route = self.router.route(None, demand, shape, actor=False, pg=None, near=node)
        if route.queue == out.target:
            return out
        return dataclasses.replace(out, target=route.queue, entry=out.entry.routed(route.shape, route.soft))

    def fail_unschedulable(self, entry: QueueEntry, returns: Sequence[str], why: str,
                           actor_id: str | None = None) -> None:
        """A task (or actor) that can never be placed: its results (its calls) fail at once."""
        from taskmesh._core import failure as _failure

        task_error, actor_cause = _failure.unschedulable(why)
        if actor_id is not None:
            _failure.fail_entries(self.store, [entry], task_error=task_error, actor_cause=actor_cause)
            return
        with self._cond:
            self._pending.update(returns)
        if self._listener is None:
            self._start_listener()
        self.store.complete_tasks(call_failures([entry], task_error), {})

    def submit(
        self, queue: str, entry: QueueEntry, deps: Sequence[str], returns: Sequence[str],
        actor_id: str | None = None, holds: Sequence[str] = (),
        locality: tuple[dict[str, float], str] | None = None,
    ) -> None:
        """Queue a task; it is sent once every dependency this process owns is ready.
        Actor calls are sent at once, in submission order: the actor resolves their
        arguments itself, so a call waiting for an argument never overtakes another.
        `holds` (every ref in the arguments) stay held here until the task's completion
        notice; a task with no returns sends no notice, so its refs count as escaped."""
        out = Outgoing(queue, entry, actor_id, tuple(returns))
        if holds:
            for oid in holds:
                self.incref(oid) if returns else self.escaped(oid)
            if returns:
                with self._cond:
                    self._task_holds[entry.task] = holds
        with self._cond:
            self._pending.update(returns)
            if actor_id and returns:
                self._actor_calls.add(entry.task)
            waiting_on = set() if actor_id else {d for d in deps if d in self._pending}
            if waiting_on:
                task = _PendingTask(out, waiting_on,
                                    (*locality, tuple(deps)) if locality is not None else None)
                for d in waiting_on:
                    self._waiting.setdefault(d, []).append(task)
            else:
                self._buffer.append(out)
        if self._listener is None:
            self._start_listener()
        if not waiting_on and not self._wake.is_set():  # (a set costs a lock and a notify)
            self._wake.set()

    def flush(self) -> None:
        """Send everything buffered now (used at shutdown and by tests)."""
        self._flush_once(everything=True)

    def _flush_loop(self) -> None:
        failures = 0
        last_beat = 0.0
        while not self._closing:
            if not failures:
                self._wake.wait(1.0)
            self._wake.clear()
            try:
                if self.job_id is not None and not self.is_worker and time.monotonic() - last_beat >= 1.0:
                    self.store.driver_alive(self.owner, self.job_id)  # see monitor.py
                    last_beat = time.monotonic()
                self._flush_once()
                failures = 0
                self.outage.succeeded()
            except StoreUnavailableError as e:  # Redis restarting: the batch was kept
                self.outage.failed("sending submissions", e)
                failures += 1
                time.sleep(min(0.05 * 2 ** failures, 2.0) * random.uniform(0.5, 1.0))
            except ObjectStoreFullError as e:  # Redis over maxmemory: the batch was kept
                if not failures:
                    _log_background_error("sending submissions (kept until Redis has room)", e)
                failures += 1
                time.sleep(min(0.05 * 2 ** failures, 2.0) * random.uniform(0.5, 1.0))
            except Exception as e:
                _log_background_error("flushing submissions", e)
                time.sleep(0.1)

    def _flush_once(self, everything: bool = False) -> None:
        self._send_holds(self._due_events(everything))
        self._send_consumed()

    def _send_batch(self, events: list[dict[str, Any]]) -> None:
        """Submit what is buffered (and these task events). Called under _release_lock:
        one submitter at a time keeps each actor's calls in order."""
        with self._cond:
            batch, self._buffer = self._buffer, []
        try:
            dead = self.store.submit(batch, events) if batch else []
            if events and not batch:
                self.store.add_events(events)
        except (StoreUnavailableError, ObjectStoreFullError):
            # Kept for the next try. Part of the batch may have been applied: a task may
            # then run twice (its first result wins); an actor skips a call it has run.
            with self._cond:
                self._buffer[:0] = batch
                self._task_events[:0] = events
            raise
        # Their submitted events go with a later submission (actor calls: recorded by
        # their actor only), so that a loop of single submissions adds no command.
        submitted = [_events.submitted(o.entry, self.job_id) for o in batch
                     if o.actor_id is None and o.entry.events]
        if submitted:
            with self._cond:
                self._task_events += submitted
        if dead:
            self._fail_calls([(batch[i], cause) for i, cause in dead])

    def _due_events(self, everything: bool) -> list[dict[str, Any]]:
        """The submitted events to send with this flush: all those gathered, once
        _EVENTS_EVERY_S has passed since the last send or _EVENTS_BATCH have gathered
        (or now, with `everything`)."""
        with self._cond:
            events = self._task_events
            now = time.monotonic()
            if not events or not (everything or len(events) >= _EVENTS_BATCH
                                  or now - self._events_sent_at >= _EVENTS_EVERY_S):
                return []
            self._task_events, self._events_sent_at = [], now
        return events

    def holds_due(self) -> bool:
        """Whether `_send_holds` has anything to send: what it drains below (kept values
        to store, dropped and new refs, streams, the buffer, releases, containers)."""
        return bool(self._stores or self._decrefs or self._new_borrows or self._streams
                    or self._buffer or self._free or self._containers)

    def _send_holds(self, events: list[dict[str, Any]] | None = None) -> None:
        """Send the hold changes gathered so far: what objects contain first, then
        borrows and releases, each after what was submitted here before the ref was
        dropped (the buffer is sent first): an actor whose token this frees has this
        process's calls queued before its terminate call (lifecycle.release). One sender
        at a time, so that a large put waiting here finds the memory of the objects just
        freed (see `put`)."""
        with self._release_lock:
            self._store_shared()
            self._release_dropped()
            if events or self._buffer:
                self._send_batch(events or [])
            with self._cond:
                ops = self._free[:]  # in place: RefState shares the list
                self._free.clear()
                containers, self._containers = self._containers, {}
            try:
                if containers:
                    self.store.hold_nested(containers)
                    containers = {}
            except StoreUnavailableError:
                with self._cond:  # holds only add: sending them again is safe
                    self._containers.update(containers)
                    self._free[:0] = ops
                raise
            try:
                if ops:
                    lifecycle.release(self.plane, ops)
            except StoreUnavailableError:
                # Redis is away (restarting): keep them for the next flush, or the objects
                # they release would outlive their owner. Dropping a hold twice changes
                # nothing (release.lua), and a refused connection sent nothing at all.
                with self._cond:
                    self._free[:0] = ops
                raise

    def _store_shared(self) -> None:
        """Store the kept values whose refs are leaving this process (see `shared`),
        before the submissions, objects and holds that carry those refs are sent."""
        with self._cond:
            stores, self._stores = self._stores, []
        if stores:
            try:
                self.store.store_kept(stores)
            except (StoreUnavailableError, ObjectStoreFullError):
                with self._cond:  # the same writes again are harmless
                    self._stores[:0] = stores
                raise

    # ---- cancellation -------------------------------------------------------------------

    def cancel(self, object_id: str, *, force: bool, recursive: bool = True,
               error: Exception | None = None) -> None:
        """Cancel the task that makes `object_id` (Ray's `cancel`): its results become
        TaskCancelledError at once (a result stored earlier wins: a finished task stays
        finished); a task not sent yet is never sent; a sent one is dropped by the agent
        that has it queued, or interrupted (SIGINT, KeyboardInterrupt in the task) or,
        with force, killed where it runs; with `recursive`, the tasks it submitted are
        cancelled too. An actor call is skipped if queued, or cancelled as an asyncio
        task in an async actor; force is refused for it (ValueError, as Ray). `error`:
        the results' error instead of TaskCancelledError."""
        task_id = task_of(object_id)
        with self._cond:
            returns = sorted(o for o in self._pending if task_of(o) == task_id)
            if not returns:
                return  # finished already, or not a task of this process
            if force and task_id in self._actor_calls:
                raise ValueError("force=True is not supported for actor tasks.")
            out = self._take_unsent(task_id)
        data = objects.serialize(TaskCancelledError(task_id) if error is None else error)
        objs = [(oid, KIND_ERROR, data) for oid in returns]
        self.store.complete_tasks([Completion(self.owner, encode_notice(task_id, objs), tuple(objs))], {})
        if out is None:
            self.store.publish_cancel(task_id, force, recursive)

    def cancel_children(self, force: bool = False) -> None:
        """Cancel every task this process still waits for (a cancelled task's children;
        force applies to tasks, not to actor calls, as Ray)."""
        with self._cond:
            task_ids = {task_of(oid) for oid in self._pending}
            calls = set(self._actor_calls)
        for task_id in task_ids:
            self.cancel(objects.object_id(task_id, 1), force=force and task_id not in calls)

    def _take_unsent(self, task_id: str) -> Outgoing | None:
        """Remove a task not sent yet (buffered or waiting for its arguments); returns
        it, or None when it was sent already. Called under self._cond."""
        for i, out in enumerate(self._buffer):
            if out.entry.task == task_id:
                return self._buffer.pop(i)
        for waiters in self._waiting.values():
            for task in waiters:
                if task.outgoing.entry.task == task_id:
                    waiters.remove(task)
                    return task.outgoing
        return None

    def _fail_calls(self, calls: list[tuple[Outgoing, str]]) -> None:
        """Calls sent to a dead actor: their results become ActorDiedError."""
        from taskmesh._core.failure import death_error

        completions: list[Completion] = []
        for out, cause in calls:
            assert out.actor_id is not None, "Store.submit reports dead actors for actor calls only"
            completions += call_failures([out.entry], death_error(out.actor_id, cause))
        self.store.complete_tasks(completions, {})

    # ---- completions ----------------------------------------------------------------

    def _start_listener(self) -> None:
        with self._cond:
            if self._listener is not None:
                return
            client = self.store.dedicated()
            # Asked now: once the listener blocks on this connection, it cannot answer.
            self._listen_client_id = client.client_id()
            self._listener = threading.Thread(target=self._listen_loop, args=(client,), name="taskmesh-done",
                                              daemon=True)
            self._listener.start()

    def _listen_loop(self, client: redis.Redis) -> None:
        last = b"0-0"
        trim: bytes | None = None
        consumed, trimmed_at = 0, time.monotonic()
        while not self._closing:
            try:
                notices = self.store.read_done(client, self.owner, last, _LISTEN_BLOCK_MS, trim)
                self.outage.succeeded()
            except Exception as e:
                if self._closing:
                    return
                if isinstance(e, StoreUnavailableError):
                    self.outage.failed("reading completions", e)
                else:
                    _log_background_error("reading completions", e)
                time.sleep(0.2)
                continue
            trim = None
            if notices:
                last = notices[-1][0]
                self._on_notices([n for _, n in notices])
                consumed += len(notices)
                # Many results outstanding but few came: let more gather before the next
                # read (one read then takes many notices: fewer XREADs and wake-ups per
                # task). A lone awaited result (a get in a loop) is read at once.
                if len(notices) < _LINGER_BELOW and len(self._pending) >= _LINGER_PENDING:
                    time.sleep(_LINGER_S)
            # Trim consumed notices now and then, not on every read (it is a command).
            if consumed and (consumed >= 1000 or time.monotonic() - trimmed_at > 1.0):
                ms, _, seq = last.partition(b"-")
                trim = ms + b"-" + str(int(seq) + 1).encode()
                consumed, trimmed_at = 0, time.monotonic()

    def _on_notices(self, notices: list[bytes]) -> None:
        ready_tasks: list[_PendingTask] = []
        wake: list[Callable[[], None]] = []
        with self._cond:
            for raw in notices:
                try:
                    notice = decode_notice(raw)
                except WireError as e:
                    _log_background_error("reading a completion notice", e)
                    continue
                task_id, objs = notice.task_id, notice.objects
                stream = self._streams.get(task_id)
                if stream is not None:
                    wake += stream.waiters
                    stream.waiters = []
                if notice.item:
                    self._on_items(task_id, stream, objs)
                    continue
                for oid in self._task_holds.pop(task_id, ()):
                    self.decref(oid)  # the task is done with the refs it was lent
                if self._actor_calls:
                    self._actor_calls.discard(task_id)
                if stream is not None and stream.dropped:
                    self._forget_stream(task_id)
                head = objs[0][0] if objs and objs[0][0] in self._pending else None
                head_wanted = head is not None and head not in self._discard
                for oid, kind, data in objs:
                    if oid not in self._pending:
                        if head is not None and index_of(oid) != 1:
                            self._hold_dynamic_item(head, head_wanted, oid, kind, data)
                        elif head is None and not notice.kept and owner_of(oid) == self.owner and (
                                oid in self._unstored or not (
                                    oid in self._results or oid in self._counts or oid in self._escaped)):
                            # A second run of a task (a re-sent batch, a completion re-sent
                            # after a lost reply) stored again an object this owner had
                            # freed, or one it keeps unstored. Free that copy.
                            self._free.append(Release(oid, "owner", -1))
                        continue  # a duplicate notice from a retried attempt
                    self._pending.discard(oid)
                    shared = bool(self._shared_pending) and oid in self._shared_pending
                    if shared:
                        self._shared_pending.discard(oid)
                    if oid in self._discard:
                        self._discard.discard(oid)
                        if not notice.kept:
                            self._free.append(Release(oid, "owner", -1))
                        elif shared:  # a stored object holds it (or will): store it unheld
                            self._stores.append((oid, kind, data, False))
                    else:
                        self._results[oid] = (kind, data)
                        if notice.kept:
                            if shared:
                                self._stores.append((oid, kind, data, True))
                            else:
                                self._unstored.add(oid)
                        if kind == KIND_ERROR:
                            self._errors += 1
                    for task in self._waiting.pop(oid, ()):
                        task.deps.discard(oid)
                        if not task.deps:
                            ready_tasks.append(task)
            for task in ready_tasks:
                self._buffer.append(self._relocate(task))
            self._cond.notify_all()
        for callback in wake:
            try:
                callback()
            except Exception as e:  # e.g. the waiting event loop was closed
                _log_background_error("waking a generator's reader", e)
        if ready_tasks or self._free or self._stores:
            self._wake.set()

    # ---- objects --------------------------------------------------------------------

    def put(self, value: Any, owner_task: str | None = None) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling 'put' on an ObjectRef is not allowed. If you really want "
                            "to do this, you can wrap the ObjectRef in a list and call 'put' on it.")
        oid = objects.object_id(objects.new_task_id(self.owner), 0)
        ser, nested = self.plane.serialize(value)
        if ser.size > self.plane.inline_limit and self.plane.shm is not None:
            retry_transient(self.sync_refs)  # free what was just dropped: this put may reuse its memory
        kind, data = self.plane.store_serialized(oid, ser)
        size = parse_descriptor(data)[0] if kind == KIND_SHM else len(data)
        try:
            if nested:  # holds the refs it contains: not repeatable
                self.store.put_object(oid, kind, data, size, nested)
            else:  # through a Redis restart
                retry_transient(lambda: self.store.put_object(oid, kind, data, size, nested))
        except BaseException:
            self.plane.release([Release(oid, "owner", -1)])  # nothing half-written stays
            raise
        ref: ObjectRef[Any] = ObjectRef(oid)
        with self._cond:
            self._results[oid] = (kind, data)
        return ref

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """The values, in order; as Ray, the first error found is raised as soon as it
        is there, without waiting for the other objects."""
        values = self.get_decoded([r.hex() for r in refs], timeout, self.decode, fail_fast=True)
        return [values[r.hex()] for r in refs]

    def get_decoded(
        self, ids: Sequence[str], timeout: float | None,
        decode: Callable[[str, tuple[bytes, bytes]], Any], *, fail_fast: bool = False,
    ) -> dict[str, Any]:
        """Fetch the objects and decode each (in order; `decode` may raise). An object
        whose every copy turned out lost is being made again (see objects/plane.py):
        it is fetched again, waiting for its new value within the same timeout. With
        `fail_fast`, fetching stops at the first stored error, which `decode` must raise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        todo = list(dict.fromkeys(ids))
        raw = self._fetch(todo, timeout, fail_fast)
        out: dict[str, Any] = {}
        while True:
            if fail_fast:
                for oid in todo:
                    value = raw.get(oid)
                    if value is not None and value[0] == KIND_ERROR:
                        decode(oid, value)
            again = []
            for oid in todo:
                try:
                    out[oid] = decode(oid, raw[oid])
                except ObjectRebuilding:
                    again.append(oid)
            if not again:
                return out
            with self._cond:  # the cached value names the lost copy
                for oid in again:
                    self._results.pop(oid, None)
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            raw.update(self._fetch(again, remaining, fail_fast))
            todo = again

    def decode(self, object_id: str, value: tuple[bytes, bytes]) -> Any:
        """The value of a fetched object; a stored error is raised."""
        kind, data = value
        result = self.plane.decode(object_id, kind, data)
        if kind == KIND_ERROR:
            if isinstance(result, RayTaskError):
                raise result.as_instanceof_cause()
            if isinstance(result, BaseException):
                raise result
            raise RayError(f"Malformed error object: {result!r}")
        return result

    def get_raw(self, object_ids: Sequence[str], timeout: float | None) -> dict[str, tuple[bytes, bytes]]:
        return self._fetch(object_ids, timeout)

    def _fetch(self, ids: Sequence[str], timeout: float | None,
               fail_fast: bool = False) -> dict[str, tuple[bytes, bytes]]:
        """The objects' stored values; with `fail_fast`, only some of them as soon as
        one is an error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        found: dict[str, tuple[bytes, bytes]] = {}
        missing = list(dict.fromkeys(ids))
        blocked = False
        delay = 0.001
        errors: list[str] | None = [] if fail_fast else None
        errors_seen = -1
        try:
            while True:
                missing, remote = self._take_local(missing, found, errors)
                if remote:
                    # Through a Redis restart: waiting here is what a get does anyway.
                    began = time.monotonic()
                    try:
                        values = retry_transient(
                            functools.partial(self.store.get_objects, remote, self.owner),
                            deadline_s=self._unreachable_timeout_s)
                    except StoreUnavailableError as e:
                        self.outage.failed("reading objects", e)
                        seconds = max(self.outage.down_for(), time.monotonic() - began)
                        raise StoreUnavailableError(f"{self.outage.message(seconds)} "
                                                    f"({config.REDIS_UNREACHABLE_TIMEOUT_S.name})") from e
                    for oid, value in zip(remote, values, strict=True):
                        if value is not None and value[0] == KIND_OWNER_GONE:  # as Ray
                            value = (KIND_ERROR, objects.serialize(OwnerDiedError(oid)))
                        if value is not None:
                            found[oid] = value
                            if errors is not None and value[0] == KIND_ERROR:
                                errors.append(oid)
                    missing = [oid for oid in missing if oid not in found]
                if errors is not None:
                    if errors_seen != self._errors:
                        # An error was stored here since the last look: it may be one of
                        # ours past the first object still running (which _take_local
                        # does not look beyond).
                        errors_seen = self._take_local_errors(missing, found, errors)
                    if errors:
                        return found
                if not missing:
                    return found
                if not blocked and self.on_block is not None:
                    self.on_block()
                    blocked = True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise GetTimeoutError(
                        f"Get timed out: some object(s) not ready after {timeout} s: "
                        f"{missing[:3]}{'...' if len(missing) > 3 else ''}")
                if self.outage.down_for() > self._unreachable_timeout_s:
                    raise StoreUnavailableError(f"{self.outage.message()} "
                                                f"({config.REDIS_UNREACHABLE_TIMEOUT_S.name})")
                with self._cond:
                    # Wait while the first missing object is still running here; the
                    # others are checked again only once it is done (or, now and then,
                    # whether Redis has been gone too long).
                    if missing[0] in self._pending:
                        self._cond.wait(1.0 if remaining is None else min(remaining, 1.0))
                        continue
                # Objects owned elsewhere: nobody notifies us, so poll with backoff.
                time.sleep(min(delay, remaining) if remaining is not None else delay)
                delay = min(delay * 2, 0.05)
        finally:
            if blocked and self.on_unblock is not None:
                self.on_unblock()

    def _take_local(
        self, missing: list[str], found: dict[str, tuple[bytes, bytes]],
        errors: list[str] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Fill `found` from this process's results, in order, up to the first object
        still running here (the caller waits for that one before looking further, so
        a get of n refs costs O(n), not O(n) per completion); the errors found are added
        to `errors`. Returns (still missing, ids to look up in Redis)."""
        remote: list[str] = []
        with self._cond:
            results, pending = self._results, self._pending
            for i, oid in enumerate(missing):
                hit = results.get(oid)
                if hit is not None and hit[1] is not None:
                    found[oid] = hit  # type: ignore[assignment]
                    if errors is not None and hit[0] == KIND_ERROR:
                        errors.append(oid)
                elif oid in pending:
                    return remote + missing[i:], remote
                else:
                    remote.append(oid)
        return remote, remote

    def _take_local_errors(self, missing: list[str], found: dict[str, tuple[bytes, bytes]],
                           errors: list[str]) -> int:
        """Move every error among `missing` that this process holds into `found` and
        `errors` (O(len(missing)): done only when an error was stored since the last
        look). Returns the count of errors stored so far."""
        with self._cond:
            for oid in missing:
                hit = self._results.get(oid)
                if hit is not None and hit[0] == KIND_ERROR and hit[1] is not None:
                    found[oid] = hit  # type: ignore[assignment]
                    errors.append(oid)
            return self._errors

    def wait(
        self, refs: list[Any], num_returns: int, timeout: float | None, ids: set[str] | None = None
    ) -> tuple[list[Any], list[Any]]:
        """`api.wait`: refs are ready when their object exists; ObjectRefGenerators (any
        other element: api.wait checked them) when their next item has arrived or they
        have ended. `ids`: the refs' object ids, where all are ObjectRefs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        if ids is None:
            wanted = {ref._id for ref in refs if isinstance(ref, ObjectRef)}
            streams = {ref._task_id for ref in refs if not isinstance(ref, ObjectRef)}
        else:
            wanted, streams = ids, set()
        ready_ids: set[str] = set()
        ready_streams: set[str] = set()
        while True:
            with self._cond:  # set algebra: C speed for thousands of refs
                arrived = wanted & self._results.keys()
                ready_ids = ready_ids | arrived if ready_ids else arrived
                unknown = list(wanted - ready_ids - self._pending)
                ready_streams = {t for t in streams if self._stream_peek(t)[0] != "timeout"}
            if unknown:  # owned elsewhere, or no longer cached here: ask Redis
                exist = self.store.objects_exist(unknown)
                ready_ids.update(i for i, ok in zip(unknown, exist, strict=True) if ok)
            if len(ready_ids) == len(wanted) and not streams:  # all of them: in their order
                return refs[:num_returns], refs[num_returns:]
            if len(ready_ids) + len(ready_streams) >= num_returns:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            if not unknown:
                with self._cond:  # re-checked under the lock: no wakeup is missed
                    if (not (wanted - ready_ids) & self._results.keys()
                            and all(self._stream_peek(t)[0] == "timeout" for t in streams - ready_streams)):
                        self._cond.wait(remaining)
                continue
            time.sleep(min(delay, remaining) if remaining is not None else delay)
            delay = min(delay * 2, 0.05)
        ready: list[Any] = []
        not_ready: list[Any] = []
        for ref in refs:
            done = ref._id in ready_ids if isinstance(ref, ObjectRef) else ref._task_id in ready_streams
            (ready if done and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    # ---- shutdown -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Send what is buffered, stop the threads, free what this process owns."""
        if self.outage.ongoing(self.store.redis.ping):
            # Nothing can be sent or freed: the failure monitor ends the job's actors and
            # releases its refs once this driver's heartbeat is stale (monitor.py).
            logging.getLogger("taskmesh").warning("taskmesh: %s; shutting down without "
                                                  "cleaning up", self.outage.message())
            self._closing = True
            self._wake.set()
            objects.set_tracker(None)
            return
        try:
            self._flush_once(everything=True)
        except Exception as e:
            _log_background_error("flushing at shutdown", e)
        if not self.is_worker and self.job_id is not None:
            self._end_job()
        self._closing = True
        self._wake.set()
        if self._listener is not None and self._listen_client_id is not None:
            try:
                self.store.redis.client_unblock(self._listen_client_id)
            except Exception:
                pass
            self._listener.join(timeout=2)
        self._flusher.join(timeout=2)
        self._release_dropped()
        if self.job_id is not None and not self.is_worker:
            try:
                self.store.driver_gone(self.owner, self.job_id)
            except Exception as e:
                _log_background_error("unregistering the driver", e)
        if not self.is_worker:
            try:  # before the release: a task finishing after it stores nothing (complete.lua)
                self.store.owners_gone([self.owner])
            except Exception as e:
                _log_background_error("marking the driver gone", e)
        with self._cond:
            # Results of tasks still pending may have been stored since the listener
            # stopped: their owner hold goes too (releasing one not stored changes nothing).
            owned = [oid for oid in set(self._results) | self._escaped | set(self._counts) | self._pending
                     if owner_of(oid) == self.owner and oid not in self._unstored]
            ops = [op for op in self._free if op.holder == "owner" or op.delta < 0]
            streaming = bool(self._streams)
        with self._counts_lock:
            ops += [Release(oid, self._holder, -1) for oid in self._borrowed]
        ops += [Release(oid, "owner", -1) for oid in owned]
        try:
            if streaming and not self.is_worker:
                # Items of a generator call stored since the listener stopped have no id
                # here: what Redis holds of this owner is looked up (SCAN) instead.
                ops += [op for op in self.store.process_holds(self.owner) if op.holder == "owner"]
            if ops:  # what other processes or objects hold lives on
                lifecycle.release(self.plane, ops)
            self.store.delete_done(self.owner)
        except Exception as e:
            _log_background_error("freeing objects at shutdown", e)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        objects.set_tracker(None)


    def _end_job(self) -> None:
        """The job ends: its queued and running tasks, actors and placement groups go
        with it, except detached actors' work (as Ray; lifecycle.end_job)."""
        try:
            lifecycle.end_job(self.store, self.job_id, "its job ended before it started")  # type: ignore[arg-type]
        except Exception as e:
            _log_background_error("ending the job's actors and placement groups", e)


def _log_background_error(what: str, error: BaseException) -> None:
    import logging

    logging.getLogger("taskmesh").warning("taskmesh: error while %s: %r", what, error)
