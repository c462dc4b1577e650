"""Lineage reconstruction: a task's result whose every copy died with its node (kill -9)
is made again by running its task once more on a surviving node, recursively through lost
arguments; objects that cannot be made again read as Ray's ObjectLostError subclasses;
and lineage costs no key of its own (nothing is left once the refs are gone)."""

from __future__ import annotations

import gc
from pathlib import Path

import msgpack
import numpy as np
import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh._base.wire import QueueEntry
from taskmesh.objects import plane as _object_plane
from taskmesh.objects import shm as _shm
from taskmesh.store import Store

N = 200_000  # 1.6 MB of int64: stored in shared memory, not inline


def _cluster(cluster) -> tuple[str, str]:
    """Node A (no CPU: it hosts the driver's shared memory) and node B, where tasks run."""
    a = cluster.add_node(num_cpus=0)
    b = cluster.add_node(num_cpus=2)
    return a, b


@pytest.fixture
def lineage_cluster(cluster_factory):
    """(cluster, node A, node B) with a driver connected; see _cluster."""
    with cluster_factory(nodes=0) as cluster:
        node_a, node_b = _cluster(cluster)
        taskmesh.init(address=cluster.url)
        try:
            yield cluster, node_a, node_b
        finally:
            taskmesh.shutdown()


def _runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _object_keys(store: Store) -> list[bytes]:
    return list(store.redis.scan_iter(match=store.keys.all_objects(), count=1000))


def test_a_lost_result_is_made_again_once_on_a_surviving_node(lineage_cluster, tmp_path) -> None:
    log = tmp_path / "runs"
    cluster, node_a, node_b = lineage_cluster
    store = Store(cluster.url)
    try:
        @taskmesh.remote
        def make(n):
            with open(log, "a") as f:
                f.write("run\n")
            return {"node": taskmesh.get_runtime_context().get_node_id(),
                    "data": np.arange(n, dtype=np.int64)}

        @taskmesh.remote(num_cpus=1)
        def total(box):
            x = taskmesh.get(box[0])  # a borrowed ref, read inside the task
            return int(x["data"].sum()), x["node"]

        ref = make.remote(N)
        taskmesh.wait([ref], timeout=60)  # (a get would copy it to the driver's node)
        meta = store.redis.hgetall(store.keys.obj(ref.hex()))
        assert meta[b"data"].split()[1] == node_b.encode()
        assert msgpack.unpackb(meta[b"lineage"], raw=False)["attempt"] == 0

        node_c = cluster.add_node(num_cpus=4)
        cluster.kill_node(node_b)
        # Several readers find the object lost at once: its task runs once more.
        readers = [total.remote([ref]) for _ in range(3)]
        value = taskmesh.get(ref, timeout=60)
        assert value["node"] == node_c
        np.testing.assert_array_equal(value["data"], np.arange(N, dtype=np.int64))
        assert taskmesh.get(readers, timeout=60) == [(sum(range(N)), node_c)] * 3
        assert _runs(log) == 2
        meta = store.redis.hgetall(store.keys.obj(ref.hex()))
        assert meta[b"data"].split()[1] == node_c.encode() and b"state" not in meta
        assert msgpack.unpackb(meta[b"lineage"], raw=False)["attempt"] == 1
    finally:
        store.close()


def test_a_chain_is_rebuilt_through_its_lost_argument_and_freed_after(lineage_cluster, tmp_path) -> None:
    log = tmp_path / "runs"
    cluster, node_a, node_b = lineage_cluster
    store = Store(cluster.url)
    try:
        @taskmesh.remote
        def f(n):
            with open(log, "a") as out:
                out.write("f\n")
            return {"node": taskmesh.get_runtime_context().get_node_id(),
                    "data": np.arange(n, dtype=np.int64)}

        @taskmesh.remote
        def g(x):
            with open(log, "a") as out:
                out.write("g\n")
            return {"node": taskmesh.get_runtime_context().get_node_id(), "from": x["node"],
                    "data": x["data"] * 2}

        y = g.remote(f.remote(N))  # the driver keeps no ref to f's result
        taskmesh.wait([y], timeout=60)
        assert store.redis.hget(store.keys.obj(y.hex()), "data").split()[1] == node_b.encode()
        node_c = cluster.add_node(num_cpus=1)
        cluster.kill_node(node_b)

        again = taskmesh.get(y, timeout=60)
        # g ran again on C, and read f's result made again on C (B's copy was gone)
        assert (again["node"], again["from"]) == (node_c, node_c)
        np.testing.assert_array_equal(again["data"], np.arange(N, dtype=np.int64) * 2)
        assert sorted(log.read_text().split()) == ["f", "f", "g", "g"]

        del again, y
        gc.collect()
        # The lineage lived in the objects' hashes, and f's result was held by g's:
        # with the last ref gone, every key and every copy goes.
        wait_until(lambda: not _object_keys(store), what="the objects to be freed")
        store_c = _shm.ShmStore.of_node(node_c)
        wait_until(lambda: not store_c.files_older_than(0), what="node C's copies to go")
    finally:
        store.close()


def test_results_lost_together_are_made_again_by_one_run(lineage_cluster, tmp_path) -> None:
    log = tmp_path / "runs"
    cluster, node_a, node_b = lineage_cluster
    @taskmesh.remote(num_returns=3)
    def split(n):
        with open(log, "a") as f:
            f.write("run\n")
        return np.full(n, 1), np.full(n, 2), "small"

    first, second, small = split.remote(N)
    taskmesh.wait([first, second, small], num_returns=3, timeout=60)
    cluster.add_node(num_cpus=1)
    cluster.kill_node(node_b)
    assert int(taskmesh.get(second, timeout=60).sum()) == 2 * N
    assert int(taskmesh.get(first, timeout=60).sum()) == N
    assert taskmesh.get(small, timeout=60) == "small"
    assert _runs(log) == 2


def test_a_lost_put_object_reports_its_dead_owner(lineage_cluster) -> None:
    cluster, node_a, node_b = lineage_cluster
    @taskmesh.remote
    def stash(n):
        return [taskmesh.put(np.ones(n))]  # owned by this worker, stored on B

    [inner] = taskmesh.get(stash.remote(N), timeout=60)
    cluster.add_node(num_cpus=1)
    cluster.kill_node(node_b)
    with pytest.raises(exceptions.OwnerDiedError) as info:
        taskmesh.get(inner, timeout=60)
    assert isinstance(info.value, exceptions.ObjectLostError)
    assert info.value.object_ref_hex == inner.hex()
    # recorded once: a later reader gets the same error without another look
    with pytest.raises(exceptions.OwnerDiedError):
        taskmesh.get(inner, timeout=10)


def test_a_lost_put_object_of_a_live_owner_is_object_lost(lineage_cluster) -> None:
    cluster, node_a, node_b = lineage_cluster
    ref = taskmesh.put(np.ones(N))  # in the shared memory of the driver's node, A
    assert taskmesh.get_runtime_context().get_node_id() == node_a
    cluster.kill_node(node_a)  # the driver (its owner) lives on
    with pytest.raises(exceptions.ObjectLostError) as info:
        taskmesh.get(ref, timeout=60)
    assert type(info.value) is exceptions.ObjectLostError


def test_without_retries_a_lost_result_cannot_be_made_again(lineage_cluster, tmp_path) -> None:
    log = tmp_path / "runs"
    cluster, node_a, node_b = lineage_cluster
    @taskmesh.remote(max_retries=0)
    def once(n):
        with open(log, "a") as f:
            f.write("run\n")
        return np.zeros(n)

    @taskmesh.remote(max_retries=0)
    def use(x):
        return float(x.sum())

    ref = once.remote(N)
    taskmesh.wait([ref], timeout=60)
    cluster.add_node(num_cpus=1)
    cluster.kill_node(node_b)
    with pytest.raises(exceptions.ObjectReconstructionFailedError) as info:
        taskmesh.get(ref, timeout=60)
    assert not isinstance(info.value, exceptions.ObjectReconstructionFailedMaxAttemptsExceededError)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
    assert "max_retries" in str(info.value)
    # a task depending on it fails with the same error, and nothing ran again
    with pytest.raises(exceptions.ObjectReconstructionFailedError):
        taskmesh.get(use.remote(ref), timeout=60)
    assert _runs(log) == 1


def test_a_result_lost_again_after_its_last_retry_is_max_attempts_exceeded(lineage_cluster) -> None:
    cluster, node_a, node_b = lineage_cluster
    @taskmesh.remote(max_retries=1)
    def make(n):
        return np.arange(n)

    @taskmesh.remote
    def last(box):
        return int(taskmesh.get(box[0])[-1])

    ref = make.remote(N)
    taskmesh.wait([ref], timeout=60)
    node_c = cluster.add_node(num_cpus=1)
    cluster.kill_node(node_b)
    assert taskmesh.get(last.remote([ref]), timeout=60) == N - 1  # made again: attempt 1
    cluster.add_node(num_cpus=1)
    cluster.kill_node(node_c)
    with pytest.raises(exceptions.ObjectReconstructionFailedMaxAttemptsExceededError) as info:
        taskmesh.get(ref, timeout=60)
    assert isinstance(info.value, exceptions.ObjectReconstructionFailedError)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED"


def test_small_results_keep_no_lineage(ray, shared_cluster) -> None:
    @ray.remote
    def small(x):
        return x + 1

    ref = small.remote(ray.put(1))
    assert ray.get(ref) == 2
    store = Store(shared_cluster.url)
    try:
        # Kept by its owner: not stored at all (and so no lineage either).
        assert store.redis.hgetall(store.keys.obj(ref.hex())) == {}
    finally:
        store.close()


def test_recovery_plans_follow_rays_rules() -> None:
    task = "ab12cd34" + "0" * 15 + "1"
    oid = task + "0001"
    spec = {"fn": "f", "nret": 2, "owner": "ab12cd34", "job": "01000000", "maxr": 3,
            "res": {"CPU": 1.0}}

    def lineage(attempt: int, **extra) -> bytes:
        return QueueEntry.from_fields({b"task": task.encode(), b"name": b"f",
                                       b"attempt": str(attempt).encode(),
                                       b"spec": msgpack.packb({**spec, **extra}), b"args": b""}).to_lineage()

    plan = _object_plane.plan_recovery(oid, lineage(0), owner_alive=True)
    assert plan.error is None and plan.shape == "CPU=1"
    assert plan.entry is not None and plan.entry.attempt == 1 and plan.entry.rebuild
    assert plan.entry.to_fields()["rebuild"] == "1"
    assert plan.siblings == (task + "0002",)
    assert _object_plane.plan_recovery(oid, lineage(7, maxr=-1), owner_alive=True).entry is not None
    assert isinstance(_object_plane.plan_recovery(oid, lineage(3), True).error,
                      exceptions.ObjectReconstructionFailedMaxAttemptsExceededError)
    no_retries = _object_plane.plan_recovery(oid, lineage(0, maxr=0), True).error
    assert type(no_retries) is exceptions.ObjectReconstructionFailedError
    put = task + "0000"
    assert type(_object_plane.plan_recovery(put, None, owner_alive=True).error) is exceptions.ObjectLostError
    assert type(_object_plane.plan_recovery(put, None, owner_alive=False).error) is exceptions.OwnerDiedError
    assert isinstance(_object_plane.plan_recovery(oid, None, True).error,
                      exceptions.ObjectReconstructionFailedLineageEvictedError)
    assert isinstance(_object_plane.plan_recovery(oid, msgpack.packb({"task": task}), True).error,
                      exceptions.ObjectReconstructionFailedLineageEvictedError)  # does not decode
