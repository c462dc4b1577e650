"""Ray's documented cancellation and error behaviours: `cancel` of tasks (KeyboardInterrupt,
`is_canceled()`, force and children), of tasks blocked on actor calls and of actor tasks
("Cancel Actor Tasks"), the innermost cause of nested failures, and OwnerDiedError for a
put object whose owner died."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from test_cancel import Marks  # where tasks record what happened to them


def _marked(ray, marks, mark) -> bool:
    return mark in ray.get(marks.all.remote())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_cancelled_task_can_catch_keyboard_interrupt_and_sees_is_canceled(ray) -> None:
    marks = Marks.remote()

    @ray.remote
    def sleeper(marks):
        ctx = taskmesh.get_runtime_context()
        marks.add.remote(f"started canceled={ctx.is_canceled()}")
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            taskmesh.get(marks.add.remote(f"caught canceled={ctx.is_canceled()}"))
            raise

    ref = sleeper.remote(marks)
    wait_until(lambda: _marked(ray, marks, "started canceled=False"))
    ray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: _marked(ray, marks, "caught canceled=True"))
    with pytest.raises(RuntimeError, match="only available when the process is a worker"):
        ray.get_runtime_context().is_canceled()


def test_force_cancel_cancels_the_children_and_kills_the_worker(ray) -> None:
    marks = Marks.remote()

    @ray.remote
    def child(marks):
        marks.add.remote(("child", os.getpid()))
        time.sleep(60)

    @ray.remote
    def parent(marks):
        marks.add.remote(("parent", os.getpid()))
        return taskmesh.get(child.remote(marks))

    ref = parent.remote(marks)
    pids = wait_until(lambda: dict(m for m in ray.get(marks.all.remote()) if isinstance(m, tuple))
                      if len(ray.get(marks.all.remote())) == 2 else None)
    ray.cancel(ref, force=True)  # recursive=True by default
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: _gone(pids["parent"]), what="the forced task's worker to die")
    wait_until(lambda: _gone(pids["child"]), what="the child's worker to die")


def test_cancelling_a_task_blocked_on_an_actor_call(ray) -> None:
    @ray.remote(num_cpus=0)
    class Slow:
        def wait_for_cancel(self):
            deadline = time.monotonic() + 30
            while not taskmesh.get_runtime_context().is_canceled() and time.monotonic() < deadline:
                time.sleep(0.02)
            return "ended"

        def ping(self):
            return "pong"

    slow = Slow.remote()

    @ray.remote
    def caller(actor):
        return taskmesh.get(actor.wait_for_cancel.remote())

    ref = caller.remote(slow)
    time.sleep(0.5)  # let it block in get
    ray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    # the actor call it waited for was cancelled with it (recursive): the actor is free
    assert ray.get(slow.ping.remote(), timeout=30) == "pong"
    ray.kill(slow)


def test_the_innermost_cause_survives_nested_gets(ray) -> None:
    class InnerError(Exception):
        pass

    @ray.remote
    def fails():
        raise InnerError("deep")

    @ray.remote
    def middle():
        return taskmesh.get(fails.remote())

    @ray.remote
    def outer():
        return taskmesh.get(middle.remote())

    with pytest.raises(InnerError) as info:
        ray.get(outer.remote(), timeout=30)
    assert isinstance(info.value, exceptions.RayTaskError)
    assert "deep" in str(info.value)

    @ray.remote
    def sleeps():
        time.sleep(60)

    @ray.remote
    def waits(refs):
        return taskmesh.get(refs[0])

    @ray.remote
    def top(refs):
        return taskmesh.get(waits.remote(refs))

    inner = sleeps.remote()
    ref = top.remote([inner])
    time.sleep(0.3)
    ray.cancel(inner)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)


def test_a_queued_actor_call_is_cancelled_and_never_runs(ray) -> None:
    @ray.remote(num_cpus=0)
    class Sync:
        def __init__(self):
            self.ran = []

        def hold(self, seconds):
            time.sleep(seconds)
            self.ran.append("hold")

        def mark(self, tag):
            self.ran.append(tag)
            return tag

        def ran_calls(self):
            return self.ran

    actor = Sync.remote()
    held = actor.hold.remote(1.0)
    queued = actor.mark.remote("queued")
    ray.cancel(queued)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(queued, timeout=30)
    ray.get(held, timeout=30)
    assert ray.get(actor.ran_calls.remote(), timeout=30) == ["hold"]
    ray.kill(actor)


def test_a_running_call_of_an_async_actor_gets_cancelled_error(ray) -> None:
    @ray.remote(num_cpus=0)
    class Async:
        def __init__(self):
            self.seen = []

        async def long(self):
            self.seen.append("started")
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.seen.append("cancelled")
                raise

        async def seen_calls(self):
            return self.seen

        async def is_canceled(self):
            try:
                return taskmesh.get_runtime_context().is_canceled()
            except RuntimeError as e:
                return str(e)

    actor = Async.remote()
    ref = actor.long.remote()
    wait_until(lambda: "started" in ray.get(actor.seen_calls.remote()))
    ray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: "cancelled" in ray.get(actor.seen_calls.remote()))
    assert ray.get(actor.is_canceled.remote()) == "This method is not supported in an async actor."
    ray.kill(actor)


def test_a_running_call_of_a_sync_actor_is_not_interrupted(ray) -> None:
    marks = Marks.remote()

    @ray.remote(num_cpus=0)
    class Sync:
        def long(self, marks):
            ctx = taskmesh.get_runtime_context()
            marks.add.remote("started")
            try:
                deadline = time.monotonic() + 30
                while not ctx.is_canceled() and time.monotonic() < deadline:
                    time.sleep(0.02)
                marks.add.remote(f"flag={ctx.is_canceled()}")
            except KeyboardInterrupt:
                marks.add.remote("interrupted")
            return "finished"

    actor = Sync.remote()
    ref = actor.long.remote(marks)
    wait_until(lambda: _marked(ray, marks, "started"))
    ray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: _marked(ray, marks, "flag=True"))
    assert "interrupted" not in ray.get(marks.all.remote())
    ray.kill(actor)


def test_force_is_refused_for_actor_tasks(ray) -> None:
    @ray.remote(num_cpus=0)
    class Sync:
        def hold(self, seconds):
            time.sleep(seconds)
            return "held"

    actor = Sync.remote()
    ray.get(actor.hold.remote(0), timeout=30)  # created: its calls are sent at once
    running = actor.hold.remote(0.5)
    time.sleep(0.1)
    with pytest.raises(ValueError, match=r"^force=True is not supported for actor tasks\.$"):
        ray.cancel(running, force=True)
    assert ray.get(running, timeout=30) == "held"  # the call goes on
    ray.kill(actor)


def _owner_died(ray, ref) -> exceptions.OwnerDiedError | None:
    """The error `get` raises once the ref's owner is known dead (None while the value
    still comes back: the death is learnt a moment after the process ends)."""
    try:
        ray.get(ref, timeout=30)
    except exceptions.OwnerDiedError as e:
        return e
    return None


def test_a_put_object_of_a_dead_task_worker_raises_owner_died(ray) -> None:
    @ray.remote
    def make():
        return [taskmesh.put("owned by this worker")], os.getpid()

    [ref], pid = ray.get(make.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    error = wait_until(lambda: _owner_died(ray, ref), what="OwnerDiedError")
    assert isinstance(error, exceptions.ObjectLostError)
    assert error.object_ref_hex == ref.hex()
    assert "The object's owner has exited" in str(error)


def test_a_put_object_of_a_dead_actor_raises_owner_died(ray) -> None:
    @ray.remote(num_cpus=0)
    class Owner:
        def make(self):
            return [taskmesh.put(list(range(10)))]

    owner = Owner.remote()
    [ref] = ray.get(owner.make.remote(), timeout=30)
    ray.kill(owner)
    wait_until(lambda: _owner_died(ray, ref), what="OwnerDiedError")

    @ray.remote
    def read(refs):
        return taskmesh.get(refs[0])

    with pytest.raises(exceptions.OwnerDiedError):  # a borrower in a task too
        ray.get(read.remote([ref]), timeout=30)
