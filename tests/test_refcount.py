"""Distributed reference counting: an object lives while any process, pending task or
containing object holds a ref to it, and is freed everywhere when the last one is gone,
whoever made it and whether or not its owner process still exists."""

from __future__ import annotations

import numpy as np

import taskmesh
from conftest import wait_until
from taskmesh.store import Store


def exists(store: Store, oid: str) -> bool:
    return bool(store.redis.exists(store.keys.obj(oid)))


def holders(store: Store, oid: str) -> set[str]:
    return {h.decode() for h in store.redis.hkeys(store.keys.obj_refs(oid))}


@taskmesh.remote
class Keeper:
    def __init__(self):
        self.kept = []

    def keep(self, refs):
        self.kept.extend(refs)
        return len(self.kept)

    def total(self):
        return float(sum(taskmesh.get(r).sum() for r in self.kept))

    def forget(self):
        self.kept.clear()
        return 0


def test_a_ref_lent_to_a_task_is_freed_once_the_task_and_the_driver_are_done(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        @ray.remote
        def total(x):
            return float(x.sum())

        ref = ray.put(np.ones(200_000))
        assert ray.get(total.remote(ref)) == 200_000.0
        assert ray.get(total.remote([ref][0])) == 200_000.0
        oid = ref.hex()
        del ref
        wait_until(lambda: not exists(store, oid))  # not kept until the driver exits
    finally:
        store.close()


def test_a_ref_kept_by_an_actor_outlives_the_drivers_ref(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        keeper = Keeper.remote()
        ref = ray.put(np.ones(200_000))
        oid = ref.hex()
        assert ray.get(keeper.keep.remote([ref])) == 1  # nested: the actor gets the ref
        del ref
        wait_until(lambda: any(h.startswith("p:") for h in holders(store, oid)))
        assert ray.get(keeper.total.remote()) == 200_000.0  # still there
        assert exists(store, oid)
        assert ray.get(keeper.forget.remote()) == 0
        wait_until(lambda: not exists(store, oid))
        assert not store.redis.exists(store.keys.obj_refs(oid))
    finally:
        store.close()


def test_refs_inside_an_object_are_held_by_it(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        inner = ray.put(np.arange(100_000))
        inner_id = inner.hex()
        outer = ray.put({"payload": [inner]})
        outer_id = outer.hex()
        assert holders(store, inner_id) == {f"o:{outer_id}"}
        del inner
        got = ray.get(outer)["payload"][0]
        assert ray.get(got).sum() == sum(range(100_000))
        del got
        assert exists(store, inner_id)  # the outer object still holds it
        del outer
        wait_until(lambda: not exists(store, outer_id) and not exists(store, inner_id))
    finally:
        store.close()


def test_an_object_outlives_the_worker_that_made_it(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        @ray.remote(max_calls=1)  # the worker exits after this task
        def make():
            return [taskmesh.put(np.full(100_000, 7.0))]

        (inner,) = ray.get(make.remote())
        inner_id = inner.hex()
        wait_until(lambda: not store.redis.hexists(store.keys.obj(inner_id), "held"))  # owner gone
        assert ray.get(inner).sum() == 700_000.0
        del inner
        wait_until(lambda: not exists(store, inner_id))
    finally:
        store.close()


def test_a_killed_borrower_releases_its_refs(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    try:
        keeper = Keeper.remote()
        ref = ray.put(np.ones(200_000))
        oid = ref.hex()
        ray.get(keeper.keep.remote([ref]))
        wait_until(lambda: any(h.startswith("p:") for h in holders(store, oid)))
        ray.kill(keeper)  # SIGKILL of the actor's process: its agent releases its refs
        wait_until(lambda: not any(h.startswith("p:") for h in holders(store, oid)))
        assert ray.get(ref).sum() == 200_000.0
        del ref
        wait_until(lambda: not exists(store, oid))
    finally:
        store.close()
