"""Objects across nodes: a task on one node reads an object that another node made; the
bytes move between the agents' object-transfer servers, never through Redis."""

from __future__ import annotations

import numpy as np
import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh.objects import shm as _shm
from taskmesh.store import Store


def _two_nodes(cluster) -> tuple[str, str]:
    a = cluster.add_node(num_cpus=2, resources={"a": 4})
    b = cluster.add_node(num_cpus=2, resources={"b": 4})
    return a, b


def test_a_task_reads_an_object_made_on_another_node(cluster_factory) -> None:
    with cluster_factory(nodes=0) as cluster:
        node_a, node_b = _two_nodes(cluster)
        taskmesh.init(address=cluster.url)
        store = Store(cluster.url)
        try:
            @taskmesh.remote(resources={"b": 1})
            def make(n):
                return np.arange(n, dtype=np.int64)

            @taskmesh.remote(resources={"a": 1})
            def total(x):
                return int(x.sum()), x.flags.writeable, taskmesh.get_runtime_context().get_node_id()

            ref = make.remote(3_000_000)
            taskmesh.wait([ref])
            meta = store.redis.hgetall(store.keys.obj(ref.hex()))
            assert meta[b"kind"] == b"shm" and meta[b"data"].split()[1] == node_b.encode()
            assert int(meta[b"size"]) >= 24_000_000

            assert taskmesh.get(total.remote(ref)) == (sum(range(3_000_000)), False, node_a)
            # node A now holds a copy too, recorded in the object's location set
            assert _shm.ShmStore.of_node(node_a).contains(ref.hex())
            assert store.redis.smembers(store.keys.obj_loc(ref.hex())) == {node_a.encode()}
            # several readers on A at once: all see the value; A keeps one copy
            refs = [total.remote(ref) for _ in range(6)]
            assert {r[0] for r in taskmesh.get(refs)} == {sum(range(3_000_000))}

            oid = ref.hex()
        finally:
            taskmesh.shutdown()
        try:
            # The ref was passed to tasks, so it lives as long as its owner: the driver's
            # shutdown frees it, and every node drops its copy.
            stores = [_shm.ShmStore.of_node(n) for n in (node_a, node_b)]
            wait_until(lambda: not any(s.contains(oid) for s in stores))
            assert not store.redis.exists(store.keys.obj(oid), store.keys.obj_loc(oid))
        finally:
            store.close()


def test_an_object_whose_only_holder_died_is_lost(cluster_factory) -> None:
    with cluster_factory(nodes=0) as cluster:
        node_a, node_b = _two_nodes(cluster)
        taskmesh.init(address=cluster.url)
        try:
            # max_retries=0: its task may not run again (see test_lineage.py), so the
            # loss is final (ObjectReconstructionFailedError, an ObjectLostError)
            @taskmesh.remote(resources={"b": 1}, max_retries=0)
            def make():
                return np.ones(1_000_000)

            @taskmesh.remote(resources={"a": 1}, max_retries=0)
            def total(x):
                return float(x.sum())

            ref = make.remote()
            taskmesh.wait([ref])
            cluster.kill_node(node_b)  # kill -9: its shared memory is gone with it
            with pytest.raises(exceptions.ObjectLostError):
                taskmesh.get(total.remote(ref), timeout=30)
        finally:
            taskmesh.shutdown()
