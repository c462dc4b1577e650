"""The shared-memory object store on one node: large objects live in /dev/shm, Redis holds
only their size and node, numpy arrays come back zero-copy, and freeing leaves nothing."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from conftest import wait_until
from taskmesh import exceptions
from taskmesh.objects import shm as _shm
from taskmesh.store import Store

MB = 1024 * 1024


def shm_file_of(arr: np.ndarray) -> str | None:
    """The file mapping that holds the array's first byte in this process, if any."""
    address = arr.ctypes.data
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else None
    return None


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def node_store(ray) -> _shm.ShmStore:
    node_id = ray.get_runtime_context().get_node_id()
    store = _shm.ShmStore.of_node(node_id)
    assert store is not None, "the driver should use its node's shared memory"
    return store


@dataclasses.dataclass
class Holder:
    name: str
    weights: np.ndarray


def test_large_put_lives_in_shared_memory_and_redis_holds_only_its_location(ray, shared_cluster) -> None:
    arr = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    ref = ray.put(arr)
    store = Store(shared_cluster.url)
    try:
        meta = store.redis.hgetall(store.keys.obj(ref.hex()))
    finally:
        store.close()
    node_id = ray.get_runtime_context().get_node_id()
    assert meta[b"kind"] == b"shm"
    assert int(meta[b"size"]) >= arr.nbytes
    assert meta[b"data"].split() == [meta[b"size"], node_id.encode()]  # no payload in Redis
    assert node_store(ray).contains(ref.hex())

    small = ray.put(np.arange(10))
    assert not node_store(ray).contains(small.hex())  # small objects stay inline
    assert ray.get(small).tolist() == list(range(10))


def test_get_is_zero_copy_and_read_only(ray) -> None:
    arr = np.random.default_rng(0).random(2_000_000)
    ref = ray.put(arr)
    got = ray.get(ref)
    assert got.flags.writeable is False
    assert np.array_equal(got, arr)
    assert "/taskmesh-" in (shm_file_of(got) or "")
    with pytest.raises(ValueError):
        got[0] = 1.0


def test_nested_arrays_are_zero_copy(ray) -> None:
    a, b = np.ones(300_000), np.zeros((500, 500))
    ref = ray.put({"list": [a, "text"], "holder": Holder("w", b)})
    value = ray.get(ref)
    assert value["list"][1] == "text" and value["holder"].name == "w"
    for arr, want in ((value["list"][0], a), (value["holder"].weights, b)):
        assert arr.flags.writeable is False
        assert np.array_equal(arr, want)
        assert "/taskmesh-" in (shm_file_of(arr) or "")


def test_a_500_mb_get_makes_no_copy(ray) -> None:
    ref = ray.put(np.ones(500 * MB // 8))
    before = rss_anon_bytes()
    got = ray.get(ref)
    assert got.sum() == 500 * MB // 8  # every page read
    assert rss_anon_bytes() - before < 50 * MB  # mapped, not copied into private memory
    del got, ref


def test_task_arguments_and_returns_are_zero_copy_in_shared_memory(ray) -> None:
    @ray.remote
    def inspect(x):
        address = x.ctypes.data
        with open("/proc/self/maps") as maps:  # the file mapping holding the argument
            for line in maps:
                parts = line.split()
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= address < hi:
                    return x.flags.writeable, parts[-1], float(x.sum())
        return x.flags.writeable, "", float(x.sum())

    @ray.remote
    def make(n):
        return np.full(n, 2.0)

    arr = np.ones(1_000_000)
    writeable, path, total = ray.get(inspect.remote(arr))  # promoted to an object by .remote
    assert writeable is False and "/taskmesh-" in path and total == 1_000_000
    writeable, path, total = ray.get(inspect.remote(ray.put(arr)))
    assert writeable is False and "/taskmesh-" in path and total == 1_000_000

    made = ray.get(make.remote(500_000))
    assert made.flags.writeable is False and "/taskmesh-" in (shm_file_of(made) or "")
    assert made.sum() == 1_000_000.0


def test_freed_objects_leave_shared_memory_and_redis(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    shm = node_store(ray)
    try:
        ref = ray.put(np.ones(500_000))
        oid = ref.hex()
        assert shm.contains(oid)
        del ref
        wait_until(lambda: not shm.contains(oid) and not store.redis.exists(store.keys.obj(oid)))
    finally:
        store.close()


def test_a_mapped_object_survives_its_free(ray) -> None:
    ref = ray.put(np.arange(200_000, dtype=np.int64))
    oid = ref.hex()
    got = ray.get(ref)
    del ref
    shm = node_store(ray)
    wait_until(lambda: not shm.contains(oid))
    # The segment was unlinked, not reused: the array still reads its own values.
    filler = [ray.put(np.full(200_000, -1, dtype=np.int64)) for _ in range(3)]
    assert got[-1] == 199_999 and got.sum() == sum(range(200_000))
    del filler


def test_a_freed_but_mapped_object_counts_until_its_reader_lets_go(ray) -> None:
    shm = node_store(ray)
    shm.reclaim_held()  # what earlier tests' readers let go of
    ref = ray.put(np.ones(MB))
    oid = ref.hex()
    got = ray.get(ref)
    del ref
    wait_until(lambda: any(n.startswith(oid) for n in os.listdir(shm.held_dir)))
    (held,) = [n for n in os.listdir(shm.held_dir) if n.startswith(oid)]
    assert os.path.getsize(shm.held_dir / held) >= 8 * MB
    assert shm.usage().used_bytes >= 8 * MB  # the reader still maps it: still in use
    shm.reclaim_held()
    assert (shm.held_dir / held).exists()  # not reclaimed while it is mapped
    assert got.sum() == MB
    del got
    assert shm.reclaim_held() >= 8 * MB
    assert not (shm.held_dir / held).exists()


def test_put_get_del_cycles_leak_nothing(ray, shared_cluster) -> None:
    store = Store(shared_cluster.url)
    shm = node_store(ray)
    try:
        def object_keys() -> int:  # objects and their location/holder/nested keys
            return sum(1 for _ in store.redis.scan_iter(match=store.keys.all_objects(), count=1000))

        keys_before = object_keys()
        objects_before = shm.usage().objects
        arr = np.ones(10 * MB // 8)
        for _ in range(1000):
            ref = ray.put(arr)
            assert ray.get(ref)[0] == 1.0
            del ref
        wait_until(lambda: shm.usage().objects == objects_before, timeout_s=30)
        wait_until(lambda: object_keys() <= keys_before, timeout_s=30)
        assert shm.usage().free_pool_bytes <= _shm.FREE_POOL_BYTES
    finally:
        store.close()


def test_unserializable_value_raises_naming_its_type_and_leaves_nothing(ray, shared_cluster) -> None:
    import threading

    shm = node_store(ray)
    store = Store(shared_cluster.url)
    try:
        def object_keys() -> set[bytes]:
            return set(store.redis.scan_iter(match=store.keys.all_objects(), count=1000))

        before_keys, before_objects = object_keys(), shm.usage().objects
        with pytest.raises(TypeError, match="lock"):
            ray.put([np.ones(200_000), threading.Lock()])
        assert object_keys() <= before_keys
        assert shm.usage().objects == before_objects
        assert not [n for n in os.listdir(shm.root) if n.endswith(_shm.PARTIAL)]
    finally:
        store.close()


def test_a_corrupt_segment_is_reported_not_crashed_on(ray) -> None:
    ref = ray.put(np.ones(300_000))
    path = node_store(ray).path(ref.hex())
    os.truncate(path, 1000)
    with pytest.raises(exceptions.RaySystemError, match="corrupt"):
        ray.get(ref)
    os.unlink(path)
    with pytest.raises(exceptions.ObjectLostError):
        ray.get(ref)
    assert ray.get(ray.put(np.ones(3))).sum() == 3.0  # the driver goes on


def test_memory_command_shows_usage_per_node_and_the_largest_objects(ray, shared_cluster) -> None:
    from click.testing import CliRunner

    from taskmesh.cli import main

    big = ray.put(np.ones(3 * MB // 8))
    small = ray.put("tiny")
    node_id = ray.get_runtime_context().get_node_id()
    store = Store(shared_cluster.url)
    try:
        wait_until(lambda: int(store.redis.hget(store.keys.node(node_id), "store_used") or 0) >= 3 * MB)
    finally:
        store.close()
    result = CliRunner().invoke(main, ["memory", "--address", shared_cluster.url, "--top", "5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    node_line = next(line for line in lines if line.startswith(node_id))
    assert float(node_line.split()[1].removesuffix("Mi")) >= 3.0
    big_line = next(line for line in lines if big.hex() in line)
    assert "shm" in big_line and node_id in big_line and big.hex()[:8] in big_line
    assert any(small.hex() in line and "value" in line for line in lines)
