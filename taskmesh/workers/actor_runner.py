"""The actor side of a worker: create the instance, then serve its call stream.

The worker reads `tm:actor:{id}:calls` itself (consumer group `actor`, consumer = actor
id, so a restarted incarnation finds the calls its predecessor had in flight) and stores
results with the same completion script as tasks, batched: the agent is not on the path
of a method call. Sync actors run calls one by one in stream order, but a call whose ref
arguments are not ready holds back only its own caller's later calls (InOrder); threaded actors
(max_concurrency > 1) and async actors (any `async def` method) start them in order and
let them overlap, limited per concurrency group; each group runs on threads of its own,
and a call whose ref arguments are not ready holds back no other (ConcurrentRunner).

Calls are decoded once, as read (a QueueEntry holding a CallSpec, _base/wire.py). A call
that does not decode, or whose arguments do not, goes to the dead-letter stream with the
reason (_core/failure.py; a caller named by a readable spec gets the error as its
results) and the actor serves on.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import inspect
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import GeneratorType
from typing import TYPE_CHECKING, Any, NoReturn

from taskmesh import objects, runtime_env
from taskmesh._base import wire
from taskmesh._base.wire import (
    READY,
    TERMINATE,
    ActorSpec,
    CallSpec,
    QueueEntry,
    TaskContext,
    WireError,
    encode_notice,
)
from taskmesh._core import events as _events
from taskmesh._core.context import current_call
from taskmesh._core.failure import (
    EXITED,
    OUT_OF_SCOPE,
    call_failures,
    dead_letter,
    death_error,
    set_aside_malformed,
    should_retry_call,
)
from taskmesh.exceptions import (
    ActorDiedError,
    ActorExitRequest,
    GetTimeoutError,
    RayTaskError,
    StoreUnavailableError,
)
from taskmesh.objects import KIND_ERROR
from taskmesh.store import CALL_GROUP, Completion, Leased, retry_transient
from taskmesh.workers.actor_calls import (
    Arguments,
    Call,
    ConcurrentRunner,
    Exit,
    InOrder,
    cancelled,
    return_ids_of,
)
from taskmesh.workers.execution import (
    ERROR_TEXT_CHARS,
    error_text,
    fixed_returns,
    owner_keeps,
    placement,
    serialize_error,
    set_omp_threads,
    split_returns,
    user_traceback,
)
from taskmesh.workers.process import end_if_forked

if TYPE_CHECKING:
    from taskmesh.workers.execution import WorkerHost

log = logging.getLogger("taskmesh.actor")

_FLUSH_EVERY_S = 0.005
# The agent of a draining node sends this to its actors' processes (SIGTERM keeps its
# meaning: end now).
DRAIN_SIGNAL = signal.SIGUSR1
_SEEN_CALLS = 10_000
_READ_COUNT = 100
# How long a sync actor's read of its stream blocks while calls wait for their arguments.
_HELD_READ_MS = 20


# On the results queue: a finished call and the objects it returned (None: nothing to
# store), or (None, event): set the event once the results queued before it are stored.
_Result = tuple[Call, list | None]
_FlushMark = tuple[None, threading.Event]


class ActorServer:
    def __init__(self, worker: WorkerHost, entry_id: bytes, entry: QueueEntry,
                 gpus: tuple[int, ...] | None):
        self.worker = worker
        self.store = worker.store
        self.entry_id = entry_id
        self.actor_id = entry.task
        self.spec: ActorSpec = entry.spec  # type: ignore[assignment]
        self._placement = placement(self.spec.pg, gpus)
        self._attempt = entry.attempt
        self._record = self.spec.events  # task events for creation and calls
        self._function_names: dict[str, str] = {}  # method -> the runtime context's function name
        self.class_name = self.spec.class_name
        self.instance: Any = None
        self._results: queue.Queue[_Result | _FlushMark] = queue.Queue()
        self._client = self.store.dedicated()
        self._exiting = threading.Event()
        # Its node is draining (DRAIN_SIGNAL from the agent): finish the calls read, exit.
        self._draining = threading.Event()
        self._exit_done = threading.Event()  # the exiting thread recorded the death
        self._exit_lock = threading.Lock()  # one thread exits the actor, one ends the process
        self._end_lock = threading.Lock()
        self._runner: ConcurrentRunner | None = None
        self._in_order = InOrder(self)  # a sync actor's calls
        self._serving = threading.current_thread()  # the thread that runs a sync actor's calls
        self._done: list[tuple[Call, list | None]] = []  # in-order results not stored yet
        self._last_flush = time.monotonic()
        self._on_block = worker.runtime.on_block
        worker.runtime.on_block = self._before_blocking
        worker.runtime.on_exit_actor = self._exit_requested
        worker.runtime.async_actor = self.spec.is_async
        self._flush_lock = threading.Lock()
        # Task ids of recent calls: a caller that re-sends a batch after a Redis error
        # may have delivered some calls twice; each runs once.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    # ---- creation -----------------------------------------------------------------------

    def run(self) -> None:
        """Create the actor and serve it until it exits (then the process ends); return
        only when creation did not happen, leaving the worker to run tasks again."""
        info = self.store.actor_info(self.actor_id)
        if info.get("state") in (None, "DEAD") or info.get("no_restart") == "1":
            self._killed_before_alive()  # killed before it was placed
            return
        runtime = self.worker.runtime
        runtime.job_id = self.spec.job_id
        runtime.detached = self.spec.detached  # what it submits outlives its job
        runtime.namespace = self.spec.namespace
        runtime.context = TaskContext(self.spec.job_id, None, self.class_name,
                                      dict(self.spec.held), self.actor_id, **self._placement,
                                      restarted=int(info.get("restarts") or 0) > 0,
                                      actor_name=info.get("name") or "")
        # The actor's runtime_env holds for its process's life (and its calls' children).
        runtime.runtime_env = self.spec.runtime_env
        start_us = self._event(self.actor_id, self._attempt, _events.RUNNING,
                               f"{self.class_name}.__init__", _events.ACTOR_CREATION_TASK)
        try:
            restore_env = runtime_env.apply(runtime.runtime_env, self.store)
            set_omp_threads(self.spec.held)  # as Ray: it follows the CPUs it holds, for its life
            error = self._create()
        except Exception as e:  # the runtime_env could not be set up
            restore_env = None
            failed = runtime_env.setup_error(runtime.runtime_env, e)
            error = RayTaskError(f"{self.class_name}.__init__", f"{type(failed).__name__}: {failed}", failed)
        self._event(self.actor_id, self._attempt, _events.FAILED if error else _events.FINISHED,
                    f"{self.class_name}.__init__", _events.ACTOR_CREATION_TASK, start=start_us,
                    tb=error.traceback_str[-ERROR_TEXT_CHARS:] if error else None)
        if error is not None:
            cause = f"The actor died because of an error raised in its creation task, {error}"
            self._die(cause)
            runtime.context = TaskContext()
            _restore(runtime, restore_env)
            self.worker.send(wire.ActorFailed(self.entry_id))
            return
        if not self.store.actor_alive(self.actor_id, self.worker.node_id, os.getpid()):
            runtime.context, self.instance = TaskContext(), None
            _restore(runtime, restore_env)
            self._killed_before_alive()  # killed while being created: never serves
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(DRAIN_SIGNAL, lambda *_: self._draining.set())
        self.worker.send(wire.ActorAlive(self.entry_id))
        try:
            self._serve()
        except Exit:
            pass
        self._end_process()

    def _create(self) -> RayTaskError | None:
        try:
            cls = self.worker.function(self.spec.fn_id)
            args, kwargs = objects.deserialize(self.spec.args)
            upstream = self.worker.resolve_args(args, kwargs)
            if upstream is not None:
                raise objects.deserialize(upstream)
            self.instance = cls(*args, **kwargs)
            return None
        except Exception as e:
            return RayTaskError(f"{self.class_name}.__init__", user_traceback(e), e)
        finally:
            self.worker.end_output()

    def _killed_before_alive(self) -> None:
        """The actor was killed (taskmesh.kill, or its job ended) before this incarnation
        came up: make sure it is dead, its queued calls failed, and give the worker back."""
        self._die("The actor was killed before it (re)started")
        self.worker.send(wire.ActorFailed(self.entry_id))

    def _die(self, cause: str) -> None:
        """Declare the actor dead for good and fail the calls still queued for it."""
        from taskmesh._core.failure import actor_down

        actor_down(self.store, self.actor_id, restart=False, cause=cause)

    # ---- serving ------------------------------------------------------------------------

    def _serve(self) -> None:
        self._serving = threading.current_thread()
        self._retry_in_flight()
        spec = self.spec
        concurrent = spec.is_async or spec.max_concurrency > 1 or bool(spec.concurrency_groups)
        if concurrent:
            runner = self._runner = ConcurrentRunner(self)
            threading.Thread(target=self._flush_loop, name="taskmesh-actor-flush", daemon=True).start()
        failures = 0
        while not self._exiting.is_set() and not self._draining.is_set():
            try:
                # After a lost connection, a read's reply may never have arrived while
                # Redis recorded the delivery: read our unacknowledged calls again (the
                # ones already run are recognised and only acked).
                # While calls wait for their arguments, read briefly: the ones whose
                # arguments came run between reads.
                block_ms = _HELD_READ_MS if self._in_order.holding else 1000
                calls = self._decoded(self.store.read_calls(
                    self._client, self.actor_id, _READ_COUNT, block_ms, pending=failures > 0))
                failures = 0
            except StoreUnavailableError:  # Redis restarting: wait for it, stay alive
                failures += 1
                time.sleep(min(0.05 * 2 ** failures, 2.0))
                continue
            except Exception:
                if self._exiting.is_set():  # its death deleted the stream (actor_down.lua)
                    break
                raise
            if concurrent:
                for call in calls:
                    if not self._first_time(call):
                        self._results.put((call, None))
                    elif call.spec.method == TERMINATE:  # as Ray: after the calls before it finish
                        runner.drain()
                        self._call(call)  # raises Exit
                    else:
                        runner.start(call)
            else:
                self._run_in_order(calls)
        if not concurrent and not self._exiting.is_set():  # drained: the held calls run
            self._in_order.finish()
            self._flush_done()
        if concurrent and not self._exiting.is_set():  # drained: the started calls finish
            runner.drain()
            flushed = threading.Event()
            self._results.put((None, flushed))
            flushed.wait(60)

    def _retry_in_flight(self) -> None:
        """Calls a previous incarnation read but never finished: run them again while
        max_task_retries allows, else fail them (Ray: RayActorError)."""
        pending = self._decoded(self.store.read_calls(self._client, self.actor_id, 10_000, None,
                                                      pending=True))
        if not pending:
            return
        failed = []
        for call in pending:
            retries = self.store.count_call_retry(self.actor_id, call.entry_id)
            limit = call.spec.max_task_retries  # the method's, else the actor's
            limit = self.spec.max_task_retries if limit is None else limit
            if limit != -1 and retries > limit:
                failed.append(call)
                error = ActorDiedError(self.actor_id, "The actor died unexpectedly before "
                                       f"finishing this task (max_task_retries={limit}).")
                self.store.ack_calls(self.actor_id, call_failures([call.entry], error),
                                     [call.entry_id])
        rest = [c for c in pending if c not in failed]
        if rest:
            self._run_in_order(rest)

    def _decoded(self, calls: list[Leased]) -> list[Call]:
        """The calls read, decoded; those that do not decode go to the dead-letter stream."""
        if not calls:
            return []
        return [Call(leased, entry) for leased, entry in
                set_aside_malformed(self.store, calls, actor_call=True)]

    def _first_time(self, call: Call) -> bool:
        task_id = call.entry.task
        if task_id in self._seen:
            return False
        self._seen[task_id] = None
        if len(self._seen) > _SEEN_CALLS:
            self._seen.popitem(last=False)
        return True

    def _run_in_order(self, calls: list[Call]) -> None:
        """Run a sync actor's calls (those held back for their arguments among them)."""
        try:
            self._in_order.run(calls)
        except Exit:
            self._flush_done()
            raise
        self._flush_done()

    def _run_one(self, call: Call, arguments: Arguments | None) -> None:
        """Run a call of a sync actor now; store what ran every _FLUSH_EVERY_S."""
        self._done.append((call, self._call(call, arguments)))
        if time.monotonic() - self._last_flush > _FLUSH_EVERY_S:
            self._flush_done()

    def _flush_done(self) -> None:
        done, self._done[:] = list(self._done), []
        self._last_flush = time.monotonic()
        self._flush(done)

    def _before_blocking(self) -> None:
        """A call waits in get (e.g. for an argument): store the results of the calls
        before it first, since it may be waiting for one of them (the serving thread's
        own: a thread waiting for a held call's arguments leaves them to it)."""
        if self._done and threading.current_thread() is self._serving:
            self._flush_done()
        if self._on_block is not None:
            self._on_block()

    def _flush_loop(self) -> None:
        while True:
            batch = [self._results.get()] + self._take_results()
            with self._flush_lock:
                self._flush(_results_only(batch))
            for item in batch:  # (None, Event): someone waits for this flush
                if item[0] is None:
                    item[1].set()

    def _take_results(self) -> list[_Result | _FlushMark]:
        batch: list[_Result | _FlushMark] = []
        while True:
            try:
                batch.append(self._results.get_nowait())
            except queue.Empty:
                return batch

    def _flush_results_now(self) -> None:
        """Store what finished calls returned (before the actor goes away)."""
        with self._flush_lock:
            self._flush(_results_only(self._take_results()))

    def _flush(self, done: list[tuple[Call, list | None]]) -> None:
        if not done:
            return
        completions = []
        for call, objs in done:
            self._record_end(call, objs)
            if objs:
                kept = owner_keeps(objs, self.worker.runtime.holds_refs) and not call.spec.generator
                notice = encode_notice(call.entry.task, objs, kept=kept)
                completions.append(Completion(call.spec.owner, notice, tuple(objs), kept))
        ids = [call.entry_id for call, _ in done]
        # What the calls kept of the refs they were lent is registered before their
        # callers learn they are done.
        if self.worker.runtime.holds_due():
            retry_transient(self.worker.runtime.sync_refs, deadline_s=3600)
        # Results exist only here until stored: keep trying through a Redis restart.
        retry_transient(lambda: self.store.ack_calls(self.actor_id, completions, ids), deadline_s=3600)

    def _event(self, task_id: str, attempt: int, state: str, name: str, kind: str,
               start: int | None = None, tb: str | None = None) -> int:
        """Record a task event of this actor (sent by the worker's output flush);
        returns its time (µs)."""
        now = _events.now_us()
        if self._record:
            ends = {"start": start, "end": now} if start is not None else {}
            self.worker.events.add(_events.event(
                task_id, attempt, state, name=name, job=self.spec.job_id, type=kind,
                actor_id=self.actor_id, node=self.worker.node_id, pid=self.worker.pid,
                error="TASK_EXECUTION_EXCEPTION" if state == _events.FAILED else None, tb=tb,
                **ends))
        return now

    def _record_end(self, call: Call, objs: list | None) -> None:
        """A call's end event, when it ran here (EventBuffer.ended: nothing for a
        duplicate delivery, which did not)."""
        if objs is None:
            return
        failed = any(kind == KIND_ERROR for _, kind, _ in objs)
        self.worker.events.ended(call.entry.task, call.entry.attempt, _events.now_us(),
                                 error_text(objs) if failed else None, failed=failed)

    def cancel(self, task_ids: Sequence[str]) -> None:
        """taskmesh.cancel of calls (read from the agent's socket): a queued one is
        skipped when its turn comes (_prepare), a running one of an async actor is
        cancelled as its asyncio task; a sync or threaded actor's running call goes on
        (actors have state), is_canceled() tells it."""
        if self._runner is not None:
            self._runner.cancel(task_ids)

    # ---- one call -----------------------------------------------------------------------

    def _call(self, call: Call, arguments: Arguments | None = None) -> list | None:
        """Run one call synchronously; returns its result objects."""
        method, args, kwargs, return_ids, name, early = self._prepared(call, arguments)
        if early is not None:
            return early
        retries = 0
        try:
            while True:
                try:
                    try:
                        result = method(*args, **kwargs)
                    finally:
                        end_if_forked(self.worker.pid)
                    if inspect.iscoroutine(result):
                        result = asyncio.run(result)
                    return self._values(result, return_ids, name)
                except Exception as e:
                    if not self._runs_again(call, e, retries):
                        return self._error(e, return_ids, name)
                    retries += 1
        except ActorExitRequest:
            self._exit_after(call, return_ids, EXITED)
        finally:
            self.worker.end_output()
        return None

    def _runs_again(self, call: Call, error: Exception, retries: int) -> bool:
        """A call raised `error`: whether it runs again (its retry_exceptions and
        max_task_retries: Ray runs such a call again on the same actor)."""
        if not should_retry_call(call.spec, self.spec.max_task_retries, error, retries):
            return False
        log.info("%s raised %r: running it again (retry %d)", call.entry.name, error, retries + 1)
        return True

    def _prepared(self, call: Call, arguments: Arguments | None = None) -> tuple:
        """`_prepare`, where anything it raises but Exit becomes the call's error: a
        call written by hand fails alone, the actor serves on."""
        try:
            return self._prepare(call, arguments)
        except Exit:
            raise
        except Exception as e:
            name, return_ids = call.entry.name, return_ids_of(call)
            return None, None, None, return_ids, name, self._error(e, return_ids, name)

    def _prepare(self, call: Call, arguments: Arguments | None) -> tuple:
        """The method and its arguments, decoded (and, unless `arguments` holds them
        already, resolved: this waits for them); or the call's result objects when it
        ends before its method runs."""
        spec, task_id, name = call.spec, call.entry.task, call.entry.name
        return_ids = return_ids_of(call)
        if self.worker.runtime.canceled(task_id):  # taskmesh.cancel while it was queued: never runs
            return None, None, None, return_ids, name, cancelled(task_id, return_ids)
        method_name = spec.method
        if self._record and method_name not in (TERMINATE, READY):  # internal calls: no events
            # its RUNNING event is made by the next events flush if it still runs
            self.worker.events.started(task_id, call.entry.attempt, name, self.spec.job_id,
                                       self.worker.node_id, self.worker.pid, _events.now_us(),
                                       actor_id=self.actor_id)
        if method_name == TERMINATE:  # the collection's call has no caller waiting for it
            self._exit_after(call, return_ids, EXITED if spec.num_returns else OUT_OF_SCOPE)
        if method_name == READY:
            return None, None, None, return_ids, name, self._values(True, return_ids, name)
        if arguments is None:
            arguments = self._decode_arguments(call)
            if arguments.early is None:
                self._resolve(call, arguments)
        if arguments.early is not None:
            return None, None, None, return_ids, name, arguments.early
        args, kwargs = arguments.args, arguments.kwargs
        try:
            method = getattr(self.instance, method_name)
        except AttributeError as e:
            return None, None, None, return_ids, name, self._error(e, return_ids, name)
        # This thread's or asyncio task's call, for the runtime context (get_task_id, ...).
        function_name = self._function_names.get(method_name)
        if function_name is None:
            function_name = self._function_names[method_name] = (
                f"{type(self.instance).__module__}.{self.class_name}.{method_name}")
        current_call.set((task_id, name, function_name))
        if spec.generator:
            method = self._generator_method(method, spec, return_ids[0], name)
        return method, args, kwargs, return_ids, name, None

    def _decode_arguments(self, call: Call) -> Arguments:
        """The call's arguments as sent (refs in them registered here); a call whose
        arguments do not unpickle is set aside and its caller, if any, gets the error."""
        try:
            args, kwargs = call.spec.decode_args(objects.deserialize)
        except WireError as e:
            dead_letter(self.store, [(call.leased, str(e))], group=CALL_GROUP)
            return Arguments(early=self._error(e, return_ids_of(call), call.entry.name))
        return Arguments(args, kwargs)

    def _resolve(self, call: Call, arguments: Arguments, timeout_s: float | None = None) -> bool:
        """Replace the top-level refs among `arguments` by their values, waiting for
        them up to `timeout_s`; a failed one (or a failure to get them) becomes the
        call's error. False: not all of them were there in time (nothing replaced)."""
        return_ids = return_ids_of(call)
        try:
            upstream = self.worker.resolve_args(arguments.args, arguments.kwargs, timeout_s)
        except GetTimeoutError:
            if timeout_s is None:
                raise
            return False
        except Exception as e:
            arguments.early = self._error(e, return_ids, call.entry.name)
            return True
        if upstream is not None:
            arguments.early = [[o, KIND_ERROR, upstream] for o in return_ids]
        return True

    def _generator_method(self, method: Any, spec: CallSpec, return_id: str, name: str) -> Any:
        """`method` with its items stored as it yields them; returns (or, for an async
        generator, its coroutine returns) the objects of its generator ref."""
        run = self.worker.generator_run(spec, name, return_id)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):
                return _generated(run.run_async(result))
            return _Generated(run.run(result))

        return call

    def _values(self, result: Any, return_ids: list[str], name: str) -> list:
        if isinstance(result, _Generated):
            return result.objs

        runtime = self.worker.runtime
        if isinstance(result, GeneratorType):  # with a fixed num_returns
            fixed = fixed_returns(result, return_ids, name, runtime.encode_value,
                                  lambda e: serialize_error(name, e))
            if fixed is not None:
                return fixed
        if len(return_ids) == 1:
            return [runtime.encode_value(return_ids[0], result)]
        values = split_returns(result, len(return_ids), name)
        return [runtime.encode_value(oid, v) for oid, v in zip(return_ids, values, strict=True)]

    def _error(self, error: Exception, return_ids: list[str], name: str) -> list:
        data = serialize_error(name, error)
        return [[oid, KIND_ERROR, data] for oid in return_ids]

    def _exit_after(self, call: Call, return_ids: list[str], cause: str) -> None:
        """Graceful exit: run __ray_shutdown__, record this call, declare the actor dead
        (failing the calls behind it), tell the agent not to restart it."""
        first = self._begin_exit()
        try:
            if first:
                self._shutdown_hook()
            self._flush_done()  # calls that ran before this one keep their results
            self._flush_results_now()
            error = death_error(self.actor_id, cause)
            self.store.ack_calls(self.actor_id, call_failures([call.entry], error), [call.entry_id])
            if first:
                self.worker.send(wire.ActorExiting())
                self._die(cause)
        finally:
            if first:
                self._exit_done.set()
        raise Exit()

    def _exit_requested(self) -> None:
        """exit_actor() was called. In a call, the exception it raises ends the call and
        the actor (_exit_after); in a background asyncio task nothing would see it, so
        the actor exits from here."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop: a call of a sync or threaded actor
            return
        runner = self._runner
        if task is None or runner is None or task in runner.call_tasks:
            return
        threading.Thread(target=self._exit_from_background, name="taskmesh-actor-exit",
                         daemon=True).start()

    def _exit_from_background(self) -> None:
        if not self._begin_exit():
            return
        try:
            self._shutdown_hook()
            self._flush_results_now()
            self.worker.send(wire.ActorExiting())
            self._die(EXITED)
        finally:
            self._exit_done.set()
        self._end_process()

    def _begin_exit(self) -> bool:
        """Whether this thread is the one that exits the actor (the first to ask)."""
        with self._exit_lock:
            first = not self._exiting.is_set()
            self._exiting.set()
        return first

    def _shutdown_hook(self) -> None:
        shutdown = getattr(self.instance, "__ray_shutdown__", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                log.exception("__ray_shutdown__ of %s failed", self.class_name)

    def _end_process(self) -> NoReturn:
        """End the actor's process. After an exit on purpose (exit_actor, terminate, the
        collection of the actor) the death is recorded first and the atexit handlers
        run, as in a Python process that exits (Ray's actors run them too)."""
        with self._end_lock:  # a second thread ending it waits here for os._exit
            if self._exiting.is_set():
                self._exit_done.wait(60)
                try:
                    atexit._run_exitfuncs()
                except BaseException:  # they report their own errors; the actor ends anyway
                    log.exception("the atexit handlers of %s failed", self.class_name)
            self.worker.end_output()
            self.worker.flush_logs(with_events=True)
            os._exit(0)


def _results_only(batch: list[_Result | _FlushMark]) -> list[_Result]:
    """The finished calls of a batch taken from the results queue, in order."""
    return [item for item in batch if item[0] is not None]


class _Generated:
    """What a generator call returned: the objects of its generator ref."""

    def __init__(self, objs: list[list]):
        self.objs = objs


async def _generated(run: Any) -> _Generated:
    return _Generated(await run)


def _restore(runtime: Any, restore_env: Any) -> None:
    """The actor was not created: its worker runs tasks again, without its runtime_env
    (each task sets OMP_NUM_THREADS for itself)."""
    runtime.runtime_env = None
    if restore_env is not None:
        restore_env()
