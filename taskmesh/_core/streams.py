"""A process's generator calls (see generators.py): which items of each streaming call
arrived and were handed out, backpressure counts sent back to the generator, and the
items of dynamic calls. A mixin of `runtime.Runtime`, through the small StreamHost
protocol: the shared reference state (RefState, whose lock guards it all) and the store."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from taskmesh import objects
from taskmesh._base import config
from taskmesh._base.ids import index_of
from taskmesh.exceptions import ObjectStoreFullError, StoreUnavailableError
from taskmesh.objects import KIND_ERROR
from taskmesh.objects.capacity import machine_memory
from taskmesh.objects.plane import KIND_SHM, parse_descriptor
from taskmesh.store import Release

if TYPE_CHECKING:
    from taskmesh.store import Store

log = logging.getLogger("taskmesh.generator")

# A backpressure count that never makes a generator wait (its reader is gone).
_NEVER_WAIT = 1 << 62


@dataclass(slots=True)
class _Stream:
    """A generator call of this process: items are indexes 2.. (see generators.py)."""

    arrived: int = 1  # index of the last item whose notice arrived
    taken: int = 1  # index of the last item handed out as a ref
    raised: bool = False  # the generator ref's error was handed out as the last item
    dropped: bool = False  # the ObjectRefGenerator is gone
    backpressure: int = 0  # > 0: the generator waits while this many items are not taken
    held_bytes: int = 0  # bytes of the items arrived and not taken yet
    stopped: bool = False  # past the unconsumed-bytes bound: the call was stopped
    waiters: list[Callable[[], None]] = field(default_factory=list)


@dataclass(slots=True)
class RefState:
    """What the runtime's reference table shares with its generator streams: the lock
    that guards it all (`cond`), the flusher's wake-up, results by object id, the ids
    still pending, the hold changes to send, and the local ref counts (under
    `counts_lock`). The runtime keeps the same objects; nothing here is replaced, only
    changed in place."""

    cond: threading.Condition
    wake: threading.Event
    results: dict[str, tuple[bytes, bytes | None]]
    pending: set[str]
    free: list[Release]
    counts: dict[str, int]
    counts_lock: threading.Lock


def unconsumed_limit() -> int:
    """TASKMESH_GENERATOR_UNCONSUMED_BYTES; by default the smaller of 1 GiB and a
    tenth of the machine's memory (or of its cgroup's limit). 0: no bound."""
    limit = config.GENERATOR_UNCONSUMED_BYTES.get()
    if limit >= 0:
        return limit
    return min(1 << 30, machine_memory() // 10)


def _item_bytes(kind: bytes, data: bytes | None) -> int:
    """An item's size: its value's bytes, or those of its shared-memory copy."""
    if kind == KIND_SHM and data is not None:
        return parse_descriptor(data)[0]
    return len(data or b"")


class StreamHost(Protocol):
    """What StreamMethods needs of the class it is mixed into."""

    store: Store
    refs: RefState
    on_block: Callable[[], None] | None
    on_unblock: Callable[[], None] | None

    def cancel(self, object_id: str, *, force: bool, recursive: bool = True,
               error: Exception | None = None) -> None: ...


class StreamMethods:
    """Generator-call bookkeeping (mixed into Runtime; it uses only StreamHost's members
    and its own state, set up by `_init_streams`)."""

    store: Store
    refs: RefState
    on_block: Callable[[], None] | None
    on_unblock: Callable[[], None] | None
    cancel: Callable[..., None]

    def _init_streams(self) -> None:
        # Bytes of items a streaming call (without backpressure) may hold here untaken.
        self._unconsumed_limit = unconsumed_limit()
        # Generator calls: streams by task id, the ones whose generator was dropped,
        # and the items a dynamic call's generator ref holds here (by its object id).
        self._streams: dict[str, _Stream] = {}
        self._stream_drops: collections.deque[str] = collections.deque()
        self._dynamic_items: dict[str, list[str]] = {}
        # How many items of backpressured streams were taken (None: forget the stream),
        # sent by the flusher.
        self._consumed: dict[str, int | None] = {}

    def _drop_streams(self) -> list[Release]:
        """Release the items of dropped ObjectRefGenerators never handed out (those
        still to come are released as they arrive). Called under self.refs.cond."""
        ops = []
        while self._stream_drops:
            task_id = self._stream_drops.popleft()
            stream = self._streams.get(task_id)
            if stream is None or stream.dropped:
                continue
            stream.dropped = True
            for index in range(stream.taken + 1, stream.arrived + 1):
                oid = objects.object_id(task_id, index)
                self.refs.results.pop(oid, None)
                ops.append(Release(oid, "owner", -1))
            if objects.object_id(task_id, 1) not in self.refs.pending:
                self._forget_stream(task_id)
            elif stream.backpressure > 0:  # nobody takes items any more: let it run
                self._consumed[task_id] = _NEVER_WAIT
        return ops

    def _forget_stream(self, task_id: str) -> None:
        """A streaming call that ended and whose generator is gone. Under self.refs.cond."""
        stream = self._streams.pop(task_id)
        if stream.backpressure > 0:
            self._consumed[task_id] = None

    def _send_consumed(self) -> None:
        with self.refs.cond:
            consumed, self._consumed = self._consumed, {}
        if not consumed:
            return
        try:
            self.store.set_generators_consumed(consumed)
        except StoreUnavailableError:
            with self.refs.cond:  # sent again with the next flush (newer counts win)
                self._consumed = {**consumed, **self._consumed}
            raise

    def open_stream(self, task_id: str, backpressure: int = 0) -> None:
        """Track a streaming call's items; before it is submitted."""
        with self.refs.cond:
            self._streams[task_id] = _Stream(backpressure=backpressure)

    def stream_dropped(self, task_id: str) -> None:
        # From ObjectRefGenerator.__del__: never block here.
        self._stream_drops.append(task_id)
        self.refs.wake.set()

    def _stream_peek(self, task_id: str) -> tuple[str, str | None]:
        """What `next` would give now: ("item", id), ("error", generator ref id),
        ("stop", None) or ("timeout", None) when nothing is ready. Under self.refs.cond."""
        stream = self._streams.get(task_id)
        if stream is None:
            return "stop", None
        if stream.taken < stream.arrived:
            return "item", objects.object_id(task_id, stream.taken + 1)
        head = objects.object_id(task_id, 1)
        if head in self.refs.pending:
            return "timeout", None
        if stream.raised:
            return "stop", None
        end = self.refs.results.get(head)
        if end is not None and end[0] == KIND_ERROR:
            return "error", head
        return "stop", None

    def stream_state(self, task_id: str) -> str:
        with self.refs.cond:
            return self._stream_peek(task_id)[0]

    def stream_next(self, task_id: str, timeout: float | None) -> tuple[str, str | None]:
        """Take the next item of a streaming call, waiting up to `timeout` (None:
        forever) for it; returns as `_stream_peek`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = False
        try:
            with self.refs.cond:
                while True:
                    state, oid = self._stream_peek(task_id)
                    if state != "timeout":
                        stream = self._streams.get(task_id)
                        if state == "item":
                            stream.taken += 1  # type: ignore[union-attr]
                            kind, data = self.refs.results.get(oid, (b"", None))  # type: ignore[arg-type]
                            stream.held_bytes -= _item_bytes(kind, data)  # type: ignore[union-attr]
                            if stream.backpressure > 0:  # type: ignore[union-attr]
                                self._consumed[task_id] = stream.taken - 1  # type: ignore[union-attr]
                                self.refs.wake.set()
                        elif state == "error":
                            stream.raised = True  # type: ignore[union-attr]
                        return state, oid
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return state, None
                    if not blocked and self.on_block is not None:
                        blocked = True
                        self.refs.cond.release()
                        try:
                            self.on_block()
                        finally:
                            self.refs.cond.acquire()
                        continue
                    self.refs.cond.wait(remaining)
        finally:
            if blocked and self.on_unblock is not None:
                self.on_unblock()

    def stream_on_change(self, task_id: str, callback: Callable[[], None]) -> None:
        """Call `callback` (from the listener thread) once the stream's next item or
        end is known; at once when it is already."""
        with self.refs.cond:
            stream = self._streams.get(task_id)
            if stream is not None and self._stream_peek(task_id)[0] == "timeout":
                stream.waiters.append(callback)
                return
        callback()

    def _on_items(self, task_id: str, stream: _Stream | None, objs: list) -> None:
        """Items a streaming call yielded. One the owner already had (a retried attempt
        yields them again) or whose generator is gone is released at once. Under _cond."""
        for oid, kind, data in objs:
            index = index_of(oid)
            if stream is None or stream.dropped or stream.stopped or index <= stream.arrived:
                self.refs.free.append(Release(oid, "owner", -1))
                continue
            stream.arrived = index
            self.refs.results[oid] = (kind, data)
            stream.held_bytes += _item_bytes(kind, data)
            limit = self._unconsumed_limit
            if limit and stream.held_bytes > limit and not stream.backpressure:
                stream.stopped = True  # later items are released as they come
                threading.Thread(target=self._stop_stream, args=(task_id, limit),
                                 name="taskmesh-stop-generator", daemon=True).start()

    def stream_held(self, task_id: str) -> tuple[int, int]:
        """How many items of a streaming call, and how many bytes, are held here untaken."""
        with self.refs.cond:
            stream = self._streams.get(task_id)
            return (0, 0) if stream is None else (stream.arrived - stream.taken, stream.held_bytes)

    def _stop_stream(self, task_id: str, limit: int) -> None:
        """A streaming call's untaken items passed `limit` bytes: cancel it, its
        caller getting (after the items that arrived) an error saying why."""
        error = ObjectStoreFullError(
            f"The generator call {task_id} was stopped: the items its caller had not taken "
            f"exceeded {limit} bytes ({config.GENERATOR_UNCONSUMED_BYTES.name}; 0: no bound). "
            "Take its items as they come, or set _generator_backpressure_num_objects to make "
            "the generator wait for its caller instead.")
        try:
            self.cancel(objects.object_id(task_id, 1), force=False, error=error)
        except Exception:
            log.exception("stopping the generator call %s failed", task_id)

    def _hold_dynamic_item(self, head: str, wanted: bool, oid: str, kind: bytes, data: bytes | None) -> None:
        """An item of a dynamic call, stored with its generator ref `head`: the owner
        keeps holding it as long as `head` is referenced here. Under self.refs.cond."""
        if not wanted:  # nobody here holds `head` any more: nor its items
            self.refs.free.append(Release(oid, "owner", -1))
            return
        self.refs.results[oid] = (kind, data)
        self._dynamic_items.setdefault(head, []).append(oid)
        with self.refs.counts_lock:
            self.refs.counts[oid] = self.refs.counts.get(oid, 0) + 1
