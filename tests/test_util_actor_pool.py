"""ActorPool on a real cluster, used the way Ray's docs use `ray.util.ActorPool`."""

from __future__ import annotations

import inspect
import os
import time

import pytest

import taskmesh
from conftest import wait_until
from taskmesh.util import ActorPool
from taskmesh.util.actor_pool import ActorPool as ActorPoolFromModule


@taskmesh.remote
class Worker:
    def double(self, v):
        return 2 * v

    def pid(self, _):
        return os.getpid()

    def fail_on(self, v):
        if v == "bad":
            raise ValueError(f"cannot handle {v}")
        return v

    def touch(self, path):
        open(path, "w").close()
        return path

    def wait_then(self, spec):
        """Returns value once the driver-side file `path` exists (None: at once)."""
        path, value = spec
        while path is not None and not os.path.exists(path):
            time.sleep(0.01)
        return value


def _double(actor, v):
    return actor.double.remote(v)


@pytest.fixture
def workers(ray):
    return [Worker.remote(), Worker.remote()]


def test_exports_and_map_keeps_order_across_both_actors(workers) -> None:
    assert ActorPool is ActorPoolFromModule
    pool = ActorPool(workers)
    assert list(pool.map(_double, range(10))) == [2 * i for i in range(10)]
    pids = set(pool.map(lambda a, v: a.pid.remote(v), range(6)))
    assert len(pids) == 2  # the work went to both actors
    assert not pool.has_next() and pool.has_free()


def test_map_unordered_returns_every_result(workers) -> None:
    pool = ActorPool(workers)
    assert sorted(pool.map_unordered(_double, range(12))) == [2 * i for i in range(12)]
    assert not pool.has_next()


def test_map_unordered_yields_a_finished_result_before_a_blocked_one(workers, tmp_path) -> None:
    gate = str(tmp_path / "gate")
    pool = ActorPool(workers)
    results = pool.map_unordered(lambda a, s: a.wait_then.remote(s), [(gate, "slow"), (None, "fast")])
    assert next(results) == "fast"
    open(gate, "w").close()
    assert next(results) == "slow"


def test_submit_and_get_next_in_submission_order(workers) -> None:
    pool = ActorPool(workers)
    for i in range(5):  # more submissions than actors: the rest wait for a free actor
        pool.submit(_double, i)
    assert not pool.has_free()
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    with pytest.raises(StopIteration, match="No more results"):
        pool.get_next()


def test_get_next_unordered_then_get_next_is_refused(workers, tmp_path) -> None:
    pool = ActorPool(workers)
    for i in range(4):
        pool.submit(_double, i)
    got = [pool.get_next_unordered(timeout=30) for _ in range(4)]
    assert sorted(got) == [0, 2, 4, 6]
    with pytest.raises(StopIteration):
        pool.get_next_unordered()
    gate = str(tmp_path / "gate")
    pool.submit(lambda a, s: a.wait_then.remote(s), (gate, "slow"))
    pool.submit(lambda a, s: a.wait_then.remote(s), (None, "fast"))
    assert pool.get_next_unordered(timeout=30) == "fast"
    # As Ray: the result after the one taken out of order was already returned.
    with pytest.raises(ValueError, match="get_next\\(\\) after get_next_unordered"):
        pool.get_next()
    open(gate, "w").close()
    assert pool.get_next_unordered(timeout=30) == "slow"


def test_has_next_has_free_pop_idle_push(workers) -> None:
    a, b = workers
    pool = ActorPool([a])
    assert pool.has_free() and not pool.has_next()
    pool.submit(_double, 1)
    assert pool.has_next() and not pool.has_free()
    assert pool.pop_idle() is None
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a)  # busy
    pool.submit(_double, 2)  # waits: the only actor is busy
    pool.push(b)  # a new actor takes the waiting submission at once
    assert pool.get_next() == 2 and pool.get_next() == 4
    assert pool.has_free()
    idle = {pool.pop_idle(), pool.pop_idle()}
    assert idle == {a, b} and pool.pop_idle() is None and not pool.has_free()
    other = ActorPool([])
    other.push(a)
    with pytest.raises(ValueError, match="already belongs"):
        other.push(a)  # idle
    assert list(other.map(_double, [5, 6])) == [10, 12]


def test_task_error_propagates_and_the_pool_keeps_working(workers) -> None:
    pool = ActorPool(workers)
    for v in ["ok", "bad", "fine"]:
        pool.submit(lambda a, x: a.fail_on.remote(x), v)
    assert pool.get_next() == "ok"
    with pytest.raises(ValueError, match="cannot handle bad") as error:
        pool.get_next()
    assert isinstance(error.value, taskmesh.exceptions.RayTaskError)
    assert pool.get_next() == "fine"
    assert pool.has_free()
    assert list(pool.map(_double, [1, 2, 3])) == [2, 4, 6]


def test_get_next_timeout_raises_and_can_ignore_the_late_task(workers, tmp_path) -> None:
    gate = str(tmp_path / "gate")
    pool = ActorPool(workers[:1])
    pool.submit(lambda a, s: a.wait_then.remote(s), (gate, "late"))
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.2)
    assert pool.has_next()  # a plain timeout keeps the task pending
    with pytest.raises(TimeoutError, match="Timed out"):
        pool.get_next_unordered(timeout=0)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()  # the actor is back in the pool
    pool.submit(lambda a, s: a.wait_then.remote(s), (gate, "later"))
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next_unordered(timeout=0, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()
    open(gate, "w").close()
    pool.submit(_double, 21)
    assert pool.get_next(timeout=30) == 42


def test_map_drops_results_left_over_from_earlier_submissions(workers) -> None:
    pool = ActorPool(workers)
    pool.submit(_double, 100)
    pool.submit(_double, 200)
    pool.submit(_double, 300)
    assert list(pool.map(_double, [1, 2])) == [2, 4]


def test_fn_must_return_an_object_ref(workers) -> None:
    pool = ActorPool(workers)
    with pytest.raises(TypeError, match="must return an ObjectRef"):
        pool.submit(lambda a, v: v, 1)


@pytest.mark.parametrize("method", ["map", "map_unordered"])
def test_map_submits_at_once_and_returns_a_generator(workers, tmp_path, method) -> None:
    # Ray's map submits every value before returning its generator: as many calls start
    # as there are actors, before the first result is asked for; the rest wait for an
    # actor to come back (when a result is taken).
    pool = ActorPool(workers)
    paths = [str(tmp_path / f"v{i}") for i in range(3)]
    results = getattr(pool, method)(lambda a, p: a.touch.remote(p), paths)
    assert inspect.isgenerator(results)
    wait_until(lambda: sum(map(os.path.exists, paths)) == 2, what="both actors busy")
    assert pool.has_next() and not pool.has_free()
    assert sorted(results) == paths


def test_map_unordered_waits_for_earlier_submissions(workers, tmp_path) -> None:
    # Ray's map_unordered takes every earlier pending result (dropping it) before it
    # submits; map drops the running ones at once instead.
    gate = str(tmp_path / "gate")
    pool = ActorPool(workers[:1])
    pool.submit(lambda a, s: a.touch.remote(s[0]), (gate, None))
    assert list(pool.map_unordered(_double, [4])) == [8]
    assert os.path.exists(gate)


def test_a_dead_actor_leaves_the_pool(ray) -> None:
    dead, alive = Worker.remote(), Worker.remote()
    ray.get([dead.double.remote(0), alive.double.remote(0)])
    ray.kill(dead)

    def is_dead() -> bool:
        try:
            ray.get(dead.double.remote(0), timeout=30)
        except taskmesh.exceptions.ActorDiedError:
            return True
        return False

    wait_until(is_dead, what="the killed actor's death")
    pool = ActorPool([alive, dead])  # pop() takes the last one first: the dead one
    pool.submit(_double, 1)
    with pytest.raises(taskmesh.exceptions.ActorDiedError):
        pool.get_next(timeout=30)
    assert list(pool.map(_double, [1, 2, 3])) == [2, 4, 6]
    assert pool.pop_idle() is alive and pool.pop_idle() is None
