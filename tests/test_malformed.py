"""Entries written by hand into taskmesh's streams (redis-cli, another program) are moved
to the dead-letter stream with the reason; agents and actors keep serving."""

from __future__ import annotations

import msgpack

import taskmesh
from taskmesh._core import failure as _failure
from taskmesh.store import Store

from conftest import wait_until


def test_entry_problem_names_what_is_wrong() -> None:
    good = {b"task": b"ab12", b"name": b"f", b"attempt": b"0",
            b"spec": msgpack.packb({"fn": "x", "args": b"", "owner": "ab12cd34", "nret": 1})}
    assert _failure.entry_problem(good) is None
    assert "missing field 'spec'" in _failure.entry_problem({k: v for k, v in good.items() if k != b"spec"})
    assert "hex id" in _failure.entry_problem({**good, b"task": b"DROP TABLE"})
    assert "unreadable" in _failure.entry_problem({**good, b"attempt": b"first"})
    assert "not a msgpack map" in _failure.entry_problem({**good, b"spec": msgpack.packb([1, 2])})
    assert "'nret'" in _failure.entry_problem({**good, b"spec": msgpack.packb({"fn": "x", "args": b"", "owner": "o"})})
    call = {**good, b"spec": msgpack.packb({"m": "f", "args": b"", "owner": "ab12cd34", "nret": 1})}
    assert _failure.entry_problem(call, actor_call=True) is None
    assert "'m'" in _failure.entry_problem(good, actor_call=True)


def test_malformed_task_entries_go_to_the_dead_letter_stream(ray, shared_cluster) -> None:
    @ray.remote
    def double(x):
        return 2 * x

    assert ray.get(double.remote(1)) == 2  # the CPU=1 queue exists
    store = Store(shared_cluster.url)
    try:
        queue = store.keys.queue("CPU=1")
        store.redis.xadd(queue, {"hello": "world"})
        store.redis.xadd(queue, {"task": "abcd", "name": "x", "attempt": "0", "spec": "not msgpack"})
        wait_until(lambda: store.redis.xlen(store.keys.deadletter()) >= 2)
        reasons = [f[b"reason"].decode() for _, f in store.redis.xrange(store.keys.deadletter())]
        assert any("missing field" in r for r in reasons)
        assert any("unreadable" in r or "msgpack" in r for r in reasons)
        assert ray.get([double.remote(i) for i in range(5)]) == [0, 2, 4, 6, 8]  # still serving
        assert store.redis.xlen(queue) == 0  # nothing left behind in the queue
    finally:
        store.close()


def test_malformed_actor_calls_go_to_the_dead_letter_stream(ray, shared_cluster) -> None:
    @ray.remote
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    assert ray.get(echo.echo.remote("a")) == "a"
    store = Store(shared_cluster.url)
    try:
        before = store.redis.xlen(store.keys.deadletter())
        store.redis.xadd(store.keys.actor_calls(echo._actor_id), {"task": "zz"})
        wait_until(lambda: store.redis.xlen(store.keys.deadletter()) > before)
        assert ray.get(echo.echo.remote("b"), timeout=30) == "b"
    finally:
        store.close()
    taskmesh.kill(echo)
