"""A node's object store under memory pressure: least recently used objects are spilled
to disk and restored on get; when nothing can be spilled, put fails with
ObjectStoreFullError after a bounded wait. (Separate from test_object_store.py: these
tests start their own agents on a flushed Redis.)"""

from __future__ import annotations

import os

import numpy as np
import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh.objects import shm as _shm
from test_object_store import MB


def test_full_store_spills_least_recently_used_and_restores_on_get(cluster_factory, tmp_path) -> None:
    spill = tmp_path / "spill"
    with cluster_factory(nodes=0) as cluster:
        node = cluster.add_node(num_cpus=1, object_store_memory=64 * MB, spill_dir=spill)
        taskmesh.init(address=cluster.url)
        try:
            shm = _shm.ShmStore.of_node(node)
            assert shm.config.capacity_bytes == 64 * MB
            refs = [taskmesh.put(np.full(2 * MB, i, dtype=np.float64)) for i in range(6)]  # 16 MB each
            usage = shm.usage()
            assert usage.used_bytes + usage.free_pool_bytes <= 64 * MB
            assert usage.spilled_objects >= 3 and shm.spill_dir is not None
            spilled = set(os.listdir(shm.spill_dir))
            assert refs[0].hex() in spilled  # the oldest went first
            for i, ref in enumerate(refs):  # restored transparently, in any order
                assert taskmesh.get(ref)[-1] == i
            oids = [r.hex() for r in refs]
            del refs, ref
            wait_until(lambda: not any(o in os.listdir(shm.spill_dir) for o in oids)
                       and not any(shm.contains(o) for o in oids))  # freed: spilled files too
        finally:
            taskmesh.shutdown()
    assert not any(spill.iterdir())  # the node's spill directory went with it


def test_put_fails_with_object_store_full_when_nothing_can_be_spilled(
        cluster_factory, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TASKMESH_OBJECT_STORE_FULL_WAIT_S", "0.5")  # the agent's setting
    with cluster_factory(nodes=0) as cluster:
        node = cluster.add_node(num_cpus=1, object_store_memory=40 * MB, spill_dir=tmp_path)
        taskmesh.init(address=cluster.url)
        try:
            shm = _shm.ShmStore.of_node(node)
            refs = [taskmesh.put(np.ones(2 * MB)) for _ in range(2)]
            held = [taskmesh.get(r) for r in refs]  # mapped: pinned
            with pytest.raises(exceptions.ObjectStoreFullError, match="full"):
                taskmesh.put(np.ones(2 * MB))
            with pytest.raises(exceptions.ObjectStoreFullError, match="object-store-memory"):
                taskmesh.put(np.ones(6 * MB))  # larger than the whole store
            assert not [n for n in os.listdir(shm.root) if n.endswith(_shm.PARTIAL)]
            del held  # unmapped: the older objects can be spilled now
            assert taskmesh.get(taskmesh.put(np.ones(2 * MB))).sum() == 2 * MB
            assert shm.usage().spilled_objects >= 1
        finally:
            taskmesh.shutdown()


@pytest.mark.cluster
def test_init_sizes_the_local_object_store_and_rejects_bad_sizes(redis_server) -> None:
    for bad in (-5, "1GB", True):
        with pytest.raises(ValueError, match="object_store_memory"):
            taskmesh.init(num_cpus=1, object_store_memory=bad)
    with pytest.raises(ValueError, match="object_store_memory"):  # only for a new cluster
        taskmesh.init(address=redis_server.url, object_store_memory=32 * MB)
    with taskmesh.init(num_cpus=1, object_store_memory=32 * MB) as ctx:
        shm = _shm.ShmStore.of_node(ctx.address_info["node_id"])
        assert shm is not None and shm.config.capacity_bytes == 32 * MB
