"""Actors' concurrency and call order as Ray documents them: concurrency groups are
isolated from each other ("Limiting Concurrency Per-Method with Concurrency Groups"), an
async actor runs a later call while an earlier one awaits ("AsyncIO for Actors"), and a
call whose argument is not ready holds back no call of an async or threaded actor, while a
synchronous actor runs one caller's calls in the order they were sent ("Actor Task
Execution Order"). Each test is written from Ray's documentation of the behaviour.

A call that blocks here waits for a file to appear (the test creates it): no timing."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from pathlib import Path

import taskmesh
from conftest import wait_until

_wait_for = functools.partial(wait_until, timeout_s=20.0)


def _waiter():
    # Made in a function so that it is pickled by value: the workers cannot import
    # this test module.
    def wait_file(path: str, limit_s: float = 30.0) -> bool:
        """Block the calling thread until `path` exists (False after `limit_s`)."""
        deadline = time.monotonic() + limit_s
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    return wait_file


_wait_file = _waiter()


def _ready(ray, ref) -> bool:
    return bool(ray.wait([ref], timeout=0)[0])


# ---- concurrency groups -----------------------------------------------------------------

def _grouped(is_async: bool):
    """An actor with two groups of one call each; `block` (group "io") holds its group's
    thread until the file appears, the other methods return at once."""

    @taskmesh.remote(concurrency_groups={"io": 1, "compute": 1})
    class AsyncGrouped:
        @taskmesh.method(concurrency_group="io")
        async def block(self, path):
            # A blocking wait inside an async method: it holds its group's event loop.
            return _wait_file(path)

        async def where(self):
            return threading.current_thread().name

        @taskmesh.method(concurrency_group="compute")
        async def compute(self, x):
            return x * 2

    @taskmesh.remote(concurrency_groups={"io": 1, "compute": 1})
    class ThreadedGrouped:
        @taskmesh.method(concurrency_group="io")
        def block(self, path):
            return _wait_file(path)

        def where(self):
            return threading.current_thread().name

        @taskmesh.method(concurrency_group="compute")
        def compute(self, x):
            return x * 2

    return AsyncGrouped if is_async else ThreadedGrouped


def _check_groups_isolated(ray, tmp_path: Path, is_async: bool) -> None:
    a = _grouped(is_async).remote()
    release = tmp_path / "release"
    blocked = [a.block.remote(str(release))]  # fills "io"
    # Sent to "io" for this call only: it queues behind the blocked one.
    blocked.append(a.compute.options(concurrency_group="io").remote(5))
    # The default group and "compute" (by the method's decorator, and by .options on a
    # default-group method) serve on meanwhile.
    assert ray.get(a.compute.remote(4), timeout=20) == 8
    assert ray.get(a.where.options(concurrency_group="compute").remote(), timeout=20)
    default_thread = ray.get(a.where.remote(), timeout=20)
    assert not any(_ready(ray, ref) for ref in blocked)
    release.touch()
    assert ray.get(blocked, timeout=20) == [True, 10]
    # Each group runs on threads of its own.
    assert ray.get(a.where.options(concurrency_group="compute").remote()) != default_thread


def test_async_concurrency_groups_are_isolated(ray, tmp_path) -> None:
    """Ray: each concurrency group of an async actor has its own event loop (on its own
    thread): a group whose calls are all blocked stalls neither another group nor the
    default one."""
    _check_groups_isolated(ray, tmp_path, is_async=True)


def test_threaded_concurrency_groups_are_isolated(ray, tmp_path) -> None:
    """Ray: each concurrency group of a threaded actor has its own thread pool."""
    _check_groups_isolated(ray, tmp_path, is_async=False)


# ---- an async actor runs calls out of order ---------------------------------------------

def test_async_actor_runs_a_later_call_while_an_earlier_awaits(ray) -> None:
    """Ray: an async actor runs a call while another is suspended in `await`; the first
    call here awaits what only the second one does."""

    @ray.remote
    class Rendezvous:
        def __init__(self):
            self.event = asyncio.Event()

        async def wait(self):
            await self.event.wait()
            return "woken"

        async def wake(self):
            self.event.set()
            return "set"

    a = Rendezvous.remote()
    first = a.wait.remote()
    assert ray.get(a.wake.remote(), timeout=20) == "set"
    assert ray.get(first, timeout=20) == "woken"


def test_async_actor_with_max_concurrency_two(ray) -> None:
    """Within max_concurrency: two calls awaiting each other both finish."""

    @ray.remote(max_concurrency=2)
    class Pair:
        def __init__(self):
            self.arrived = 0

        async def meet(self):
            self.arrived += 1
            while self.arrived < 2:
                await asyncio.sleep(0.01)
            return self.arrived

    a = Pair.remote()
    assert ray.get([a.meet.remote(), a.meet.remote()], timeout=20) == [2, 2]


# ---- arguments not ready ----------------------------------------------------------------

def _gate():
    @taskmesh.remote
    def gated(path: str, value: int) -> int:
        _wait_file(path)
        return value

    return gated


_gated = _gate()


def _order_actor(kind: str):
    if kind == "async":
        @taskmesh.remote
        class AsyncLog:
            def __init__(self):
                self.seen = []

            async def add(self, x):
                self.seen.append(x)
                return x

            async def log(self):
                return list(self.seen)

        return AsyncLog

    @taskmesh.remote(max_concurrency=2 if kind == "threaded" else 1)
    class Log:
        def __init__(self):
            self.seen = []

        def add(self, x):
            self.seen.append(x)
            return x

        def log(self):
            return list(self.seen)

    return Log


def _check_unready_argument_skipped(ray, tmp_path: Path, kind: str) -> None:
    a = _order_actor(kind).remote()
    release = tmp_path / "release"
    # More calls waiting for an argument than the actor has threads.
    waiting = [a.add.remote(_gated.remote(str(release), i)) for i in (1, 2, 3)]
    assert ray.get(a.add.remote(10), timeout=20) == 10
    assert ray.get(a.log.remote(), timeout=20) == [10]
    release.touch()
    assert ray.get(waiting, timeout=20) == [1, 2, 3]
    assert sorted(ray.get(a.log.remote())) == [1, 2, 3, 10]


def test_async_actor_call_with_unready_argument_holds_back_no_other(ray, tmp_path) -> None:
    """Ray: an async actor's calls have no order; one whose argument is not ready yet
    does not keep the calls behind it, whose arguments are ready, from running."""
    _check_unready_argument_skipped(ray, tmp_path, "async")


def test_threaded_actor_call_with_unready_argument_holds_back_no_other(ray, tmp_path) -> None:
    """Ray: the same for a threaded actor: a call waiting for its argument takes none
    of the actor's threads."""
    _check_unready_argument_skipped(ray, tmp_path, "threaded")


def test_sync_actor_runs_one_callers_calls_in_order(ray, tmp_path) -> None:
    """Ray: a synchronous, single-threaded actor runs the calls of one caller in the
    order they were sent, even when an earlier one waits for its argument."""
    a = _order_actor("sync").remote()
    release = tmp_path / "release"
    first = a.add.remote(_gated.remote(str(release), 1))
    rest = [a.add.remote(x) for x in (2, 3)]
    log = a.log.remote()
    release.touch()
    assert ray.get([first, *rest, log], timeout=20) == [1, 2, 3, [1, 2, 3]]


def _caller():
    @taskmesh.remote(num_cpus=0)
    def call_from_task(actor, values: list[int]) -> list[int]:
        """A second caller: its calls' arguments are ready when sent."""
        return taskmesh.get([actor.add.remote(x) for x in values])

    return call_from_task


_call_from_task = _caller()


def test_sync_actor_call_with_unready_argument_holds_back_no_other_caller(ray, tmp_path) -> None:
    """Ray resolves a call's arguments at its caller before sending it: a synchronous
    actor's call whose argument is not ready holds back the later calls of its own
    caller, but not those of another caller, whose arguments are ready."""
    a = _order_actor("sync").remote()
    assert ray.get(a.log.remote(), timeout=20) == []
    release = tmp_path / "release"
    first = a.add.remote(_gated.remote(str(release), 1))  # this caller: the driver
    second = a.add.remote(2)  # no argument to wait for, but sent after `first`
    # Another caller's calls run while the driver's first call waits.
    assert ray.get(_call_from_task.remote(a, [10, 11]), timeout=20) == [10, 11]
    assert ray.wait([first, second], num_returns=2, timeout=0)[0] == []
    release.touch()
    assert ray.get([first, second], timeout=20) == [1, 2]
    assert ray.get(a.log.remote(), timeout=20) == [10, 11, 1, 2]
