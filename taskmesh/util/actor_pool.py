"""A fixed pool of actors that work is spread over (Ray's `ray.util.ActorPool`).

Each submission runs `fn(actor, value)` on an idle actor; the actor stays busy until the
ObjectRef that `fn` returned is taken back with `get_next` (in submission order) or
`get_next_unordered` (whichever finishes first). Submissions made while every actor is
busy wait in a backlog and start, in order, as actors come back (when a result is taken).
An actor found dead when its result is taken leaves the pool, as in Ray.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from taskmesh.api import get, wait
from taskmesh.exceptions import ActorDiedError
from taskmesh.objects import ObjectRef

V = TypeVar("V")

TIMEOUT_MESSAGE = "Timed out waiting for result"

SubmitFn = Callable[[Any, V], Any]


@dataclass(frozen=True, slots=True)
class _Job:
    """One submission in flight: its place in submission order, its actor, what fn returned."""

    index: int
    actor: Any
    future: ObjectRef | list[ObjectRef]


def _key_of(future: Any) -> ObjectRef:
    """The ref that stands for a submission. A method with several returns yields them
    all at once, so its first ref is ready exactly when the call is done."""
    if isinstance(future, ObjectRef):
        return future
    if isinstance(future, list) and future and all(isinstance(r, ObjectRef) for r in future):
        return future[0]
    raise TypeError("ActorPool's fn(actor, value) must return an ObjectRef (or a non-empty list "
                    f"of ObjectRefs), e.g. 'lambda a, v: a.method.remote(v)'; got {type(future)}.")


class ActorPool:
    """Spreads work over a fixed set of actors, one call per actor at a time, so that a
    map over many values keeps every actor busy without overloading any of them.

    Example:
        pool = ActorPool([Doubler.remote(), Doubler.remote()])
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))  # [2, 4, 6]
    """

    def __init__(self, actors: Iterable[Any]):
        self._idle: list[Any] = list(actors)
        self._in_flight: dict[ObjectRef, _Job] = {}
        self._by_index: dict[int, ObjectRef] = {}
        self._next_index = 0
        self._next_return = 0
        self._backlog: deque[tuple[SubmitFn, Any]] = deque()

    # ---- bulk -------------------------------------------------------------------------

    def map(self, fn: SubmitFn, values: Iterable[V], progress: bool = False) -> Iterator[Any]:
        """Results of fn over values, in the order of values. Every value is submitted at
        once, before this returns (those beyond the idle actors wait for one to come
        back); the returned generator yields the results. Results still pending from
        earlier submissions are dropped first: a ready one is taken (its error raised),
        a running one ignored. `progress`: a tqdm bar advances with each result."""
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
        return self._submit_all(fn, values, self.get_next, progress)

    def map_unordered(self, fn: SubmitFn, values: Iterable[V], progress: bool = False) -> Iterator[Any]:
        """Like map(), but yields each result as soon as it is ready, so one slow value
        does not hold back the others. Earlier submissions still pending are waited
        for first and their results dropped (an error among them is raised)."""
        while self.has_next():
            self.get_next_unordered()
        return self._submit_all(fn, values, self.get_next_unordered, progress)

    def _submit_all(self, fn: SubmitFn, values: Iterable[V], take: Callable[[], Any],
                    progress: bool) -> Iterator[Any]:
        for value in values:
            self.submit(fn, value)
        return self._results(take, progress)

    def _results(self, take: Callable[[], Any], progress: bool) -> Iterator[Any]:
        if not progress:
            while self.has_next():
                yield take()
            return
        from tqdm import tqdm

        with tqdm(total=len(self._in_flight) + len(self._backlog), desc="ActorPool") as bar:
            while self.has_next():
                result = take()
                bar.update(1)
                yield result

    # ---- one at a time ----------------------------------------------------------------

    def submit(self, fn: SubmitFn, value: Any) -> None:
        """Run fn(actor, value) on an idle actor, or queue it until one comes back."""
        if not self._idle:
            self._backlog.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        key = _key_of(future)
        self._in_flight[key] = _Job(self._next_index, actor, future)
        self._by_index[self._next_index] = key
        self._next_index += 1

    def has_next(self) -> bool:
        """Whether a submitted result is still to be taken with get_next*."""
        return bool(self._in_flight)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to timeout seconds for it.

        Raises TimeoutError when it is not ready in time; with ignore_if_timedout the
        late submission is dropped (its actor goes back to the pool) before raising. A
        task's error is raised here, after its actor is back in the pool.
        """
        self._require_pending()
        if self._next_return >= self._next_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        key = self._by_index[self._next_return]
        if timeout is not None:
            ready, _ = wait([key], num_returns=1, timeout=timeout)
            if not ready:
                self._time_out(key, ignore_if_timedout)
        return self._get_result(self._retire(key))

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Whichever pending result is ready first, waiting up to timeout seconds.

        Raises TimeoutError when none is ready in time; with ignore_if_timedout the oldest
        pending submission is dropped before raising.
        """
        self._require_pending()
        ready, _ = wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if not ready:
            self._time_out(next(iter(self._in_flight)), ignore_if_timedout)
        return self._get_result(self._retire(ready[0]))

    # ---- membership -------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._backlog

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool (None when none is free), e.g. to move it
        to another pool."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool; it takes the oldest waiting submission at once."""
        busy = [job.actor for job in self._in_flight.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # ---- internals --------------------------------------------------------------------

    def _require_pending(self) -> None:
        if not self.has_next():
            raise StopIteration("No more results to get")

    def _time_out(self, key: ObjectRef, ignore: bool) -> None:
        if not ignore:
            raise TimeoutError(TIMEOUT_MESSAGE)
        self._return_actor(self._retire(key).actor)
        raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {key} has been ignored.")

    def _retire(self, key: ObjectRef) -> _Job:
        """Forget a submission; its actor is still out (see _get_result)."""
        job = self._in_flight.pop(key)
        del self._by_index[job.index]
        self._next_return = max(self._next_return, job.index + 1)
        return job

    def _get_result(self, job: _Job) -> Any:
        """The submission's result; its actor goes back to the pool afterwards, unless
        the call found it dead (as Ray's pool: a dead actor leaves it)."""
        alive = True
        try:
            return get(job.future)
        except ActorDiedError:
            alive = False
            raise
        finally:
            if alive:
                self._return_actor(job.actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._backlog:
            self.submit(*self._backlog.popleft())
