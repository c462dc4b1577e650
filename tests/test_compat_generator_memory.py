"""A generator whose items would exhaust memory is stopped with a clear error rather than
growing without bound. The worker holds a bounded number of bytes of items not yet
stored (the generator waits meanwhile), and items Redis refuses (maxmemory reached) end
the call with ObjectStoreFullError, Ray's error for an object that cannot be stored,
after the items that were stored."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import taskmesh
from conftest import start_cluster, wait_until
from taskmesh import objects
from taskmesh._base import config, ids
from taskmesh._base.wire import STREAMING_MODE
from taskmesh._core.generators import GeneratorRun, ItemSender
from taskmesh.exceptions import ObjectStoreFullError
from taskmesh.objects import KIND_ERROR, KIND_VALUE
from taskmesh.store import Store
from taskmesh.workers import launch

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ITEM_BYTES = 100 * 1024
LIMIT_BYTES = 1024 * 1024
OWNER = "d" * ids.OWNER_TAG_LEN  # the driver the items are for


class _GatedStore(Store):
    """A real store whose item writes wait for the test to open the gate: Redis that
    takes items slower than the generator yields them."""

    def __init__(self, url: str):
        super().__init__(url)
        self.gate = threading.Event()

    def complete_tasks(self, completions: Any, acks: Any, *args: Any, **kwargs: Any) -> Any:
        self.gate.wait()
        return super().complete_tasks(completions, acks, *args, **kwargs)


class _Encoder:
    """The part of the runtime a GeneratorRun uses: every item inline."""

    store = None

    def encode_value(self, object_id: str, value: Any) -> list:
        return [object_id, KIND_VALUE, objects.serialize(value)]

    def contains_refs(self, object_id: str, ids: Any = None) -> bool:
        return False

    def holds_refs(self, object_id: str) -> bool:
        return False


def test_worker_item_queue_is_bounded(redis_server: launch.RedisServer) -> None:
    store = _GatedStore(redis_server.url)
    store.redis.flushall()
    sender = ItemSender(store, limit_bytes=LIMIT_BYTES)
    task_id = ids.new_task_id(OWNER)
    run = GeneratorRun(_Encoder(), sender, mode=STREAMING_MODE, owner=OWNER,  # type: ignore[arg-type]
                       return_id=objects.object_id(task_id, 1), error_of=lambda e: b"")
    yielded = []

    def produce() -> Iterator[bytes]:
        for i in range(40):
            yielded.append(i)
            yield os.urandom(ITEM_BYTES)

    ended: list[list] = []
    producer = threading.Thread(target=lambda: ended.append(run.run(produce())))
    producer.start()
    try:
        # Nothing is stored while the gate is shut: the generator must stop yielding
        # once the worker holds more than the limit, far short of its 40 items.
        wait_until(sender.over_limit, what="the item queue to reach its limit")
        held = len(yielded)
        assert held < 40
        assert sender.held_bytes <= LIMIT_BYTES + 2 * ITEM_BYTES + 4096  # one item past it
        assert producer.is_alive() and len(yielded) == held
    finally:
        store.gate.set()
    producer.join(timeout=30)
    assert ended and ended[0][0][1] == KIND_VALUE  # it ended normally, every item stored
    assert len(yielded) == 40
    assert sender.high_water_bytes <= LIMIT_BYTES + 2 * ITEM_BYTES + 4096
    assert sender.held_bytes == 0
    stored = list(store.redis.scan_iter(match=store.keys.obj(task_id + "*"), count=1000))
    assert len(stored) == 40
    store.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_failed_item_store_is_the_generators_error(redis_server: launch.RedisServer, is_async: bool) -> None:
    """Unit view: items Redis refuses end the call with the error; no later item is
    stored after a lost one (the caller never sees a gap)."""

    class Refusing(Store):
        calls = 0

        def complete_tasks(self, completions: Any, acks: Any, *args: Any, **kwargs: Any) -> Any:
            Refusing.calls += 1
            if Refusing.calls >= 2:
                raise ObjectStoreFullError("Redis is out of memory (test)")
            return super().complete_tasks(completions, acks, *args, **kwargs)

    store = Refusing(redis_server.url)
    store.redis.flushall()
    sender = ItemSender(store, limit_bytes=LIMIT_BYTES)
    task_id = ids.new_task_id(OWNER)
    closed = []
    run = GeneratorRun(_Encoder(), sender, mode=STREAMING_MODE, owner=OWNER,  # type: ignore[arg-type]
                       return_id=objects.object_id(task_id, 1), error_of=lambda e: repr(e).encode())

    def produce() -> Iterator[int]:
        try:
            i = 0
            while True:  # only the failed store stops it
                yield i
                i += 1
                if i == 1:
                    sender.flush()  # the first item alone is stored
        finally:
            closed.append(True)

    async def produce_async() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
                if i == 1:
                    await asyncio.get_running_loop().run_in_executor(None, sender.flush)
        finally:
            closed.append(True)

    [(oid, kind, data)] = asyncio.run(run.run_async(produce_async())) if is_async else run.run(produce())
    assert kind == KIND_ERROR and b"ObjectStoreFullError" in data and b"out of memory" in data
    assert closed == [True]  # the generator itself was stopped (its finally ran)
    stored = list(store.redis.scan_iter(match=store.keys.obj(task_id + "*"), count=1000))
    assert stored == [store.keys.obj(objects.object_id(task_id, 2)).encode()]
    assert sender.failure(task_id) is None  # forgotten with the call's end
    store.close()


@pytest.mark.cluster
def test_generator_stopped_when_redis_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers send at most 512 KiB of items at a time: Redis takes batches while it has room.
    monkeypatch.setenv(config.GENERATOR_QUEUE_BYTES.name, str(512 * 1024))
    server = launch.start_redis(data_dir=tmp_path / "redis", extra_args=("--maxmemory", "8mb"))
    try:
        with start_cluster(server.url, tmp_path, nodes=1, num_cpus=1):
            taskmesh.init(address=server.url)
            try:
                _fill_redis_from_a_generator(server.url)
            finally:
                taskmesh.shutdown()
    finally:
        server.stop()


def _fill_redis_from_a_generator(url: str) -> None:
    @taskmesh.remote
    def produce():
        yield os.getpid()
        while True:  # small (inline) items, until Redis refuses them
            yield b"x" * 20_000

    @taskmesh.remote
    def small() -> int:
        return os.getpid()

    gen = produce.remote()
    refs = [next(gen)]
    worker_pid = taskmesh.get(refs[0])
    with pytest.raises(ObjectStoreFullError, match="maxmemory") as raised:
        for ref in gen:
            refs.append(ref)  # held: Redis keeps every item
            taskmesh.get(ref)
    assert "could not be stored" in str(raised.value)
    assert len(refs) > 20  # the items stored before Redis was full came through
    with pytest.raises(StopIteration):
        next(gen)
    del refs, gen, ref  # frees Redis
    probe = Store(url)
    wait_until(lambda: probe.redis.info("memory")["used_memory"] < 6 * 1024 * 1024,
               what="Redis to free the dropped items")
    probe.close()
    # The worker lived on: the same process runs the next task.
    assert taskmesh.get(small.remote(), timeout=30) == worker_pid


def test_caller_stops_a_generator_whose_untaken_items_pass_the_bound(
        cluster_factory: Any, redis_server: launch.RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller holds at most TASKMESH_GENERATOR_UNCONSUMED_BYTES of a call's items it
    has not taken: past that the call is stopped and, after the items that came, its
    caller gets an error naming the bound and `_generator_backpressure_num_objects`."""
    monkeypatch.setenv(config.GENERATOR_UNCONSUMED_BYTES.name, str(LIMIT_BYTES))
    with cluster_factory(nodes=1, num_cpus=1):
        taskmesh.init(address=redis_server.url)
        try:
            _stop_an_endless_generator()
        finally:
            taskmesh.shutdown()


def _stop_an_endless_generator() -> None:
    from taskmesh._core.context import get_runtime

    @taskmesh.remote
    def endless():
        yield os.getpid()
        while True:
            yield b"x" * ITEM_BYTES

    @taskmesh.remote
    def small() -> int:
        return os.getpid()

    gen = endless.remote()
    worker_pid = taskmesh.get(next(gen))
    runtime = get_runtime()
    task_id = gen.completed().task_id()
    wait_until(lambda: taskmesh.wait([gen.completed()], timeout=0)[0], timeout_s=30,
               what="the generator call stopped")
    count, held = runtime.stream_held(task_id)
    assert 0 < held <= LIMIT_BYTES + ITEM_BYTES + 1024  # the bound, plus the item past it
    assert count <= LIMIT_BYTES // ITEM_BYTES + 1
    taken = 0
    with pytest.raises(ObjectStoreFullError, match=config.GENERATOR_UNCONSUMED_BYTES.name) as raised:
        for ref in gen:
            assert len(taskmesh.get(ref)) == ITEM_BYTES
            taken += 1
    assert taken == count  # every item that came, then the error
    assert f"exceeded {LIMIT_BYTES} bytes" in str(raised.value)
    assert "_generator_backpressure_num_objects" in str(raised.value)
    assert runtime.stream_held(task_id) == (0, 0)
    # The worker lived on, free: the same process runs the next task.
    assert taskmesh.get(small.remote(), timeout=30) == worker_pid
