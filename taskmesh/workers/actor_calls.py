"""How an actor's calls are started: the call records, and the two runners: a sync
actor's (InOrder: one at a time, each caller's in order, a call waiting for its
arguments holding back only its caller's) and a concurrent actor's (ConcurrentRunner:
overlapping, per concurrency group). Split from actor_runner.py, whose ActorServer
(`server` here, typed Any: this module may not import it back) runs the calls they start."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from taskmesh import objects
from taskmesh._base.wire import READY, TERMINATE, CallSpec, QueueEntry
from taskmesh._core.failure import EXITED
from taskmesh.exceptions import ActorExitRequest, TaskCancelledError
from taskmesh.objects import KIND_ERROR
from taskmesh.store import Leased
from taskmesh.workers.process import end_if_forked

# Threads of a concurrent actor that wait for the ref arguments of its calls (made as
# needed): while more calls than this wait, a call with ref arguments waits for a thread.
ARGUMENT_WAITERS = 64


class Exit(Exception):
    """The actor leaves its serving loop (terminate call or exit_actor())."""


@dataclass(frozen=True, slots=True)
class Call:
    """One method call read from the actor's call stream, decoded."""

    leased: Leased  # as read (its entry id is acked; a malformed one is dead-lettered as is)
    entry: QueueEntry  # its fields; entry.spec is a CallSpec

    @property
    def entry_id(self) -> bytes:
        return self.leased.entry_id

    @property
    def spec(self) -> CallSpec:
        return self.entry.spec  # type: ignore[return-value]


def return_ids_of(call: Call) -> list[str]:
    return [objects.object_id(call.entry.task, i + 1) for i in range(call.spec.num_returns)]


@dataclass(slots=True)
class Arguments:
    """A call's (args, kwargs), or `early`: its result objects when it fails before
    its method runs (arguments that do not unpickle, a failed argument)."""

    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    early: list | None = None

    def refs(self) -> bool:
        """Whether a top-level argument is a ref (its value is to be waited for)."""
        return any(isinstance(a, objects.ObjectRef) for a in (*self.args, *self.kwargs.values()))


def cancelled(task_id: str, return_ids: list[str]) -> list:
    data = objects.serialize(TaskCancelledError(task_id))
    return [[oid, KIND_ERROR, data] for oid in return_ids]


class InOrder:
    """A synchronous actor's calls: run one at a time on the serving thread, each
    caller's (its spec's owner) in the order sent. Ray resolves a call's arguments at
    its caller, which sends its calls in order once their arguments are there; so here
    a call whose ref arguments are not ready is held back, waiting for them on a thread
    of its own (`actor-args`), and the later calls of its caller with it, while other
    callers' calls run. A terminate call runs after every call held before it."""

    def __init__(self, server: Any):
        self.server = server
        self._held: dict[str, collections.deque[_Held]] = {}  # owner -> its calls held back
        self._waiters: ThreadPoolExecutor | None = None

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def run(self, calls: list[Call]) -> None:
        server = self.server
        for call in calls:
            if not server._first_time(call):
                server._done.append((call, None))  # acked, not run again
                continue
            method = call.spec.method
            if method == TERMINATE:  # as Ray: after the calls before it
                self.finish()
                server._run_one(call, None)  # raises Exit
            arguments = None if method == READY else server._decode_arguments(call)
            held = self._held.get(call.spec.owner)
            ready = arguments is None or not arguments.refs() or (
                held is None and server._resolve(call, arguments, 0))
            if held is None and ready:
                server._run_one(call, arguments)
            else:
                self._hold(call, arguments, ready)
            self._run_ready()
        self._run_ready()

    def _hold(self, call: Call, arguments: Arguments | None, ready: bool) -> None:
        waiting = None
        if not ready:
            if self._waiters is None:
                self._waiters = ThreadPoolExecutor(ARGUMENT_WAITERS, thread_name_prefix="actor-args")
            waiting = self._waiters.submit(self.server._resolve, call, arguments)
        self._held.setdefault(call.spec.owner, collections.deque()).append(
            _Held(call, arguments, waiting))

    def _run_ready(self) -> None:
        """Run the held calls whose arguments are there, each caller's in order."""
        for owner in list(self._held):
            held = self._held[owner]
            while held and (held[0].waiting is None or held[0].waiting.done()):
                first = held.popleft()
                if not held:
                    del self._held[owner]
                self.server._run_one(first.call, first.arguments)

    def finish(self) -> None:
        """Run every held call, waiting for their arguments."""
        while self._held:
            self._run_ready()
            waiting = [q[0].waiting for q in self._held.values() if q[0].waiting is not None]
            if waiting:
                concurrent.futures.wait(waiting, return_when=concurrent.futures.FIRST_COMPLETED)


@dataclass(frozen=True, slots=True)
class _Held:
    """A sync actor's call held back; `waiting` resolves its arguments (None: ready)."""

    call: Call
    arguments: Arguments | None
    waiting: concurrent.futures.Future | None


class ConcurrentRunner:
    """Starts calls in stream order and lets them overlap, each concurrency group on
    its own (as Ray's): a thread pool per group for a threaded actor, an event loop on
    a thread of its own per group for an async one, so that a group whose calls all
    block stalls no other. A call whose arguments include refs waits for their values
    on a thread of `_arguments` first, holding no place of its group meanwhile (Ray
    resolves them before the call is sent, and orders no async or threaded calls)."""

    def __init__(self, server: Any):
        self.server = server
        spec = server.spec
        limit = spec.max_concurrency
        self._limits: dict[Any, int] = {None: limit, **spec.concurrency_groups}  # group -> limit
        self._executors: dict[Any, ThreadPoolExecutor] = {}
        self._loops: dict[Any, asyncio.AbstractEventLoop] = {}
        for name, n in self._limits.items():
            label = "default" if name is None else name
            if spec.is_async:
                loop = self._loops[name] = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"taskmesh-actor-loop-{label}",
                                 daemon=True).start()
            else:
                self._executors[name] = ThreadPoolExecutor(n, thread_name_prefix=f"actor-{label}")
        self._arguments = ThreadPoolExecutor(ARGUMENT_WAITERS, thread_name_prefix="actor-args")
        self._semaphores: dict[Any, asyncio.Semaphore] = {}
        self._lock = threading.Lock()
        self._running: set[concurrent.futures.Future] = set()
        self.call_tasks: set[asyncio.Task | None] = set()  # the asyncio tasks running calls
        self._by_call: dict[str, asyncio.Task] = {}  # ... by the call's task id

    def start(self, call: Call) -> None:
        group = call.spec.concurrency_group
        if group is not None and group not in self._limits:
            group = None
        arguments = None
        if call.spec.method != READY:
            arguments = self.server._decode_arguments(call)
            if arguments.refs():
                self._track(self._arguments.submit(self._resolve_then_run, call, group, arguments))
                return
        self._run(call, group, arguments)

    def _resolve_then_run(self, call: Call, group: Any, arguments: Arguments) -> None:
        self.server._resolve(call, arguments)
        self._run(call, group, arguments)

    def _run(self, call: Call, group: Any, arguments: Arguments | None) -> None:
        if self._loops:
            coroutine = self._run_async(call, group, arguments)
            self._track(asyncio.run_coroutine_threadsafe(coroutine, self._loops[group]))
        else:
            self._track(self._executors[group].submit(self._run_sync, call, arguments))

    def _track(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._running.discard(future)

    def drain(self) -> None:
        """Wait for the calls started so far to finish (a call waiting for its
        arguments is started in its group before its wait ends)."""
        while True:
            with self._lock:
                running = list(self._running)
            if not running:
                return
            concurrent.futures.wait(running)

    def _run_sync(self, call: Call, arguments: Arguments | None) -> None:
        try:
            self.server._results.put((call, self.server._call(call, arguments)))
        except Exit:
            self.server._end_process()

    async def _run_async(self, call: Call, group: Any, arguments: Arguments | None) -> None:
        sem = self._semaphores.get(group)
        if sem is None:
            sem = self._semaphores[group] = asyncio.Semaphore(self._limits[group])
        async with sem:
            task = asyncio.current_task()
            self.call_tasks.add(task)
            if task is not None:
                self._by_call[call.entry.task] = task
            try:
                await self._run_call(call, arguments)
            finally:
                self.call_tasks.discard(task)
                self._by_call.pop(call.entry.task, None)

    def cancel(self, task_ids: Sequence[str]) -> None:
        """Cancel the asyncio tasks of these calls if they run (CancelledError in them)."""
        for task_id in task_ids:
            task = self._by_call.get(task_id)
            if task is not None:  # on its group's loop
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def _run_call(self, call: Call, arguments: Arguments | None) -> None:
        server = self.server
        try:
            method, args, kwargs, return_ids, name, early = server._prepared(call, arguments)
        except Exit:
            server._end_process()
        if early is not None:
            server._results.put((call, early))
            return
        retries = 0
        while True:
            try:
                try:
                    result = method(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                finally:
                    end_if_forked(server.worker.pid)
                objs = server._values(result, return_ids, name)
            except asyncio.CancelledError:  # taskmesh.cancel of this call
                objs = cancelled(call.entry.task, return_ids)
            except ActorExitRequest:
                try:
                    server._exit_after(call, return_ids, EXITED)
                except Exit:
                    server._end_process()
            except Exception as e:
                if server._runs_again(call, e, retries):
                    retries += 1
                    continue
                objs = server._error(e, return_ids, name)
            server._results.put((call, objs))
            return
