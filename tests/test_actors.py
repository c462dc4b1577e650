"""Actors end to end, written the way Ray's docs use the API: real Redis, real node
agents, each actor in its own worker process."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh._core.context import get_runtime

_wait_for = functools.partial(wait_until, timeout_s=20.0)


def _actor_info(handle) -> dict[str, str]:
    store = get_runtime().store
    raw = store.redis.hgetall(store.keys.actor(handle._actor_id))
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


def _pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---- isolated clusters (resources, kill -9) ----------------------------------------------
# These come first on purpose: `cluster_factory` flushes Redis and checks that no new
# child process is left over, so it must run before this module's shared cluster (the
# `ray` fixture) exists; pytest creates that module-scoped cluster at its first use.



@taskmesh.remote(max_restarts=1)
class Phoenix:
    """Counts its calls; restarted once after a kill (its count starts over)."""

    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

    def pid(self):
        return os.getpid()

def test_actor_holds_its_cpus_until_killed(cluster_factory) -> None:
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote(num_cpus=2)
            class Hog:
                def ping(self):
                    return "pong"

            @taskmesh.remote(num_cpus=1)
            def task():
                return "ran"

            hog = Hog.remote()
            assert taskmesh.get(hog.ping.remote()) == "pong"
            _wait_for(lambda: taskmesh.available_resources().get("CPU", 0) == 0,
                      what="the actor's 2 CPUs to show as taken")
            ref = task.remote()
            ready, not_ready = taskmesh.wait([ref], timeout=1)
            assert ready == [] and not_ready == [ref]
            taskmesh.kill(hog)
            assert taskmesh.get(ref, timeout=30) == "ran"
            _wait_for(lambda: taskmesh.available_resources().get("CPU", 0) == 2,
                      what="the CPUs to be free again")
        finally:
            taskmesh.shutdown()


def test_restart_after_sigkill_then_die_when_restarts_exhausted(cluster_factory) -> None:
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            p = Phoenix.remote()
            assert taskmesh.get([p.increment.remote() for _ in range(3)]) == [1, 2, 3]
            pid = taskmesh.get(p.pid.remote())
            os.kill(pid, signal.SIGKILL)
            # As Ray's own tests do: wait for the restart before calling again (a call sent
            # while the old process is still dying may be lost with it: max_task_retries=0).
            _wait_for(lambda: (i := _actor_info(p))["restarts"] == "1" and i["state"] == "ALIVE",
                      what="the actor to restart")

            assert taskmesh.get(p.increment.remote(), timeout=30) == 1  # __init__ ran again
            new_pid = taskmesh.get(p.pid.remote())
            assert new_pid != pid
            info = _actor_info(p)
            assert info["state"] == "ALIVE" and info["restarts"] == "1"
            assert info["pid"] == str(new_pid)

            os.kill(new_pid, signal.SIGKILL)
            with pytest.raises(exceptions.ActorDiedError) as error:
                taskmesh.get(p.increment.remote(), timeout=30)
            assert isinstance(error.value, exceptions.RayActorError)
            info = _wait_for(lambda: (i := _actor_info(p))["state"] == "DEAD" and i, what="DEAD")
            assert info["death_cause"]
        finally:
            taskmesh.shutdown()


@pytest.mark.parametrize("max_task_retries", [0, 1])
def test_call_in_flight_when_actor_is_killed(cluster_factory, tmp_path: Path, max_task_retries) -> None:
    attempts = tmp_path / "attempts"

    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote(max_restarts=1, max_task_retries=max_task_retries)
            class Worker:
                def pid(self):
                    return os.getpid()

                def slow(self, path):
                    with open(path, "a") as f:
                        f.write("x")
                    if len(Path(path).read_text()) == 1:
                        time.sleep(60)  # the first attempt is killed here
                    return "finished"

            w = Worker.remote()
            pid = taskmesh.get(w.pid.remote())
            ref = w.slow.remote(str(attempts))
            _wait_for(lambda: attempts.exists(), what="the call to start")
            os.kill(pid, signal.SIGKILL)

            if max_task_retries == 0:
                with pytest.raises(exceptions.RayActorError):
                    taskmesh.get(ref, timeout=30)
                assert attempts.read_text() == "x"
            else:
                assert taskmesh.get(ref, timeout=30) == "finished"
                assert attempts.read_text() == "xx"
            # Either way the actor itself was restarted and serves new calls.
            assert taskmesh.get(w.pid.remote(), timeout=30) != pid
        finally:
            taskmesh.shutdown()


# ---- basics ------------------------------------------------------------------------------


def test_state_args_and_submission_order(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self, start, step=1):
            self.value = start
            self.step = step
            self.log = []

        def increment(self):
            self.value += self.step
            return self.value

        def append(self, i):
            self.log.append(i)

        def read(self):
            return self.log

    counter = Counter.remote(10, step=5)
    assert ray.get(counter.increment.remote()) == 15
    assert ray.get([counter.increment.remote() for _ in range(3)]) == [20, 25, 30]

    for i in range(200):
        counter.append.remote(i)
    assert ray.get(counter.read.remote()) == list(range(200))

    other = Counter.remote(0)  # a second instance has its own state
    assert ray.get(other.increment.remote()) == 1
    assert ray.get(counter.increment.remote()) == 35


def test_calls_wait_for_their_arguments_in_submission_order(ray) -> None:
    """Ray: a sync actor runs one submitter's calls in submission order, even when an
    earlier call's argument is not ready yet; top-level ObjectRef arguments arrive as values."""

    @ray.remote
    def slow(value):
        time.sleep(0.5)
        return value

    @ray.remote
    class Adder:
        def __init__(self):
            self.value = 0

        def add(self, addition):
            self.value += addition
            return self.value

        def kinds(self, top, nested):
            return type(top).__name__, type(nested[0]).__name__

    adder = Adder.remote()
    value0 = adder.add.remote(slow.remote(1))
    value1 = adder.add.remote(2)
    assert ray.get(value0) == 1
    assert ray.get(value1) == 3
    ref = ray.put(5)
    assert ray.get(adder.add.remote(ref)) == 8
    assert ray.get(adder.kinds.remote(ref, [ref])) == ("int", "ObjectRef")


def test_method_num_returns(ray) -> None:
    @ray.remote
    class Splitter:
        @taskmesh.method(num_returns=2)
        def pair(self, x):
            return x, x * 2

        def triple(self, x):
            return x, x + 1, x + 2

    s = Splitter.remote()
    a, b = s.pair.remote(3)
    assert ray.get([a, b]) == [3, 6]
    refs = s.triple.options(num_returns=3).remote(7)
    assert len(refs) == 3
    assert ray.get(refs) == [7, 8, 9]
    assert ray.get(s.triple.remote(1)) == (1, 2, 3)  # the default is still one return


def test_handles_passed_to_tasks_and_actors(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def increment(self, by=1):
            self.value += by
            return self.value

        def get(self):
            return self.value

    @ray.remote
    def bump(counter, times):
        return taskmesh.get([counter.increment.remote() for _ in range(times)])[-1]

    @ray.remote
    class Forwarder:
        def __init__(self, counter):
            self.counter = counter

        def forward(self, by):
            return taskmesh.get(self.counter.increment.remote(by))

    counter = Counter.remote()
    assert ray.get(bump.remote(counter, 3)) == 3
    forwarder = Forwarder.remote(counter)
    assert ray.get(forwarder.forward.remote(10)) == 13
    assert ray.get(counter.get.remote()) == 13


# ---- errors ------------------------------------------------------------------------------


def test_method_error_is_ray_task_error_and_cause_and_actor_survives(ray) -> None:
    @ray.remote
    class Flaky:
        def __init__(self):
            self.calls = 0

        def fail(self):
            self.calls += 1
            raise ValueError("boom from actor")

        def count(self):
            return self.calls

    a = Flaky.remote()
    with pytest.raises(ValueError, match="boom from actor") as info:
        ray.get(a.fail.remote())
    assert isinstance(info.value, exceptions.RayTaskError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(exceptions.RayTaskError):
        ray.get(a.fail.remote())
    assert ray.get(a.count.remote()) == 2


def test_constructor_error_makes_the_actor_dead(ray) -> None:
    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("cannot construct")

        def ping(self):
            return "pong"

    b = Broken.remote()
    with pytest.raises(exceptions.ActorDiedError, match="cannot construct") as error:
        ray.get(b.ping.remote(), timeout=20)
    assert isinstance(error.value, exceptions.RayActorError)
    info = _wait_for(lambda: (i := _actor_info(b))["state"] == "DEAD" and i, what="state DEAD")
    assert "cannot construct" in info["death_cause"]
    with pytest.raises(exceptions.RayActorError):
        ray.get(b.ping.remote(), timeout=20)


def test_misuse_errors(ray) -> None:
    @ray.remote
    class Thing:
        def work(self):
            return 1

    handle = Thing.remote()
    with pytest.raises(AttributeError, match="nope"):
        handle.nope.remote()
    with pytest.raises(TypeError, match="remote"):
        Thing()
    with pytest.raises(TypeError, match="remote"):
        handle.work()
    assert ray.get(handle.work.remote()) == 1


@pytest.mark.parametrize(
    ("options", "exc", "mentions"),
    [
        ({"max_restarts": -2}, ValueError, "max_restarts"),
        ({"max_task_retries": -2}, ValueError, "max_task_retries"),
        ({"num_returns": 2}, ValueError, "num_returns"),
        ({"max_calls": 1}, ValueError, "max_calls"),
        ({"lifetime": "forever"}, ValueError, "lifetime"),
        ({"concurrency_groups": {"io": 0}}, ValueError, "io"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_restarts": "x"}, TypeError, "max_restarts"),
    ],
)
def test_invalid_actor_options(ray, options, exc, mentions) -> None:
    """Rejected naming the option, at decoration/.options() or at the latest at .remote()."""

    class Thing:
        pass

    with pytest.raises(exc, match=mentions):
        ray.remote(**options)(Thing).remote()

    ok = ray.remote(Thing)
    with pytest.raises(exc, match=mentions):
        ok.options(**options).remote()


def test_method_decorator_rejects_unknown_options() -> None:
    # Ray asserts (AssertionError) naming the keyword; taskmesh raises ValueError.
    with pytest.raises((ValueError, AssertionError)):
        taskmesh.method(bogus=3)


# ---- concurrency -------------------------------------------------------------------------


def test_async_actor_calls_overlap(ray) -> None:
    @ray.remote
    class AsyncActor:
        def __init__(self):
            self.running = 0
            self.max_running = 0

        async def work(self, wait_for):
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            # Proceed once `wait_for` calls run at once (or give up after a while).
            deadline = time.monotonic() + 10
            while self.running < wait_for and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            self.running -= 1
            return self.max_running

        async def peak(self):
            return self.max_running

    a = AsyncActor.remote()
    ray.get([a.work.remote(10) for _ in range(10)])
    assert ray.get(a.peak.remote()) == 10


def test_async_actor_with_max_concurrency_one_runs_one_call_at_a_time(ray) -> None:
    @ray.remote(max_concurrency=1)
    class Serial:
        def __init__(self):
            self.running = 0
            self.max_running = 0
            self.done = []

        async def work(self, i):
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            await asyncio.sleep(0.02)
            self.done.append(i)
            self.running -= 1

        async def stats(self):
            # Ray does not promise an order for async actors: compare sorted.
            return self.max_running, sorted(self.done)

    a = Serial.remote()
    ray.get([a.work.remote(i) for i in range(8)])
    assert ray.get(a.stats.remote()) == (1, list(range(8)))


def test_threaded_actor_calls_overlap_up_to_max_concurrency(ray) -> None:
    @ray.remote(max_concurrency=4)
    class Threaded:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = 0
            self.max_running = 0
            self.threads = set()

        def work(self, wait_for):
            with self.lock:
                self.running += 1
                self.max_running = max(self.max_running, self.running)
                self.threads.add(threading.get_ident())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with self.lock:
                    if self.running >= wait_for:
                        break
                time.sleep(0.01)
            time.sleep(0.05)
            with self.lock:
                self.running -= 1

        def stats(self):
            return self.max_running, len(self.threads)

    a = Threaded.remote()
    ray.get([a.work.remote(4) for _ in range(12)])
    max_running, threads = ray.get(a.stats.remote())
    assert max_running == 4
    assert threads > 1


def test_async_concurrency_groups(ray) -> None:
    @ray.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            self.running = {}
            self.peak = {}

        async def _track(self, group, wait_for):
            self.running[group] = self.running.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.running[group])
            deadline = time.monotonic() + 10
            while self.running[group] < wait_for and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            self.running[group] -= 1

        @taskmesh.method(concurrency_group="io")
        async def io(self):
            await self._track("io", 2)

        async def default(self, label, wait_for):
            await self._track(label, wait_for)

        async def peaks(self):
            return dict(self.peak)

    a = Grouped.remote()
    ray.get([a.io.remote() for _ in range(6)])
    # A default-group method sent to "compute" runs one call at a time ...
    ray.get([a.default.options(concurrency_group="compute").remote("compute", 1)
             for _ in range(4)])
    # ... while in the default group (limit 1000 for async actors) the same calls overlap.
    ray.get([a.default.remote("default", 4) for _ in range(4)])
    assert ray.get(a.peaks.remote()) == {"io": 2, "compute": 1, "default": 4}


def test_threaded_concurrency_groups(ray) -> None:
    """Ray: concurrency groups work for threaded (non-async) actors with the same syntax."""

    @ray.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = {}
            self.peak = {}

        def _track(self, group, wait_for):
            with self.lock:
                self.running[group] = self.running.get(group, 0) + 1
                self.peak[group] = max(self.peak.get(group, 0), self.running[group])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with self.lock:
                    if self.running[group] >= wait_for:
                        break
                time.sleep(0.01)
            time.sleep(0.05)
            with self.lock:
                self.running[group] -= 1

        @taskmesh.method(concurrency_group="io")
        def io(self):
            self._track("io", 2)

        def default(self, label):
            self._track(label, 1)

        def peaks(self):
            return dict(self.peak)

    a = Grouped.remote()
    ray.get([a.io.remote() for _ in range(6)])
    ray.get([a.default.options(concurrency_group="compute").remote("compute") for _ in range(3)])
    assert ray.get(a.peaks.remote()) == {"io": 2, "compute": 1}


# ---- names and namespaces ----------------------------------------------------------------


def test_named_actors(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def increment(self):
            self.value += 1
            return self.value

    counter = Counter.options(name="named-counter").remote()
    assert ray.get(counter.increment.remote()) == 1
    found = ray.get_actor("named-counter")
    assert ray.get(found.increment.remote()) == 2

    with pytest.raises(ValueError, match="named-counter"):
        Counter.options(name="named-counter").remote()

    same = Counter.options(name="named-counter", get_if_exists=True).remote()
    assert ray.get(same.increment.remote()) == 3
    assert ray.get(counter.increment.remote()) == 4

    with pytest.raises(ValueError, match="missing"):
        ray.get_actor("missing")

    # An explicit namespace: found there, not in the driver's own namespace.
    in_ns = Counter.options(name="ns-counter", namespace="other-ns").remote()
    assert ray.get(in_ns.increment.remote()) == 1
    with pytest.raises(ValueError):
        ray.get_actor("ns-counter")
    assert ray.get(ray.get_actor("ns-counter", namespace="other-ns").increment.remote()) == 2
    # The same name is free in another namespace.
    here = Counter.options(name="ns-counter").remote()
    assert ray.get(here.increment.remote()) == 1


def test_named_actor_is_freed_when_it_dies(ray) -> None:
    @ray.remote
    class Thing:
        def ping(self):
            return "pong"

    first = Thing.options(name="reusable").remote()
    assert ray.get(first.ping.remote()) == "pong"
    ray.kill(first)
    _wait_for(lambda: _actor_info(first).get("state") == "DEAD", what="the actor to die")
    with pytest.raises(ValueError):
        ray.get_actor("reusable")
    second = Thing.options(name="reusable").remote()
    assert ray.get(ray.get_actor("reusable").ping.remote()) == "pong"
    assert second == ray.get_actor("reusable")


def test_tasks_share_their_drivers_namespace(ray) -> None:
    """Ray: tasks and actors inherit their job's namespace, so a named actor created by
    the driver is found by `get_actor(name)` inside a task."""

    @ray.remote
    class Registry:
        def __init__(self):
            self.items = []

        def add(self, item):
            self.items.append(item)
            return len(self.items)

    @ray.remote
    def namespace_here():
        return taskmesh.get_runtime_context().namespace

    @ray.remote
    def use_registry():
        return taskmesh.get(taskmesh.get_actor("registry").add.remote("from-task"))

    registry = Registry.options(name="registry").remote()
    assert ray.get(registry.add.remote("from-driver")) == 1
    assert ray.get(use_registry.remote()) == 2
    assert ray.get(namespace_here.remote()) == ray.get_runtime_context().namespace


def test_actors_created_inside_tasks(ray) -> None:
    """Ray: tasks can create actors; a detached named one outlives the task."""

    @ray.remote
    class Box:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    @ray.remote
    def make_and_use(value):
        box = Box.remote(value)
        return taskmesh.get(box.get.remote())

    @ray.remote
    def make_named():
        box = Box.options(name="made-in-task", lifetime="detached",
                          namespace="tasks-ns").remote("kept")
        return taskmesh.get(box.get.remote())

    assert ray.get(make_and_use.remote(41)) == 41
    assert ray.get(make_named.remote()) == "kept"
    made = ray.get_actor("made-in-task", namespace="tasks-ns")
    try:
        assert ray.get(made.get.remote()) == "kept"
    finally:
        ray.kill(made)


def test_namespaces_across_drivers(shared_cluster) -> None:
    @taskmesh.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def increment(self):
            self.value += 1
            return self.value

        def pid(self):
            return os.getpid()

    taskmesh.init(address=shared_cluster.url, namespace="team-a")
    try:
        assert taskmesh.get_runtime_context().namespace == "team-a"
        keeper = Counter.options(name="keeper", lifetime="detached").remote()
        scoped = Counter.options(name="scoped").remote()
        assert taskmesh.get(keeper.increment.remote()) == 1
        assert taskmesh.get(scoped.increment.remote()) == 1
        scoped_id = scoped._actor_id
        scoped_pid = taskmesh.get(scoped.pid.remote())
    finally:
        taskmesh.shutdown()

    taskmesh.init(address=shared_cluster.url, namespace="team-a")
    try:
        again = taskmesh.get_actor("keeper")
        assert taskmesh.get(again.increment.remote()) == 2  # same actor, state kept
        # The non-detached actor dies with the first driver's job (asynchronously: its
        # node kills its process, as Ray's GCS does when a job ends).
        store = get_runtime().store
        _wait_for(lambda: store.redis.hget(store.keys.actor(scoped_id), "state") == b"DEAD",
                  what="the first driver's non-detached actor to die")
        _wait_for(lambda: _pid_gone(scoped_pid), what="the non-detached actor's process to exit")
        with pytest.raises(ValueError):
            taskmesh.get_actor("scoped")
    finally:
        taskmesh.shutdown()

    taskmesh.init(address=shared_cluster.url)  # an anonymous namespace
    try:
        with pytest.raises(ValueError):
            taskmesh.get_actor("keeper")
        keeper = taskmesh.get_actor("keeper", namespace="team-a")
        assert taskmesh.get(keeper.increment.remote()) == 3
        taskmesh.kill(keeper)  # detached actors live until killed
        _wait_for(lambda: _actor_info(keeper).get("state") == "DEAD", what="the detached actor to die")
    finally:
        taskmesh.shutdown()


# ---- lifecycle ---------------------------------------------------------------------------


def test_kill_then_calls_raise_actor_died_error(ray) -> None:
    @ray.remote
    class Victim:
        def ping(self):
            return "pong"

        def pid(self):
            return os.getpid()

        def hang(self):
            time.sleep(60)

    v = Victim.remote()
    pid = ray.get(v.pid.remote())
    info = _actor_info(v)
    assert info["class_name"] == "Victim"
    assert info["state"] == "ALIVE"
    assert info["pid"] == str(pid)
    assert info["node_id"] == ray.nodes()[0]["NodeID"]
    assert info["restarts"] == "0"

    # As Ray's test_kill: a call running when the actor is killed fails at once ...
    running = v.hang.remote()
    ready, _ = ray.wait([running], timeout=0.5)
    assert ready == []
    ray.kill(v)
    with pytest.raises(exceptions.ActorDiedError) as error:
        ray.get(running, timeout=20)
    assert isinstance(error.value, exceptions.RayActorError)
    _wait_for(lambda: _pid_gone(pid), what="the killed actor's process to exit")
    info = _wait_for(lambda: (i := _actor_info(v))["state"] == "DEAD" and i, what="state DEAD")
    assert info["death_cause"]
    # ... and once it is dead, every later call does too.
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(v.ping.remote(), timeout=20)


def test_kill_rejects_non_actors(ray) -> None:
    @ray.remote
    def f():
        return 1

    with pytest.raises(ValueError):
        ray.kill(f.remote())


def test_kill_with_no_restart_false_restarts_the_actor(ray) -> None:
    p = Phoenix.remote()
    assert ray.get([p.increment.remote(), p.increment.remote()]) == [1, 2]
    pid = ray.get(p.pid.remote())
    ray.kill(p, no_restart=False)
    _wait_for(lambda: (i := _actor_info(p))["restarts"] == "1" and i["state"] == "ALIVE",
              what="the actor to restart")
    assert ray.get(p.increment.remote(), timeout=20) == 1
    assert ray.get(p.pid.remote()) != pid
    ray.kill(p)  # no_restart=True by default, even with restarts left
    _wait_for(lambda: _actor_info(p)["state"] == "DEAD", what="the actor to die")
    assert _actor_info(p)["restarts"] == "1"
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(p.increment.remote(), timeout=20)


def test_runtime_context_inside_an_actor(ray) -> None:
    @ray.remote
    class WhoAmI:
        def actor_id(self):
            return taskmesh.get_runtime_context().get_actor_id()

    a, b = WhoAmI.remote(), WhoAmI.remote()
    id_a, id_b = ray.get([a.actor_id.remote(), b.actor_id.remote()])
    assert id_a == a._actor_id
    assert id_b == b._actor_id
    assert id_a != id_b
    assert ray.get_runtime_context().get_actor_id() is None  # the driver is no actor


def test_exit_actor_ends_the_actor(ray) -> None:
    @ray.remote(max_restarts=1)
    class Quitter:
        def ping(self):
            return "pong"

        def quit(self):
            taskmesh.actor.exit_actor()

    q = Quitter.remote()
    assert ray.get(q.ping.remote()) == "pong"
    with pytest.raises(exceptions.RayActorError):
        ray.get(q.quit.remote(), timeout=20)
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(q.ping.remote(), timeout=20)
    info = _actor_info(q)
    assert info["state"] == "DEAD"  # an intentional exit is never restarted
    assert info["restarts"] == "0"


def test_exit_actor_outside_an_actor_raises(ray) -> None:
    with pytest.raises(TypeError):
        taskmesh.actor.exit_actor()


def test_actor_terminated_when_its_handle_is_dropped(ray, tmp_path: Path) -> None:
    marker = tmp_path / "shutdown-ran"

    @ray.remote
    class Ephemeral:
        def __init__(self, path):
            self.path = path

        def pid(self):
            return os.getpid()

        def __ray_shutdown__(self):
            Path(self.path).write_text("bye")

    handle = Ephemeral.remote(str(marker))
    pid = ray.get(handle.pid.remote())
    actor_id = handle._actor_id
    del handle
    gc.collect()
    _wait_for(lambda: _pid_gone(pid), what="the dropped actor's process to exit")
    assert marker.read_text() == "bye"
    store = get_runtime().store
    _wait_for(lambda: store.redis.hget(store.keys.actor(actor_id), "state") == b"DEAD",
              what="the dropped actor to be DEAD")


# ---- resources ---------------------------------------------------------------------------


def test_actor_with_unavailable_resource_stays_pending(ray) -> None:
    @ray.remote(resources={"no-such-thing": 1})
    class Unplaceable:
        def ping(self):
            return "pong"

    a = Unplaceable.remote()
    ref = a.ping.remote()
    ready, not_ready = ray.wait([ref], timeout=1)
    assert ready == [] and not_ready == [ref]
    assert _actor_info(a)["state"] == "PENDING"
    ray.kill(a)
    with pytest.raises(exceptions.RayActorError):
        ray.get(ref, timeout=10)


def test_a_dropped_handle_lets_an_async_actors_running_calls_finish(ray) -> None:
    """As Ray: an actor whose last handle is gone exits after the calls sent before."""
    import asyncio

    @ray.remote
    class Slow:
        async def f(self):
            await asyncio.sleep(0.3)
            return "done"

    assert ray.get(Slow.remote().f.remote(), timeout=30) == "done"


def test_an_async_actor_that_exits_is_dead_for_every_later_call(ray) -> None:
    """exit_actor() in an async method: the death is recorded before the process goes,
    so later calls fail instead of hanging."""

    @ray.remote
    class Leaver:
        async def ping(self):
            return "pong"

        async def leave(self):
            taskmesh.actor.exit_actor()

    for _ in range(5):
        actor = Leaver.remote()
        assert ray.get(actor.ping.remote(), timeout=30) == "pong"
        ray.wait([actor.leave.remote()], timeout=10)
        with pytest.raises(exceptions.RayActorError):
            ray.get(actor.ping.remote(), timeout=20)


def test_a_call_can_take_the_result_of_an_earlier_call_on_the_same_actor(ray) -> None:
    @ray.remote
    class Acc:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

    acc = Acc.remote()
    first = acc.add.remote(1)
    second = acc.add.remote(first)  # runs after `first`, on its result
    third = acc.add.remote(second)
    assert ray.get([first, second, third], timeout=30) == [1, 2, 4]


def test_calls_sent_before_the_last_handle_is_dropped_keep_their_results(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self, k):
            self.n += k
            return self.n

    for _ in range(5):
        counter = Counter.remote()
        refs = [counter.incr.remote(3), counter.incr.remote(4)]
        del counter
        gc.collect()
        assert ray.get(refs, timeout=30) == [3, 7]
