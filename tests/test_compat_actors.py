"""Actors as Ray documents them: the actor class stands for the user's class, method
retries, the ways an actor ends (`__ray_terminate__`, `exit_actor`, `kill`) and what its
callers see then, restarts, and the resources an actor holds. Each test is written from
Ray's documentation of the behaviour."""

from __future__ import annotations

import functools
import os

import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions

_wait_for = functools.partial(wait_until, timeout_s=20.0)


# ---- the actor class ----------------------------------------------------------------------

def _base() -> type:
    # Made in a function so that it is pickled by value: the workers cannot import
    # this test module.
    class Base:
        BASE_ATTR = "base"

        @staticmethod
        def base_static():
            return "base-static"

        @classmethod
        def base_class_method(cls):
            return cls.BASE_ATTR

    return Base


Base = _base()


@taskmesh.remote
class Counter(Base):  # type: ignore[valid-type,misc]
    CLASS_ATTR = 5
    instances = 0

    def __init__(self):
        type(self).instances += 1  # per process: each actor has its own copy

    @staticmethod
    def some_static():
        return 7

    @classmethod
    def from_class(cls):
        return cls.CLASS_ATTR * 2

    def inside(self):
        return (Counter.CLASS_ATTR, Counter.some_static(), Counter.from_class(),
                Counter.base_static(), self.some_static(), self.base_class_method())

    def count(self):
        return type(self).instances


def test_actor_class_attributes_and_static_methods_are_reachable(ray) -> None:
    # Ray's actor class derives from the user's class: class attributes, static and
    # class methods, inherited ones too, work through it.
    assert Counter.CLASS_ATTR == 5
    assert Counter.BASE_ATTR == "base"
    assert Counter.some_static() == 7
    assert Counter.from_class() == 10
    assert Counter.base_static() == "base-static"
    assert Counter.base_class_method() == "base"
    with pytest.raises(AttributeError):
        Counter.no_such_attribute  # noqa: B018
    names = dir(Counter)
    for name in ("inside", "count", "some_static", "from_class", "base_static", "CLASS_ATTR",
                 "remote", "options"):
        assert name in names
    c = Counter.remote()
    assert ray.get(c.inside.remote()) == (5, 7, 10, "base-static", 7, "base")


def test_class_variables_are_per_process(ray) -> None:
    # "Each actor instance is instantiated in its own process, so each actor will have
    # its own copy of the class variables."
    a, b = Counter.remote(), Counter.remote()
    assert ray.get([a.count.remote(), b.count.remote()]) == [1, 1]
    assert Counter.instances == 0  # the driver's copy is untouched


def test_subclassing_an_actor_class_raises() -> None:
    with pytest.raises(TypeError, match="Inheriting from actor classes is not currently supported."):
        class Derived(Counter):  # type: ignore[misc]
            pass
    with pytest.raises(taskmesh.actor.ActorClassInheritanceException):
        class Derived2(Base, Counter):  # type: ignore[misc]
            pass


# ---- method retries ----------------------------------------------------------------------

@taskmesh.remote
class Flaky:
    """Each method fails its first `failures` calls, then returns how many calls it took."""

    def __init__(self):
        self.calls = {}

    def _attempt(self, key, failures, error):
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= failures:
            raise error
        return self.calls[key]

    @taskmesh.method(max_task_retries=2, retry_exceptions=[ValueError])
    def listed(self, key, failures, error=None):
        return self._attempt(key, failures, error or ValueError("flaky"))

    @taskmesh.method(max_task_retries=3, retry_exceptions=True)
    async def any_error(self, key, failures):
        return self._attempt(key, failures, KeyError(key))

    def plain(self, key, failures):
        return self._attempt(key, failures, ValueError("flaky"))


def test_method_retries_an_exception_it_lists(ray) -> None:
    # "@ray.method(max_task_retries=..., retry_exceptions=...)": a call that raises a
    # listed exception runs again, up to max_task_retries times.
    f = Flaky.remote()
    assert ray.get(f.listed.remote("a", 2)) == 3  # failed twice, retried twice
    with pytest.raises(ValueError, match="flaky"):
        ray.get(f.listed.remote("b", 3))  # the retries are used up
    with pytest.raises(TypeError):  # not listed: not retried
        ray.get(f.listed.remote("c", 1, TypeError("other")))
    assert ray.get(f.any_error.remote("d", 3)) == 4  # retry_exceptions=True, async method
    with pytest.raises(ValueError):  # by default a method raising is not retried
        ray.get(f.plain.remote("e", 1))


def test_method_options_set_retries_per_call(ray) -> None:
    f = Flaky.remote()
    assert ray.get(f.plain.options(max_task_retries=1, retry_exceptions=True).remote("a", 1)) == 2
    with pytest.raises(ValueError):
        ray.get(f.plain.options(max_task_retries=1, retry_exceptions=[ValueError]).remote("b", 2))
    with pytest.raises(ValueError):  # the method's options can be turned off per call
        ray.get(f.listed.options(retry_exceptions=False).remote("c", 1))
    assert ray.get(f.listed.options(max_task_retries=-1).remote("d", 4)) == 5


def test_wrong_retry_options_raise_naming_the_option() -> None:
    with pytest.raises(ValueError, match="max_task_retries"):
        taskmesh.method(max_task_retries=-2)
    with pytest.raises(TypeError, match="max_task_retries"):
        taskmesh.method(max_task_retries="3")
    with pytest.raises(ValueError, match="retry_exceptions"):
        taskmesh.method(retry_exceptions=[ValueError, "not an exception"])
    with pytest.raises(TypeError, match="retry_exceptions"):
        taskmesh.method(retry_exceptions="yes")
    handle = taskmesh.actor.ActorHandle("0" * 24, "Flaky", Flaky._methods)
    with pytest.raises(ValueError, match="max_task_retries"):
        handle.plain.options(max_task_retries=-5)
    with pytest.raises(TypeError, match="retry_exceptions"):
        handle.plain.options(retry_exceptions=3)


# ---- how an actor ends --------------------------------------------------------------------

_EXITED = "Worker exit type: INTENDED_USER_EXIT Worker exit detail: Worker exits by a user request."


def _atexit_actor(ray):
    @ray.remote
    class WithAtexit:
        def __init__(self, marker):
            import atexit

            atexit.register(lambda: open(marker, "w").close())

        def ping(self):
            return "pong"

        def quit(self):
            taskmesh.actor.exit_actor()

    return WithAtexit


def test_ray_terminate_returns_a_ref_that_raises_once_the_actor_ended(ray, tmp_path) -> None:
    # "actor.__ray_terminate__.remote() ... queue a termination task. Any atexit handlers
    # installed in the actor will be run in this case."
    marker = tmp_path / "atexit-ran"
    a = _atexit_actor(ray).remote(str(marker))
    before = a.ping.remote()
    ref = a.__ray_terminate__.remote()
    assert isinstance(ref, taskmesh.ObjectRef)
    assert ray.get(before) == "pong"  # the calls queued before it run first
    with pytest.raises(exceptions.RayActorError, match=_EXITED):
        ray.get(ref, timeout=20)
    _wait_for(marker.exists, what="the actor's atexit handler")
    with pytest.raises(exceptions.RayActorError, match="exit_actor"):
        ray.get(a.ping.remote(), timeout=20)


def test_exit_actor_runs_atexit_handlers_and_reports_an_intended_exit(ray, tmp_path) -> None:
    marker = tmp_path / "atexit-ran"
    a = _atexit_actor(ray).remote(str(marker))
    assert ray.get(a.ping.remote()) == "pong"
    with pytest.raises(exceptions.RayActorError, match=_EXITED):
        ray.get(a.quit.remote(), timeout=20)
    _wait_for(marker.exists, what="the actor's atexit handler")
    with pytest.raises(exceptions.ActorDiedError, match=_EXITED):
        ray.get(a.ping.remote(), timeout=20)


def test_an_actor_collected_when_its_handles_are_gone_runs_atexit_handlers(ray, tmp_path) -> None:
    marker = tmp_path / "atexit-ran"
    a = _atexit_actor(ray).remote(str(marker))
    assert ray.get(a.ping.remote()) == "pong"
    del a
    _wait_for(marker.exists, what="the collected actor's atexit handler")


def test_exit_actor_from_a_background_asyncio_task(ray) -> None:
    # "For asyncio actors, there may be a short delay before the actor exits if the API
    # is called from a background task. Any queued methods will fail."
    @ray.remote
    class Background:
        async def start_exit(self):
            import asyncio

            async def later():
                await asyncio.sleep(0.2)
                taskmesh.actor.exit_actor()

            self.task = asyncio.get_running_loop().create_task(later())
            return "started"

        async def ping(self):
            return "pong"

    a = Background.remote()
    assert ray.get(a.start_exit.remote()) == "started"

    _wait_for(lambda: _dead_with(ray, a, _EXITED), what="the actor to exit")


def test_exit_actor_in_an_async_method_fails_the_calls_queued_behind_it(ray) -> None:
    @ray.remote
    class AsyncQuitter:
        async def quit(self):
            taskmesh.actor.exit_actor()

        async def ping(self):
            return "pong"

    a = AsyncQuitter.remote()
    assert ray.get(a.ping.remote()) == "pong"
    quit_ref = a.quit.remote()
    behind = [a.ping.remote() for _ in range(5)]
    with pytest.raises(exceptions.RayActorError, match=_EXITED):
        ray.get(quit_ref, timeout=20)
    for ref in behind:
        try:  # one already started may have finished; none is served after the exit
            assert ray.get(ref, timeout=20) == "pong"
        except exceptions.RayActorError as e:
            assert _EXITED in str(e)
    with pytest.raises(exceptions.RayActorError, match=_EXITED):
        ray.get(a.ping.remote(), timeout=20)


def test_exit_actor_outside_an_actor_raises_type_error(ray) -> None:
    with pytest.raises(TypeError, match="exit_actor API is called on a non-actor worker"):
        taskmesh.actor.exit_actor()

    @ray.remote
    def task():
        taskmesh.actor.exit_actor()

    with pytest.raises(TypeError, match="exit_actor API is called on a non-actor worker"):
        ray.get(task.remote(), timeout=20)


def test_killed_actor_reports_ray_kill(ray) -> None:
    @ray.remote
    class Victim:
        def ping(self):
            return "pong"

    v = Victim.remote()
    assert ray.get(v.ping.remote()) == "pong"
    ray.kill(v)
    _wait_for(lambda: _dead_with(ray, v, "The actor is dead because it was killed by `ray.kill`."),
              what="the actor to die")


def _dead_with(ray, actor, cause: str) -> bool:
    """Whether a call to `actor` fails with RayActorError, and then with `cause`."""
    try:
        ray.get(actor.ping.remote(), timeout=20)
    except exceptions.RayActorError as e:
        assert cause in str(e)
        return True
    return False


# ---- restarts and resources ---------------------------------------------------------------

def test_killed_actor_restarts_with_its_constructor_run_again(ray) -> None:
    # "If you would like Ray to automatically restart the actor, make sure to set a
    # nonzero max_restarts ... and pass no_restart=False to ray.kill": the restarted
    # actor is made by its constructor again, so its methods find their state.
    @ray.remote(max_restarts=1)
    class Registry:
        def __init__(self, owner):
            self.owner = owner
            self.items = {}
            self.pid = os.getpid()

        def add(self, key, value):
            self.items[key] = value
            return (self.owner, sorted(self.items), self.pid)

    r = Registry.remote("me")
    owner, keys, pid = ray.get(r.add.remote("a", 1))
    assert (owner, keys) == ("me", ["a"])
    ray.kill(r, no_restart=False)

    def restarted():
        try:
            return ray.get(r.add.remote("b", 2), timeout=20)
        except exceptions.RayActorError:  # a call that reached the killed process
            return None

    owner, keys, new_pid = _wait_for(lambda: (out := restarted()) and out[2] != pid and out,
                                     what="the restarted actor")
    assert (owner, keys) == ("me", ["b"])  # made again by __init__, its old state gone


def test_actor_resources_are_used_while_it_lives(ray) -> None:
    # available_resources() counts what live actors hold; an actor's death frees it.
    total = ray.cluster_resources()
    _wait_for(lambda: ray.available_resources().get("CPU") == total["CPU"],
              what="the cluster to be idle")

    @ray.remote(num_cpus=1, memory=64 * 1024 * 1024)
    class Holder:
        def ping(self):
            return "pong"

    h = Holder.remote()
    assert ray.get(h.ping.remote()) == "pong"
    _wait_for(lambda: ray.available_resources().get("CPU") == total["CPU"] - 1,
              what="the actor's CPU to show as used")
    assert ray.available_resources()["memory"] == total["memory"] - 64 * 1024 * 1024
    ray.kill(h)
    _wait_for(lambda: ray.available_resources() == total, what="the actor's resources to come back")
