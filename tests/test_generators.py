"""Generator tasks and actor methods: `num_returns="streaming"` (an ObjectRefGenerator
yielding refs as the remote generator yields) and the deprecated "dynamic". Most tests
follow the examples of Ray's generator documentation."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import taskmesh
from conftest import wait_until
from taskmesh.exceptions import RayTaskError, WorkerCrashedError
from taskmesh.store import Store

# Workers cannot import this module: its helpers and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def store(shared_cluster):
    s = Store(shared_cluster.url)
    yield s
    s.close()


def _object_keys(store: Store, task_id: str) -> list[bytes]:
    return list(store.redis.scan_iter(match=store.keys.obj(task_id + "*"), count=1000))


def _write_atomically(path: str, text: str) -> None:
    """Replace the file at once, so a reader polling it never sees it half-written."""
    Path(path + ".tmp").write_text(text)
    os.replace(path + ".tmp", path)


def _wait_for_file(path: str) -> None:
    """A signal from the driver (a generator waits here after a yield)."""
    while not os.path.exists(path):
        time.sleep(0.005)


# ---- tasks ----------------------------------------------------------------------------


def test_streaming_generator_doc_example(ray) -> None:
    @ray.remote
    def task():
        for i in range(5):
            time.sleep(0.01)
            yield i

    gen = task.remote()  # a generator function streams by default, as in Ray
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert [ray.get(ref) for ref in gen] == [0, 1, 2, 3, 4]
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.is_finished()
    assert ray.get(gen.completed()) == 5  # the generator ref: the task is done

    @ray.remote(num_returns="streaming")
    def explicit(n):
        yield from range(n)

    assert [ray.get(ref) for ref in explicit.remote(3)] == [0, 1, 2]
    assert [ray.get(ref) for ref in explicit.options(num_returns="streaming").remote(0)] == []


def test_the_first_item_arrives_before_the_generator_finishes(ray, tmp_path: Path) -> None:
    signal = str(tmp_path / "go")

    @ray.remote
    def waits_after_first(path):
        yield "first"
        _wait_for_file(path)  # only the driver, having seen "first", lets it go on
        yield "second"

    gen = waits_after_first.remote(signal)
    assert ray.get(next(gen)) == "first"
    assert not gen.next_ready()
    Path(signal).touch()
    assert ray.get(next(gen)) == "second"
    with pytest.raises(StopIteration):
        next(gen)


def test_an_exception_surfaces_at_its_item_then_iteration_stops(ray) -> None:
    # Ray's doc example: items before the failure resolve, the failing item raises.
    @ray.remote
    def task():
        for i in range(5):
            if i == 1:
                raise ValueError("bad input")
            yield i

    gen = task.remote()
    assert ray.get(next(gen)) == 0
    failing = next(gen)
    with pytest.raises(ValueError, match="bad input") as info:
        ray.get(failing)
    assert isinstance(info.value, RayTaskError)
    with pytest.raises(StopIteration):
        next(gen)
    assert ray.get(gen.completed()) == 2  # the task itself finished


def test_async_for_over_a_generator_in_driver_asyncio_code(ray, tmp_path: Path) -> None:
    signal = str(tmp_path / "go")

    @ray.remote
    def task(path):
        yield 1
        _wait_for_file(path)
        yield from range(2, 5)

    async def consume() -> list[int]:
        out = []
        async for ref in task.remote(signal):
            out.append(await ref)
            if len(out) == 1:
                Path(signal).touch()  # the first item came while the task still ran
        return out

    assert asyncio.run(consume()) == [1, 2, 3, 4]


def test_large_items_go_through_shared_memory(ray, store) -> None:
    @ray.remote
    def arrays(n):
        for i in range(n):
            yield np.full(300_000, i, dtype=np.float64)  # 2.4 MB each
        yield "small"

    gen = arrays.remote(3)
    refs = list(gen)
    kinds = [store.redis.hget(store.keys.obj(r.hex()), "kind") for r in refs]
    assert kinds == [b"shm", b"shm", b"shm", b"value"]
    values = ray.get(refs)
    assert [float(v[0]) for v in values[:3]] == [0.0, 1.0, 2.0] and values[3] == "small"
    assert not values[0].flags.writeable  # mapped from shared memory, not copied


def test_items_are_freed_when_their_refs_and_the_generator_are_dropped(ray, store) -> None:
    @ray.remote
    def task(n):
        yield from (np.full(50_000, i) for i in range(n))

    gen = task.remote(4)
    task_id = gen.completed().task_id()
    first = next(gen)
    assert ray.get(first)[0] == 0
    done = gen.completed()
    wait_until(lambda done=done: ray.get(done) == 4, what="the generator to finish")
    del done
    assert len(_object_keys(store, task_id)) == 5  # 4 items + the generator ref
    del first
    wait_until(lambda: len(_object_keys(store, task_id)) == 4, what="the consumed item freed")
    del gen  # items never taken go with the generator
    wait_until(lambda: not _object_keys(store, task_id), what="every item freed")


def test_a_generator_dropped_while_running_frees_later_items(ray, store, tmp_path: Path) -> None:
    signal = str(tmp_path / "go")

    @ray.remote
    def task(path):
        yield 0
        _wait_for_file(path)
        yield 1
        yield 2

    gen = task.remote(signal)
    task_id = gen.completed().task_id()
    assert ray.get(next(gen)) == 0
    del gen
    Path(signal).touch()
    wait_until(lambda: not _object_keys(store, task_id), what="items yielded after the drop freed")


def test_a_retried_generator_does_not_repeat_items(ray, tmp_path: Path) -> None:
    crashed, seen = str(tmp_path / "crashed"), str(tmp_path / "seen")

    @ray.remote(max_retries=1)
    def flaky(crashed, seen):
        yield from range(3)
        if not os.path.exists(crashed):
            _wait_for_file(seen)  # the driver took (and dropped) items 0..2
            Path(crashed).touch()
            os._exit(1)  # the worker dies; the retry yields 0..4 again
        yield 3
        yield 4

    out = []
    for ref in flaky.remote(crashed, seen):
        out.append(ray.get(ref))
        del ref
        if len(out) == 3:
            Path(seen).touch()
    assert out == [0, 1, 2, 3, 4]


def test_a_crashed_generator_ends_with_its_error(ray, tmp_path: Path) -> None:
    signal = str(tmp_path / "go")

    @ray.remote(max_retries=0)
    def dies(path):
        yield "before"
        _wait_for_file(path)
        os._exit(1)

    gen = dies.remote(signal)
    assert ray.get(next(gen)) == "before"
    Path(signal).touch()
    last = next(gen)  # as Ray: the generator ref, holding the system error
    assert last == gen.completed()
    with pytest.raises(WorkerCrashedError):
        ray.get(last)
    with pytest.raises(StopIteration):
        next(gen)


def test_few_redis_commands_per_item(ray, store) -> None:
    """Client round trips (MONITOR lists each; the commands scripts run inside are not
    round trips): at most one store per item (items yielded while one is sent go
    together) and one read of the owner's notices, whatever the timing."""
    @ray.remote
    def many(n):
        yield from range(n)

    assert sum(ray.get(list(many.remote(10)))) == 45  # warm: function exported, worker up
    seen: list[str] = []
    ready, stop = threading.Event(), threading.Event()

    def monitor() -> None:
        with store.redis.monitor() as m:
            ready.set()
            for command in m.listen():
                if stop.is_set():
                    return
                if command.get("client_type") != "lua":
                    seen.append(command["command"].split()[0].upper())

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    ready.wait(5)
    n = 300
    assert sum(ray.get(ref) for ref in many.remote(n)) == n * (n - 1) // 2
    used = len(seen)
    stop.set()
    store.redis.ping()  # wakes the monitor so that it returns
    thread.join(5)
    assert used <= 2 * n + 30, f"{used} Redis round trips for {n} items: {seen[:50]}"
    print(f"{used} round trips for {n} items")


def test_backpressure_pauses_the_generator_until_the_caller_takes_items(ray, store, tmp_path: Path) -> None:
    progress = tmp_path / "progress"

    @ray.remote(_generator_backpressure_num_objects=2)
    def task(path, n):
        for i in range(n):
            _write_atomically(path, str(i + 1))  # items yielded so far, this one included
            yield i

    def produced() -> int:
        return int(progress.read_text()) if progress.exists() else 0

    n, gen = 6, task.remote(str(progress), 6)
    task_id = gen.completed().task_id()
    out = []
    for taken in range(n):
        # It runs ahead of the caller by exactly 2 items, and no further.
        wait_until(lambda taken=taken: produced() == min(taken + 2, n), timeout_s=30,
                   what="the generator to pause")
        out.append(ray.get(next(gen)))
    assert out == list(range(n))
    with pytest.raises(StopIteration):
        next(gen)
    del gen
    wait_until(lambda: not store.redis.exists(store.keys.gen_consumed(task_id)), timeout_s=30,
               what="the count forgotten")

    # A paused generator whose caller drops it runs to its end (its items are freed).
    gen = task.options(_generator_backpressure_num_objects=1).remote(str(progress), 5)
    task_id = gen.completed().task_id()
    assert ray.get(next(gen)) == 0
    del gen
    wait_until(lambda: produced() == 5 and not _object_keys(store, task_id)
               and not store.redis.exists(store.keys.gen_consumed(task_id)), timeout_s=30,
               what="the rest run and freed")


def test_a_generator_cannot_be_passed_to_a_task(ray) -> None:
    @ray.remote
    def task():
        yield 1

    @ray.remote
    def consume(gen):
        return 0

    gen = task.remote()
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        consume.remote(gen)
    assert [ray.get(r) for r in gen] == [1]


def test_dynamic_generator_returns_a_ref_to_its_item_refs(ray, store) -> None:
    with pytest.warns(DeprecationWarning, match="dynamic"):
        @ray.remote(num_returns="dynamic")
        def split(array, chunk_size):
            for i in range(0, len(array), chunk_size):
                yield array[i:i + chunk_size]

    ref = split.remote(np.arange(10), 4)
    dynamic = ray.get(ref)
    assert isinstance(dynamic, ray.DynamicObjectRefGenerator) and len(dynamic) == 3
    refs = list(dynamic)
    assert [list(ray.get(r)) for r in refs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    task_id = ref.task_id()
    del ref, dynamic
    assert [len(ray.get(r)) for r in refs] == [4, 4, 2]  # the item refs keep them alive
    del refs
    wait_until(lambda: not _object_keys(store, task_id), what="the dynamic items freed")


def test_num_returns_streaming_needs_a_generator_function() -> None:
    def not_a_generator():
        return 1

    with pytest.raises(ValueError, match="generator"):
        taskmesh.remote(num_returns="streaming")(not_a_generator)
    with pytest.raises(ValueError, match="generator"):
        taskmesh.remote(not_a_generator).options(num_returns="streaming")


# ---- actors ---------------------------------------------------------------------------


@taskmesh.remote
class Producer:
    def __init__(self):
        self.calls = 0

    def gen(self, n, signal=None):
        self.calls += 1
        yield 0
        if signal:
            _wait_for_file(signal)
        yield from range(1, n)

    def fails(self):
        yield "ok"
        raise KeyError("missing")

    def count(self):
        return self.calls


@taskmesh.remote
class AsyncProducer:
    async def agen(self, n, signal=None):
        yield 0
        if signal:
            while not os.path.exists(signal):
                await asyncio.sleep(0.005)
        for i in range(1, n):
            await asyncio.sleep(0)
            yield i

    async def total_of(self, producer, n):
        """`async for` inside an async actor, over another actor's generator."""
        total = 0
        async for ref in producer.gen.remote(n):
            total += await ref
        return total

    async def ping(self):
        return "pong"


def test_sync_actor_generator_method_streams(ray, tmp_path: Path) -> None:
    signal = str(tmp_path / "go")
    actor = Producer.remote()
    gen = actor.gen.remote(4, signal)
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert ray.get(next(gen)) == 0
    Path(signal).touch()
    assert [ray.get(r) for r in gen] == [1, 2, 3]
    assert ray.get(actor.count.remote()) == 1

    failing = actor.fails.remote()
    assert ray.get(next(failing)) == "ok"
    with pytest.raises(KeyError):
        ray.get(next(failing))
    with pytest.raises(StopIteration):
        next(failing)


def test_async_actor_async_generator_streams(ray, tmp_path: Path) -> None:
    signal = str(tmp_path / "go")
    actor = AsyncProducer.remote()
    gen = actor.agen.remote(3, signal)
    assert ray.get(next(gen)) == 0
    assert ray.get(actor.ping.remote()) == "pong"  # the actor's loop is not blocked
    Path(signal).touch()
    assert [ray.get(r) for r in gen] == [1, 2]
    assert ray.get(actor.total_of.remote(Producer.remote(), 5)) == 10


def test_a_restarted_actor_retries_a_generator_call_without_repeating_items(ray, tmp_path: Path) -> None:
    crashed, seen = str(tmp_path / "crashed"), str(tmp_path / "seen")

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Flaky:
        def gen(self, crashed, seen):
            yield from range(3)
            if not os.path.exists(crashed):
                _wait_for_file(seen)  # the driver took (and dropped) items 0..2
                Path(crashed).touch()
                os._exit(1)  # the actor restarts and runs the call again
            yield 3
            yield 4

    out = []
    for ref in Flaky.remote().gen.remote(crashed, seen):
        out.append(ray.get(ref))
        del ref
        if len(out) == 3:
            Path(seen).touch()
    assert out == [0, 1, 2, 3, 4]


def test_backpressure_on_an_actor_generator_method(ray, tmp_path: Path) -> None:
    progress = tmp_path / "progress"

    @ray.remote
    class Reader:
        @ray.method(_generator_backpressure_num_objects=1)
        def lines(self, path, n):
            for i in range(n):
                _write_atomically(path, str(i + 1))
                yield i

    gen = Reader.remote().lines.remote(str(progress), 3)
    for taken in range(3):
        wait_until(lambda taken=taken: progress.exists() and int(progress.read_text()) == taken + 1,
                   what="the method to pause")
        assert ray.get(next(gen)) == taken
    with pytest.raises(StopIteration):
        next(gen)


def test_cancel_takes_a_generator(ray, tmp_path: Path) -> None:
    # As Ray: ray.cancel(generator) cancels the generator task; the items already
    # yielded stay readable, then the cancellation surfaces.
    from taskmesh.exceptions import TaskCancelledError

    never = str(tmp_path / "never")

    @ray.remote
    def endless(path):
        yield 0
        _wait_for_file(path)
        yield 1

    gen = endless.remote(never)
    assert ray.get(next(gen)) == 0
    ray.cancel(gen)
    with pytest.raises(TaskCancelledError):
        ray.get(next(gen))
