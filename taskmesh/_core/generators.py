"""Generator tasks and actor methods (Ray's `num_returns="streaming"` and "dynamic").

A generator call has one return object of its own, index 1 (Ray's "generator ref"),
stored when the generator ends: its value is the number of items, or the error that
ended the task (a crashed worker, a cancelled task). Items are the objects 2, 3, ... of
the same task id.

Streaming: the worker stores each item as soon as it is yielded, with the completion
script of ordinary returns, and the owner's `done` stream gets one notice per item
(`[task_id, objs, 1]`, the trailing 1 telling it apart from an end notice). Items
yielded while a previous batch is being sent go out together in one script call, so
a fast generator costs far less than one Redis command per item, and the first item
never waits for the generator to finish. A retried attempt yields the same indexes
again: the script skips items that still exist and the owner drops the others, so the
caller never sees an item twice. The owner holds each item (its `held` field) like an
ordinary return; an item handed out as an ObjectRef is released when that ref is
dropped, and items never handed out are released when the ObjectRefGenerator is.

With `_generator_backpressure_num_objects=N`, the generator pauses while N items it
yielded are not taken by the caller: the caller records how many it took (one SET per
flush, tm:{owner}:gen:{task_id}), the paused generator polls it.

Memory: a worker holds at most TASKMESH_GENERATOR_QUEUE_BYTES of items not yet stored
(plus the item just yielded); a generator that yields faster waits. Items that cannot be
stored (Redis over maxmemory) stop the generator: the call ends with
ObjectStoreFullError, which its caller gets after the items that were stored (the end
is stored even over maxmemory, see Store.complete_tasks). The caller keeps the items it
has not taken, at most TASKMESH_GENERATOR_UNCONSUMED_BYTES of them unless backpressure
is set: past that it cancels the call with an error saying why (streams.py).

Dynamic (deprecated in Ray, still accepted): the generator runs to the end and the
generator ref's value is a DynamicObjectRefGenerator holding the item refs.

An object id has 4 hex digits of return index, so one call yields at most
MAX_ITEMS items.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from taskmesh import objects
from taskmesh._base import config
from taskmesh._base.ids import task_of
from taskmesh._base.wire import DYNAMIC_MODE, STREAMING_MODE, encode_notice
from taskmesh.exceptions import ObjectStoreFullError, RaySystemError
from taskmesh.objects import KIND_ERROR, KIND_VALUE, ObjectRef
from taskmesh.store import Completion, Store, retry_transient

if TYPE_CHECKING:
    from taskmesh._core.runtime import Runtime

log = logging.getLogger("taskmesh.generator")

STREAMING = "streaming"
DYNAMIC = "dynamic"
# How a generator call returns its items, as its spec says (TaskSpec/CallSpec.generator).
WIRE_MODE = {STREAMING: STREAMING_MODE, DYNAMIC: DYNAMIC_MODE}
MAX_ITEMS = 0xFFFF - 1  # item indexes 2..0xFFFF


def item_id(task_id: str, n: int) -> str:
    """The object id of the n-th item (0-based) of a generator call."""
    return objects.object_id(task_id, n + 2)


def encode_item_notice(task_id: str, objs: list[list]) -> bytes:
    return encode_notice(task_id, objs, item=True)


# ---- the caller's side ----------------------------------------------------------------


def _settle(future: asyncio.Future[None]) -> None:
    """Wake whoever awaits `future`, once (in the loop's thread)."""
    if not future.done():
        future.set_result(None)


class ObjectRefGenerator:
    """The refs a generator task yields, as it yields them (Ray's ObjectRefGenerator).

    Iterate it (`for ref in gen`, or `async for` in asyncio code); each item is an
    ObjectRef. An exception raised by the generator is the value of the item where it
    happened (`get` raises it), after which iteration stops. If the task fails
    otherwise (its worker crashed past max_retries, it was cancelled), the last item is
    `completed()`, whose `get` raises that error.
    """

    def __init__(self, generator_ref: ObjectRef, runtime: Runtime):
        self._generator_ref = generator_ref
        self._task_id = generator_ref.task_id()
        self._runtime = runtime

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync()

    def send(self, value: Any) -> None:
        raise NotImplementedError("`gen.send` is not supported.")

    def throw(self, value: Any) -> None:
        raise NotImplementedError("`gen.throw` is not supported.")

    def close(self) -> None:
        raise NotImplementedError("`gen.close` is not supported.")

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        return await self._next_async()

    async def asend(self, value: Any) -> None:
        raise NotImplementedError("`gen.asend` is not supported.")

    async def athrow(self, value: Any) -> None:
        raise NotImplementedError("`gen.athrow` is not supported.")

    async def aclose(self) -> None:
        raise NotImplementedError("`gen.aclose` is not supported.")

    def completed(self) -> ObjectRef:
        """A ref that is ready when the generator task has finished; its `get` raises
        if the task failed (not for an exception the generator raised: that is an item)."""
        return self._generator_ref

    def next_ready(self) -> bool:
        """True when `next(gen)` would return a ref at once (False at the end)."""
        return self._runtime.stream_state(self._task_id) in ("item", "error")

    def is_finished(self) -> bool:
        """True when every item has been taken: `next(gen)` raises StopIteration."""
        return self._runtime.stream_state(self._task_id) == "stop"

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        state, oid = self._runtime.stream_next(self._task_id, timeout_s)
        return self._result(state, oid, StopIteration)

    async def _next_async(self) -> ObjectRef:
        while True:
            state, oid = self._runtime.stream_next(self._task_id, 0)
            if state != "timeout":
                return self._result(state, oid, StopAsyncIteration)
            loop = asyncio.get_running_loop()
            changed = loop.create_future()

            def wake(loop: asyncio.AbstractEventLoop = loop, changed: asyncio.Future[None] = changed) -> None:
                loop.call_soon_threadsafe(_settle, changed)

            self._runtime.stream_on_change(self._task_id, wake)
            await changed

    def _result(self, state: str, oid: str | None, stop: type[Exception]) -> ObjectRef:
        if state == "item":
            return ObjectRef(oid)  # type: ignore[arg-type]
        if state == "error":
            return self._generator_ref
        if state == "stop":
            raise stop
        raise TimeoutError("The next item of the generator is not ready yet.")

    def __getstate__(self) -> Any:
        raise TypeError("You cannot return or pass a generator to other task. "
                        "Serializing a ObjectRefGenerator is not allowed.")

    def __del__(self) -> None:
        try:
            self._runtime.stream_dropped(self._task_id)
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._generator_ref.hex()})"


class DynamicObjectRefGenerator:
    """The value of a `num_returns="dynamic"` call: the refs of every item it yielded."""

    def __init__(self, refs: Iterable[ObjectRef]):
        self._refs: collections.deque[ObjectRef] = collections.deque(refs)

    @classmethod
    def _from_ids(cls, ids: list[str]) -> DynamicObjectRefGenerator:
        return cls(ObjectRef(oid) for oid in ids)

    def __iter__(self) -> Iterator[ObjectRef]:
        while self._refs:
            yield self._refs.popleft()

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self) -> tuple:
        return (DynamicObjectRefGenerator, (list(self._refs),))


class _IdsOnly:
    """What a worker stores as a dynamic call's value: pickles exactly like a
    DynamicObjectRefGenerator of the given ids, without making refs in the worker."""

    def __init__(self, ids: list[str]):
        self.ids = ids

    def __reduce__(self) -> tuple:
        return (DynamicObjectRefGenerator._from_ids, (self.ids,))


# ---- the worker's side ----------------------------------------------------------------


class ItemSender:
    """Stores streamed items from a background thread: each batch is one
    `complete_tasks` (one script call per owner); items yielded while a batch is in
    flight form the next one. `flush` waits until everything sent so far is stored,
    so that a call's end notice never overtakes its items.

    Bounded: the items it holds (queued or being stored) count their bytes, and a
    generator whose item takes them past `limit_bytes` waits in `make_room` until
    stored items bring them under it, so a generator that yields faster than Redis takes
    its items is slowed down instead of growing the worker's memory. A batch that cannot
    be stored (Redis out of memory, or unreachable for an hour) fails every call with an
    item in it: their later items are dropped, and `failure(task_id)` is the error that
    ends the call (GeneratorRun). Items of a call are stored in order, so what its caller
    got is always its first items, never one with a gap before it."""

    def __init__(self, store: Store, limit_bytes: int | None = None):
        self._store = store
        self.limit_bytes = config.GENERATOR_QUEUE_BYTES.get() if limit_bytes is None else limit_bytes
        self._cond = threading.Condition()
        self._queue: list[tuple[Completion, int]] = []  # with its size in bytes
        self._busy = False
        self._thread: threading.Thread | None = None
        self.held_bytes = 0  # of the items queued or being stored
        self.high_water_bytes = 0  # the most it ever held (for tests)
        self._failed: dict[str, Exception] = {}  # task id -> why its items were not stored

    def send(self, completion: Completion) -> None:
        size = len(completion.notice) + sum(len(data) for _, _, data in completion.objects)
        with self._cond:
            if task_of(completion.objects[0][0]) in self._failed:
                return  # its earlier items were lost: the call ends with the error
            self._queue.append((completion, size))
            self.held_bytes += size
            self.high_water_bytes = max(self.high_water_bytes, self.held_bytes)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="taskmesh-items", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def over_limit(self) -> bool:
        return self.held_bytes > self.limit_bytes

    def make_room(self, task_id: str) -> None:
        """Backpressure: wait while the items held are over the limit (or until the
        call's items failed)."""
        with self._cond:
            while self.held_bytes > self.limit_bytes and task_id not in self._failed:
                self._cond.wait()

    def failure(self, task_id: str) -> Exception | None:
        return self._failed.get(task_id)

    def forget(self, task_id: str) -> Exception | None:
        """The call ends (or starts again): its failure, forgotten."""
        with self._cond:
            return self._failed.pop(task_id, None)

    def flush(self) -> None:
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                taken, self._queue = self._queue, []
                self._busy = True
            batch = [c for c, _ in taken]
            try:
                # Items exist only here until stored: keep trying through a Redis restart.
                retry_transient(functools.partial(self._store.complete_tasks, batch, {}), deadline_s=3600)
            except Exception as e:
                log.error("storing %d generator items failed, their calls end with the error: %r",
                          len(batch), e)
                self._fail({task_of(c.objects[0][0]) for c in batch}, e)
            finally:
                with self._cond:
                    self.held_bytes -= sum(size for _, size in taken)
                    self._busy = False
                    self._cond.notify_all()

    def _fail(self, task_ids: set[str], error: Exception) -> None:
        with self._cond:
            for task_id in task_ids:
                self._failed.setdefault(task_id, error)
            kept = [(c, size) for c, size in self._queue if task_of(c.objects[0][0]) not in task_ids]
            self.held_bytes -= sum(size for _, size in self._queue) - sum(size for _, size in kept)
            self._queue = kept


class GeneratorRun:
    """Runs one generator call in a worker: stores its items and returns the objects
    of its generator ref. `error_of(e)` serializes an exception the generator raised
    (called inside the `except` block, for the traceback); `retry(e)` says whether the
    task should rather be retried (retry_exceptions): then the exception propagates."""

    def __init__(self, runtime: Runtime, sender: ItemSender, *, mode: str, owner: str,
                 return_id: str, error_of: Callable[[Exception], bytes],
                 retry: Callable[[Exception], bool] = lambda e: False, backpressure: int = 0):
        self.runtime = runtime
        self.sender = sender
        self.mode = mode
        self.owner = owner
        self.return_id = return_id
        self.task_id = task_of(return_id)
        self.error_of = error_of
        self.retry = retry
        self.count = 0
        self._dynamic: list[list] = []
        # _generator_backpressure_num_objects: wait while this many items are not taken.
        self.backpressure = backpressure
        self._taken = 0  # items the caller is known to have taken
        sender.forget(self.task_id)  # an earlier attempt's, in this worker

    def run(self, result: Any) -> list[list]:
        try:
            for value in result:
                self.add(value)
                if not self.pause():
                    result.close()  # its items cannot be stored: stop it (finally blocks run)
                    break
        except Exception as e:
            if self.retry(e):
                raise
            self.add_error(self.error_of(e))
        return self.finish()

    async def run_async(self, result: Any) -> list[list]:
        try:
            async for value in result:
                self.add(value)
                if self.sender.over_limit() or self.must_wait():
                    going = await asyncio.get_running_loop().run_in_executor(None, self.pause)
                else:
                    going = self.sender.failure(self.task_id) is None
                if not going:
                    await result.aclose()
                    break
        except Exception as e:
            if self.retry(e):
                raise
            self.add_error(self.error_of(e))
        await asyncio.get_running_loop().run_in_executor(None, self.sender.flush)
        return self._end()

    def add(self, value: Any) -> None:
        if self.count >= MAX_ITEMS:
            raise ValueError(f"A generator call can yield at most {MAX_ITEMS} items.")
        obj = self.runtime.encode_value(item_id(self.task_id, self.count), value)
        self._store_item(obj)

    def pause(self) -> bool:
        """After an item: wait while the worker holds too many items' bytes, or the
        caller has not taken enough (backpressure). False: the call's items could not
        be stored, the generator must stop."""
        self.sender.make_room(self.task_id)
        if self.must_wait():
            self.wait_for_caller()
        return self.sender.failure(self.task_id) is None

    def must_wait(self) -> bool:
        return self.backpressure > 0 and self.count - self._taken >= self.backpressure

    def wait_for_caller(self) -> None:
        """Backpressure: wait until the caller has taken enough items (it records how
        many in Redis; polled with backoff, and read afresh by a retried attempt)."""
        store = self.runtime.store
        delay = 0.001
        while True:
            self._taken = retry_transient(lambda: store.generator_consumed(self.task_id), deadline_s=3600)
            if not self.must_wait() or self.sender.failure(self.task_id) is not None:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def add_error(self, data: bytes) -> None:
        self._store_item([item_id(self.task_id, self.count), KIND_ERROR, data])

    def _store_item(self, obj: list) -> None:
        self.count += 1
        holds_refs = self.runtime.holds_refs(obj[0])
        if self.mode == WIRE_MODE[DYNAMIC]:
            self._dynamic.append(obj)
            return
        if holds_refs:
            self.runtime.sync_refs()  # the refs the item holds are recorded before it is seen
        self.sender.send(Completion(self.owner, encode_item_notice(self.task_id, [obj]), (tuple(obj),)))

    def finish(self) -> list[list]:
        self.sender.flush()
        return self._end()

    def _end(self) -> list[list]:
        failure = self.sender.forget(self.task_id)
        if failure is not None:
            return [[self.return_id, KIND_ERROR, self._not_stored(failure)]]
        if self.mode == WIRE_MODE[DYNAMIC]:
            ids = [obj[0] for obj in self._dynamic]
            head = self.runtime.encode_value(self.return_id, _IdsOnly(ids))
            self.runtime.contains_refs(self.return_id, ids)
            return [head, *self._dynamic]
        return [[self.return_id, KIND_VALUE, objects.serialize(self.count)]]


    def _not_stored(self, cause: Exception) -> bytes:
        """The call's error when its items could not be stored: ObjectStoreFullError
        when Redis was full (Ray's error for an object that does not fit), else
        RaySystemError; either names the cause."""
        message = (f"Generator task {self.task_id} was stopped after yielding {self.count} items: "
                   f"its items could not be stored. {cause}")
        full = isinstance(cause, ObjectStoreFullError)
        return self.error_of(ObjectStoreFullError(message) if full else RaySystemError(message))


def is_generator_function(fn: Any) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
