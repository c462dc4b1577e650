"""A first-in, first-out queue shared across the cluster (Ray's `ray.util.queue`).

The items live in one async actor holding an `asyncio.Queue`, so any number of
producers and consumers (the driver, tasks, other actors) share them through a
picklable `Queue` handle. A blocked `put`/`get` waits inside the actor, where it costs
an awaiting coroutine rather than a thread. Expected outcomes (full, empty, timed out)
come back from the actor as values and become `Full`/`Empty` on the caller's side.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from taskmesh import api
from taskmesh.actor import ActorClass, ActorHandle, kill

TIMEOUT_ERROR = "'timeout' must be a non-negative number"


class Empty(queue.Empty):
    """Raised by a get on an empty Queue: at once without blocking, else on timeout."""


class Full(queue.Full):
    """Raised by a put on a full Queue: at once without blocking, else on timeout."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one queue operation did: whether it succeeded, the item(s) it got, and the
    queue's size at that moment (for the caller's error message)."""

    ok: bool
    value: Any = None
    size: int = 0


class _QueueActor:
    """Holds the items; runs on one event loop, so each operation is atomic."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    def put_nowait(self, item: Any) -> _Outcome:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return _Outcome(False, size=self.queue.qsize())
        return _Outcome(True, size=self.queue.qsize())

    async def put(self, item: Any, timeout: float | None) -> _Outcome:
        """Put, waiting for a free slot up to timeout seconds (forever when None). A free
        slot is taken at once even with timeout=0."""
        outcome = self.put_nowait(item)
        if outcome.ok:
            return outcome
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return _Outcome(False, size=self.queue.qsize())
        return _Outcome(True, size=self.queue.qsize())

    def put_nowait_batch(self, items: list[Any]) -> _Outcome:
        """Put all the items or, when they do not all fit, none of them."""
        size = self.queue.qsize()
        if self.maxsize > 0 and size + len(items) > self.maxsize:
            return _Outcome(False, size=size)
        for item in items:
            self.queue.put_nowait(item)
        return _Outcome(True, size=self.queue.qsize())

    def get_nowait(self) -> _Outcome:
        try:
            item = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return _Outcome(False, size=0)
        return _Outcome(True, item, self.queue.qsize())

    async def get(self, timeout: float | None) -> _Outcome:
        """Get, waiting for an item up to timeout seconds (forever when None)."""
        outcome = self.get_nowait()
        if outcome.ok:
            return outcome
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return _Outcome(False, size=self.queue.qsize())
        return _Outcome(True, item, self.queue.qsize())

    def get_nowait_batch(self, num_items: int) -> _Outcome:
        """Get num_items items or, when there are fewer, none."""
        size = self.queue.qsize()
        if num_items > size:
            return _Outcome(False, size=size)
        return _Outcome(True, [self.queue.get_nowait() for _ in range(num_items)], size - num_items)


@cache
def _queue_actor_class() -> ActorClass:
    """The remote class, built once per process so its export is pickled once."""
    return ActorClass(_QueueActor, {})


def _wait_until_dead(actor: ActorHandle, timeout_s: float) -> None:
    """Wait, up to timeout_s, for the actor to be recorded dead (a kill lands asynchronously)."""
    store = api.get_runtime().store
    deadline = time.monotonic() + timeout_s
    while store.actor_info(actor._actor_id).get("state") != "DEAD":
        if time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def _check_maxsize(maxsize: Any) -> None:
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"'maxsize' must be an int (0 or less for an unbounded queue), "
                        f"got {type(maxsize).__name__}")


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{TIMEOUT_ERROR} or None, got {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError(TIMEOUT_ERROR)


class Queue:
    """A FIFO queue on the cluster, usable from the driver, tasks and actors alike.

    Args:
        maxsize: the most items the queue holds; 0 (or less) for no limit.
        actor_options: options for the actor that holds the items, as for
            `.options(...)`, e.g. {"num_cpus": 1}.

    Example:
        q = Queue(maxsize=10)
        q.put(1)
        assert q.get() == 1
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        _check_maxsize(maxsize)
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"'actor_options' must be a dict of actor options, "
                            f"got {type(actor_options).__name__}")
        self.maxsize = maxsize
        self.actor: ActorHandle | None = (
            _queue_actor_class().options(**(actor_options or {})).remote(maxsize))

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds now."""
        return api.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        """How many items the queue holds now (the name `queue.Queue` uses)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no items now."""
        return api.get(self._actor().empty.remote())

    def full(self) -> bool:
        """Whether a put would have to wait; never true for an unbounded queue."""
        return api.get(self._actor().full.remote())

    # ---- put ----------------------------------------------------------------------------

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; when the queue is full, wait for a free slot (up to timeout
        seconds if given) or, with block=False, raise Full at once. Producers racing on
        a full queue are not served in any promised order."""
        self._raise_if_full(api.get(self._put_ref(item, block, timeout)), block, timeout)

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """put() for asyncio code: awaits instead of blocking the event loop."""
        self._raise_if_full(await self._put_ref(item, block, timeout), block, timeout)

    def put_nowait(self, item: Any) -> None:
        """put(item, block=False)."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all the items in order with one call, or none of them (raising Full)
        when they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        batch = list(items)
        outcome = api.get(self._actor().put_nowait_batch.remote(batch))
        if not outcome.ok:
            raise Full(f"Cannot add {len(batch)} items to queue of size {outcome.size} "
                       f"and maxsize {self.maxsize}.")

    # ---- get ----------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; when the queue is empty, wait for one (up
        to timeout seconds if given) or, with block=False, raise Empty at once."""
        return self._item_or_raise(api.get(self._get_ref(block, timeout)), block, timeout)

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """get() for asyncio code: awaits instead of blocking the event loop."""
        return self._item_or_raise(await self._get_ref(block, timeout), block, timeout)

    def get_nowait(self) -> Any:
        """get(block=False)."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the num_items oldest items with one call, or raise Empty
        (taking none) when there are fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        outcome = api.get(self._actor().get_nowait_batch.remote(num_items))
        if not outcome.ok:
            raise Empty(f"Cannot get {num_items} items from queue of size {outcome.size}.")
        return outcome.value

    # ---- lifetime -----------------------------------------------------------------------

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Stop the queue's actor and release its resources; its items are dropped and
        any later use of this Queue raises RuntimeError.

        The actor holds nothing that needs a clean exit, so it is always stopped with
        taskmesh.kill; without force, shutdown also waits (up to grace_period_s) until
        the actor is gone, so calls from other holders of the queue fail from then on.
        """
        if isinstance(grace_period_s, bool) or not isinstance(grace_period_s, (int, float)) \
                or grace_period_s < 0:
            raise ValueError(f"'grace_period_s' must be a non-negative number, got {grace_period_s!r}")
        actor, self.actor = self.actor, None
        if actor is None:
            return
        kill(actor, no_restart=True)
        if not force:
            _wait_until_dead(actor, grace_period_s)

    # ---- internals ----------------------------------------------------------------------

    def _actor(self) -> ActorHandle:
        if self.actor is None:
            raise RuntimeError("This Queue has been shut down (Queue.shutdown() was called); "
                               "create a new Queue to keep passing items.")
        return self.actor

    def _put_ref(self, item: Any, block: bool, timeout: float | None) -> Any:
        if not block:
            return self._actor().put_nowait.remote(item)
        _check_timeout(timeout)
        return self._actor().put.remote(item, timeout)

    def _get_ref(self, block: bool, timeout: float | None) -> Any:
        if not block:
            return self._actor().get_nowait.remote()
        _check_timeout(timeout)
        return self._actor().get.remote(timeout)

    def _raise_if_full(self, outcome: _Outcome, block: bool, timeout: float | None) -> None:
        if not outcome.ok:
            waited = f" after waiting {timeout}s" if block else ""
            raise Full(f"The queue is full (maxsize {self.maxsize}){waited}.")

    def _item_or_raise(self, outcome: _Outcome, block: bool, timeout: float | None) -> Any:
        if not outcome.ok:
            waited = f" after waiting {timeout}s" if block else ""
            raise Empty(f"The queue is empty{waited}.")
        return outcome.value


__all__ = ["Empty", "Full", "Queue"]
