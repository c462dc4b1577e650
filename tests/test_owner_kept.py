"""Small results kept by their owner: a task's or actor call's small result travels in
its completion notice only and is not stored in Redis, until a ref to it leaves the owner
process; then it is stored first, and freed like any object when the last holder lets go."""

from __future__ import annotations

import cloudpickle

import taskmesh
from conftest import wait_until
from taskmesh.store import Store


def stored(store: Store, oid: str) -> bool:
    return bool(store.redis.exists(store.keys.obj(oid)))


@taskmesh.remote
def make(x):
    return x


@taskmesh.remote
def add_one(x):
    return x + 1


@taskmesh.remote
def unpickle_and_get(blob):
    return taskmesh.get(cloudpickle.loads(blob)) + 1


@taskmesh.remote
def first_of(refs):
    return taskmesh.get(refs[0]) + 1


@taskmesh.remote
def wrap(x):
    return [make.remote(x)]


@taskmesh.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


def test_a_small_result_is_not_stored_and_its_owner_reads_it(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        ref = make.remote(41)
        assert ray.get(ref) == 41
        assert not stored(store, ref.hex())
        counter = Counter.remote()
        call = counter.incr.remote()
        assert ray.get(call) == 1
        assert not stored(store, call.hex())
    finally:
        store.close()


def test_a_kept_result_is_stored_when_its_ref_is_passed_on_and_freed_after(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        ref = make.remote(1)
        assert ray.get(ref) == 1  # arrived, kept here
        assert ray.get(add_one.remote(ref)) == 2  # stored before the task was sent
        assert stored(store, ref.hex())
        oid = ref.hex()
        del ref
        wait_until(lambda: not stored(store, oid))
    finally:
        store.close()


def test_a_result_passed_on_while_its_task_runs_is_stored_when_it_arrives(ray, shared_cluster) -> None:
    # The dependent task is sent once the result is here; the actor call at once (the
    # actor waits for the argument itself).
    refs = [make.remote(i) for i in range(20)]
    assert ray.get([add_one.remote(r) for r in refs]) == list(range(1, 21))
    counter = Counter.remote()
    assert ray.get(add_one.remote(counter.incr.remote())) == 2


def test_a_kept_result_inside_an_object_or_pickled_by_hand_is_readable_elsewhere(ray, shared_cluster) -> None:
    ref = make.remote(10)
    assert ray.get(ref) == 10
    assert ray.get(first_of.remote(ray.put([ref]))) == 11  # nested in a stored object
    fresh = make.remote(20)
    assert ray.get(first_of.remote([fresh])) == 21  # nested in the arguments
    assert ray.get(unpickle_and_get.remote(cloudpickle.dumps(make.remote(30)))) == 31


def test_a_result_that_holds_refs_is_stored(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        outer = wrap.remote(5)
        inner = ray.get(outer)[0]
        assert ray.get(inner) == 5  # owned by the worker that ran wrap: stored when returned
        assert stored(store, outer.hex())
        assert stored(store, inner.hex())
        outer_id, inner_id = outer.hex(), inner.hex()
        del outer, inner
        wait_until(lambda: not stored(store, outer_id) and not stored(store, inner_id))
    finally:
        store.close()
