"""Actor lifetimes as Ray documents them: a non-detached actor is terminated
automatically once every handle to it is out of scope in every process ("Actor process
termination", "Actor Lifetimes"), its atexit handlers and `__ray_shutdown__` running as
for `__ray_terminate__`; a detached actor is not; handles got by name (`get_actor`) do not
keep an actor alive (Ray's weak handles: "The actor will still be garbage-collected if no
handles to it exist"); the handles a killed process held are released."""

from __future__ import annotations

import functools
import gc
import os
import signal

import pytest

from conftest import wait_until
from taskmesh import exceptions
from taskmesh._core.context import get_runtime
from taskmesh._core.failure import OUT_OF_SCOPE

_wait_for = functools.partial(wait_until, timeout_s=20.0)


def _classes(ray):
    # Made in a function so that they are pickled by value: the workers cannot import
    # this test module.
    @ray.remote(num_cpus=0)
    class Tracked:
        def __init__(self, marker=None):
            if marker:
                import atexit

                atexit.register(lambda: open(marker, "w").close())

        def ping(self):
            return "pong"

    @ray.remote(num_cpus=0)
    class Holder:
        def keep(self, handle):
            self.handle = handle
            return "kept"

        def call(self):
            import taskmesh

            return taskmesh.get(self.handle.ping.remote())

        def drop(self):
            del self.handle
            return "dropped"

        def pid(self):
            return os.getpid()

    return Tracked, Holder


def _state(actor_id: str) -> tuple[str, str]:
    store = get_runtime().store
    info = store.actor_info(actor_id)
    return info.get("state", ""), info.get("death_cause", "")


def _dropped(*_handles) -> None:
    """The caller's handles are gone: collected, and the release sent now."""
    gc.collect()
    get_runtime().flush()


def _collected(actor_id: str) -> bool:
    state, cause = _state(actor_id)
    return state == "DEAD" and OUT_OF_SCOPE in cause


def test_a_handle_passed_to_a_task_and_then_to_an_actor_keeps_the_actor_until_dropped(
        ray, tmp_path) -> None:
    Tracked, Holder = _classes(ray)

    @ray.remote
    def pass_on(handle, holder):
        import taskmesh

        assert taskmesh.get(holder.keep.remote(handle)) == "kept"
        return taskmesh.get(handle.ping.remote())

    marker = tmp_path / "atexit-ran"
    tracked = Tracked.remote(str(marker))
    actor_id = tracked._actor_id
    holder = Holder.remote()
    assert ray.get(pass_on.remote(tracked, holder)) == "pong"
    del tracked
    _dropped()
    # The holder actor's copy keeps it alive: a call made after the release still runs.
    assert ray.get(holder.call.remote(), timeout=20) == "pong"
    assert _state(actor_id)[0] == "ALIVE" and not marker.exists()
    assert ray.get(holder.drop.remote()) == "dropped"
    _wait_for(lambda: _collected(actor_id), what="the actor collected once its last handle went")
    _wait_for(marker.exists, what="the collected actor's atexit handler")


def test_a_handle_inside_a_put_object_keeps_the_actor_while_the_object_lives(ray) -> None:
    Tracked, _ = _classes(ray)
    tracked = Tracked.remote()
    actor_id = tracked._actor_id
    boxed = ray.put([tracked])
    del tracked
    _dropped()
    (again,) = ray.get(boxed)
    assert ray.get(again.ping.remote(), timeout=20) == "pong"
    del again, boxed
    _dropped()
    _wait_for(lambda: _collected(actor_id), what="the actor collected with the object holding it")


def test_a_named_actor_is_collected_when_its_creators_handles_are_gone(ray) -> None:
    # As Ray: a handle got by name does not count; the created one and its copies do.
    Tracked, _ = _classes(ray)

    @ray.remote
    def ping(handle):
        import taskmesh

        return taskmesh.get(handle.ping.remote())

    named = Tracked.options(name="handles-named").remote()
    actor_id = named._actor_id
    by_name = ray.get_actor("handles-named")
    assert ray.get(ping.remote(named)) == "pong"
    assert ray.get(by_name.ping.remote()) == "pong"
    del named
    _dropped()
    _wait_for(lambda: _collected(actor_id), what="the named actor collected")
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(by_name.ping.remote(), timeout=20)
    with pytest.raises(ValueError):
        ray.get_actor("handles-named")


def test_a_detached_actor_is_kept_when_its_handles_are_gone(ray) -> None:
    Tracked, _ = _classes(ray)
    detached = Tracked.options(name="handles-detached", lifetime="detached").remote()
    actor_id = detached._actor_id
    assert ray.get(detached.ping.remote()) == "pong"
    del detached
    _dropped()
    again = ray.get_actor("handles-detached")
    assert ray.get(again.ping.remote(), timeout=20) == "pong"
    assert _state(actor_id)[0] == "ALIVE"
    ray.kill(again)


def test_the_handles_a_killed_process_held_are_released(ray) -> None:
    Tracked, Holder = _classes(ray)
    tracked = Tracked.remote()
    actor_id = tracked._actor_id
    holder = Holder.remote()
    assert ray.get(holder.keep.remote(tracked)) == "kept"
    del tracked
    _dropped()
    assert ray.get(holder.call.remote(), timeout=20) == "pong"
    os.kill(ray.get(holder.pid.remote()), signal.SIGKILL)  # its agent releases what it held
    _wait_for(lambda: _collected(actor_id), what="the actor collected once its holder died")
