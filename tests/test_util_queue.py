"""taskmesh.util.queue.Queue on a real cluster, used the way Ray's docs use
`ray.util.queue.Queue`."""

from __future__ import annotations

import asyncio
import queue as stdlib_queue

import pytest

import taskmesh
from conftest import wait_until
from taskmesh._core.context import get_runtime
from taskmesh.util.queue import Empty, Full, Queue


def test_fifo_put_get_and_sizes(ray) -> None:
    q = Queue()
    assert q.empty() and not q.full() and q.size() == 0
    for i in range(10):
        q.put(i)
    assert q.size() == q.qsize() == len(q) == 10 and not q.empty()
    assert [q.get() for _ in range(10)] == list(range(10))
    q.put_nowait({"nested": [1, 2]})
    assert q.get_nowait() == {"nested": [1, 2]}
    assert q.empty()


def test_errors_are_the_stdlib_queue_exceptions() -> None:
    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)


def test_full_queue_raises_full_without_blocking_and_after_timeout(ray) -> None:
    q = Queue(maxsize=2)
    q.put(1)
    q.put(2, timeout=0)  # a free slot is taken even with a zero timeout
    assert q.full() and q.size() == 2
    with pytest.raises(Full, match="maxsize 2"):
        q.put(3, block=False)
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(Full, match="after waiting 0.2s"):
        q.put(3, timeout=0.2)
    assert [q.get(), q.get()] == [1, 2]  # the refused items were not added


def test_empty_queue_raises_empty_without_blocking_and_after_timeout(ray) -> None:
    q = Queue()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty, match="after waiting 0.2s"):
        q.get(timeout=0.2)
    q.put("x")
    assert q.get(timeout=5) == "x"


def test_blocked_put_resumes_when_a_get_makes_room(ray) -> None:
    q = Queue(maxsize=1)
    q.put("first")

    async def main():
        blocked = asyncio.ensure_future(q.put_async("second"))  # waits in the actor
        await asyncio.sleep(0.2)
        assert not blocked.done()
        assert await q.get_async() == "first"
        await asyncio.wait_for(blocked, 10)

    asyncio.run(main())
    assert q.get(timeout=10) == "second"


def test_batch_methods_are_all_or_nothing(ray) -> None:
    q = Queue(maxsize=5)
    q.put_nowait_batch(i for i in range(3))  # any iterable
    with pytest.raises(Full, match="Cannot add 3 items to queue of size 3 and maxsize 5"):
        q.put_nowait_batch([3, 4, 5])
    assert q.size() == 3
    with pytest.raises(Empty, match="Cannot get 4 items from queue of size 3"):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [0, 1]
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(1) == [2]
    unbounded = Queue(maxsize=-1)  # as Ray and asyncio.Queue: <= 0 means no limit
    unbounded.put_nowait_batch(range(100))
    assert unbounded.size() == 100 and not unbounded.full()


@pytest.mark.parametrize("call, exc, match", [
    (lambda q: q.put(1, timeout=-1), ValueError, "'timeout' must be a non-negative number"),
    (lambda q: q.get(timeout=-0.5), ValueError, "'timeout' must be a non-negative number"),
    (lambda q: q.get(timeout="1"), TypeError, "'timeout'"),
    (lambda q: q.put_nowait_batch(5), TypeError, "Argument 'items' must be an Iterable"),
    (lambda q: q.get_nowait_batch("2"), TypeError, "Argument 'num_items' must be an int"),
    (lambda q: q.get_nowait_batch(-1), ValueError, "'num_items' must be nonnegative"),
    (lambda q: q.shutdown(grace_period_s=-1), ValueError, "'grace_period_s'"),
])
def test_bad_arguments(ray, call, exc, match) -> None:
    q = Queue()
    with pytest.raises(exc, match=match):
        call(q)
    with pytest.raises(TypeError, match="'maxsize'"):
        Queue(maxsize="10")
    with pytest.raises(TypeError, match="'actor_options'"):
        Queue(actor_options=[("num_cpus", 1)])


def test_async_put_and_get_from_the_driver(ray) -> None:
    q = Queue(maxsize=1)

    async def main():
        await q.put_async("a")
        with pytest.raises(Full):
            await q.put_async("b", block=False)
        with pytest.raises(Full):
            await q.put_async("b", timeout=0.1)
        assert await q.get_async() == "a"
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        getter = asyncio.ensure_future(q.get_async(timeout=10))
        await q.put_async("c")
        return await getter

    assert asyncio.run(main()) == "c"


def test_async_put_and_get_inside_an_async_actor(ray) -> None:
    @taskmesh.remote
    class Relay:
        async def relay(self, source, sink, n):
            for _ in range(n):
                await sink.put_async(2 * await source.get_async(timeout=10))
            return n

    source, sink = Queue(), Queue()
    relay = Relay.remote()
    relayed = relay.relay.remote(source, sink, 3)
    source.put_nowait_batch([1, 2, 3])
    assert taskmesh.get(relayed, timeout=30) == 3
    assert sink.get_nowait_batch(3) == [2, 4, 6]


def test_producer_tasks_and_a_consumer_actor_share_one_queue(ray) -> None:
    @taskmesh.remote
    def produce(q, worker, n):
        for i in range(n):
            q.put((worker, i))
        return n

    @taskmesh.remote
    class Consumer:
        def consume(self, q, n):
            return [q.get(timeout=20) for _ in range(n)]

    q = Queue(maxsize=4)  # small: producers wait for the consumer to make room
    consumed = Consumer.remote().consume.remote(q, 20)
    produced = [produce.remote(q, w, 10) for w in range(2)]
    assert taskmesh.get(produced, timeout=30) == [10, 10]
    items = taskmesh.get(consumed, timeout=30)
    assert sorted(items) == [(w, i) for w in range(2) for i in range(10)]
    for w in range(2):  # each producer's items arrive in the order it put them
        assert [i for worker, i in items if worker == w] == list(range(10))
    assert q.empty()


def _actor_state(actor) -> str | None:
    return get_runtime().store.actor_info(actor._actor_id).get("state")


@pytest.mark.parametrize("force", [False, True])
def test_shutdown_kills_the_actor_then_use_raises_a_clear_error(ray, force) -> None:
    @taskmesh.remote
    def take(q):
        return q.get()

    q = Queue()
    blocked = take.remote(q)  # a consumer waiting on the empty queue
    ready, _ = taskmesh.wait([blocked], timeout=0.2)
    assert ready == []
    actor = q.actor
    q.shutdown(force=force, grace_period_s=10)
    assert q.actor is None
    if force:  # returns at once; the kill lands shortly after
        wait_until(lambda: _actor_state(actor) == "DEAD")
    assert _actor_state(actor) == "DEAD"
    with pytest.raises(taskmesh.exceptions.RayActorError):
        taskmesh.get(actor.qsize.remote(), timeout=30)
    with pytest.raises(taskmesh.exceptions.RayActorError):
        taskmesh.get(blocked, timeout=30)  # the waiting consumer fails instead of hanging
    for use in (q.get, lambda: q.put(2), q.size, q.empty, lambda: q.get_nowait_batch(1)):
        with pytest.raises(RuntimeError, match="Queue has been shut down"):
            use()
    q.shutdown()  # a second shutdown does nothing
