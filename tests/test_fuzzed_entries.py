"""Entries that are well-formed streams and msgpack but carry values no reader can use
(a shape that is not a shape, a spec without its job, a negative or huge num_returns,
an actor call whose arguments are not arguments), written by hand into a live cluster:
each goes to the dead-letter stream with a reason naming the field, or fails alone as
its caller's error. The node keeps running tasks and actor calls with the same worker
processes: no worker dies, none is started over and over. A poisoned member of the
shape set and a node hash holding garbage are left out by their readers."""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import psutil
import pytest
from click.testing import CliRunner

import taskmesh
from conftest import TestCluster, done_notices, wait_until
from taskmesh import objects
from taskmesh.cli import main as cli
from taskmesh.store import Store
from taskmesh.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _spec(owner: str, **changes: Any) -> bytes:
    """A task spec that decodes (until `changes`), for a function no one exported."""
    spec = {"fn": "f" * 40, "nret": 1, "owner": owner,
            "job": "01000000", "maxr": 0, "res": {"CPU": 1.0}, **changes}
    return msgpack.packb({k: v for k, v in spec.items() if v is not _DROP}, use_bin_type=True)


_DROP: Any = object()  # a field left out of a spec


def _entry(owner: str, spec: bytes, **fields: str) -> dict[str, Any]:
    return {"task": objects.new_task_id(owner), "name": "fuzzed", "attempt": "0", "spec": spec,
            "args": objects.serialize(([], {})), **fields}


def _reasons(store: Store, since: int) -> list[str]:
    return [f[b"reason"].decode() for _, f in store.redis.xrange(store.keys.deadletter())][since:]


def _live(pids: list[int]) -> list[int]:
    def live(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [p for p in pids if live(p)]


@pytest.fixture
def db(shared_cluster: TestCluster) -> Any:
    s = Store(shared_cluster.url)
    yield s
    s.close()


@pytest.fixture
def node(shared_cluster: TestCluster) -> str:
    return shared_cluster.started[0]


def _still_serving(ray: Any, node: str) -> None:
    """A pinned task, a task of a new shape, and an actor call run on the node."""

    @ray.remote
    def where() -> str:
        return taskmesh.get_runtime_context().get_node_id()

    @ray.remote
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

        def pid(self) -> int:
            return os.getpid()

    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    assert ray.get(pinned.remote(), timeout=30) == node
    assert ray.get(where.remote(), timeout=30) == node
    echo = Echo.remote()
    assert ray.get(echo.echo.remote("x"), timeout=30) == "x"
    pid = ray.get(echo.pid.remote(), timeout=30)
    taskmesh.kill(echo)
    # Gone before the next test counts the node's workers.
    wait_until(lambda: not _live([pid]), what="the actor's process to end")


def test_bad_task_specs_go_to_the_dead_letter_stream_and_no_worker_dies(
        ray: Any, shared_cluster: TestCluster, db: Store, node: str) -> None:
    @ray.remote
    def one() -> int:
        return 1

    assert ray.get(one.remote()) == 1  # the CPU=1 queue exists, workers are up
    workers = shared_cluster.worker_pids(node)
    before = db.redis.xlen(db.keys.deadletter())
    owner = objects.new_owner_tag()
    queue = db.keys.queue("CPU=1")
    bad = [
        ({"job": _DROP}, "job"),
        ({"job": _DROP, "maxr": -1}, "job"),  # was a crash loop: each retry killed a worker
        ({"maxc": "x"}, "maxc"),
        ({"maxr": -2}, "maxr"),
        ({"nret": -3}, "nret"),
        ({"nret": 2**40}, "nret"),  # more return ids than an object id can index
        ({"nret": 0, "gen": "s"}, "nret"),  # a generator call's one return is its generator
        ({"res": {"CPU": float("inf")}}, "res"),
    ]
    for changes, _ in bad:
        db.redis.xadd(queue, _entry(owner, _spec(owner, **changes)))
    wait_until(lambda: db.redis.xlen(db.keys.deadletter()) >= before + len(bad), timeout_s=20,
               what="the bad specs dead-lettered")
    reasons = _reasons(db, before)
    for changes, field in bad:
        assert any(f"'{field}'" in r for r in reasons), (changes, reasons)
    assert ray.get([one.remote() for _ in range(4)], timeout=30) == [1] * 4
    assert _live(workers) == workers  # none died: no crash, no loop of restarts
    _still_serving(ray, node)  # (its actor takes a worker of the pool, and dies with it)
    wait_until(lambda: db.redis.xlen(queue) == 0, what=f"an empty queue: {db.redis.xrange(queue)}")


def test_unreadable_retry_exceptions_fail_the_task_not_its_worker(
        ray: Any, shared_cluster: TestCluster, db: Store, node: str) -> None:
    """The function is unknown, so the task raises; its retry_exceptions do not unpickle.
    With max_retries -1 a worker that died deciding would have been the first of an
    endless series: the task's error is its result instead."""

    @ray.remote
    def one() -> int:
        return 1

    assert ray.get(one.remote()) == 1
    workers = shared_cluster.worker_pids(node)
    owner = objects.new_owner_tag()
    queue = db.keys.queue("CPU=1")
    for rexc in (b"not a pickle", objects.serialize(5)):
        db.redis.xadd(queue, _entry(owner, _spec(owner, maxr=-1, rexc=rexc)))
    def notices() -> list[bytes]:
        return done_notices(db, owner)

    wait_until(lambda: len(notices()) == 2, timeout_s=20, what="both tasks failed to their owner")
    for notice in notices():
        (_, kind, _), = msgpack.unpackb(notice)[1]
        assert kind == objects.KIND_ERROR
    time.sleep(1)  # a retry loop would show as new entries and dying workers meanwhile
    assert len(notices()) == 2
    assert _live(workers) == workers
    assert ray.get(one.remote(), timeout=30) == 1


def test_bad_shape_fields_in_a_node_queue_are_dead_lettered_and_the_node_serves_on(
        ray: Any, shared_cluster: TestCluster, db: Store, node: str) -> None:
    """The agent's lease thread used to raise on `shape=CPU=x` for ever, re-reading it as
    its own unacknowledged entry: the node stayed alive and ran nothing."""
    @ray.remote
    def one() -> int:
        return 1

    assert ray.get(one.remote()) == 1
    workers = shared_cluster.worker_pids(node)
    before = db.redis.xlen(db.keys.deadletter())
    owner = objects.new_owner_tag()
    queue = db.keys.node_queue(node)
    shapes = [b"CPU=x", b"CPU=-4", b"CPU=nan", b"\xff=1", None]  # None: no shape field at all
    for shape in shapes:
        extra = {} if shape is None else {"shape": shape, "soft": "0"}
        db.redis.xadd(queue, _entry(owner, _spec(owner), **extra))
    wait_until(lambda: db.redis.xlen(db.keys.deadletter()) >= before + len(shapes), timeout_s=20,
               what="the bad node-queue entries dead-lettered")
    reasons = _reasons(db, before)
    assert sum("'shape'" in r for r in reasons) == len(shapes), reasons
    assert _live(workers) == workers
    _still_serving(ray, node)
    assert db.redis.xlen(queue) == 0
    assert db.redis.xpending(queue, "agents")["pending"] == 0  # none held by the node


def test_a_poisoned_member_of_the_shape_set_is_left_out(
        ray: Any, shared_cluster: TestCluster, db: Store, node: str) -> None:
    """`SADD tm:shapes CPU=x` and a publish used to fail every agent's shape reload, so
    no new shape was ever leased."""
    for poison in ("CPU=x", "CPU=-1", "GPU"):
        db.redis.sadd(db.keys.shapes(), poison)
    db.redis.publish(db.keys.chan_shapes(), "CPU=x")
    assert not {"CPU=x", "CPU=-1", "GPU"} & set(db.shapes())

    @ray.remote(num_cpus=0.5)
    def half() -> str:
        return "half"

    @ray.remote(num_cpus=0.25)
    def quarter() -> str:
        return "quarter"

    assert ray.get(half.remote(), timeout=30) == "half"  # a shape announced after the poison
    assert ray.get(quarter.remote(), timeout=30) == "quarter"
    _still_serving(ray, node)
    db.redis.srem(db.keys.shapes(), "CPU=x", "CPU=-1", "GPU")


def test_bad_actor_calls_fail_alone_and_the_actor_serves_on(
        ray: Any, shared_cluster: TestCluster, db: Store) -> None:
    @ray.remote
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

        def pid(self) -> int:
            return os.getpid()

    echo = Echo.remote()
    pid = ray.get(echo.pid.remote(), timeout=30)
    before = db.redis.xlen(db.keys.deadletter())
    owner = objects.new_owner_tag()
    calls = db.keys.actor_calls(echo._actor_id)

    def call(args: bytes = objects.serialize((["a"], {})), **changes: Any) -> None:
        spec = {"m": "echo", "nret": 1, "owner": owner, "job": "01000000", **changes}
        db.redis.xadd(calls, {"task": objects.new_task_id(owner), "name": "Echo.echo", "attempt": "0",
                              "spec": msgpack.packb(spec, use_bin_type=True), "args": args})

    call(args=b"\x80\x05garbage")  # does not unpickle
    call(args=objects.serialize(5))  # not an (args, kwargs) pair
    call(nret=-3)
    call(nret=0, gen="s")
    call(nret=2**20)
    call(args=objects.serialize(([], {1: "not a keyword"})))  # fails in the call: its error
    call(m="no_such_method")  # Ray's AttributeError, as the call's result
    wait_until(lambda: db.redis.xlen(db.keys.deadletter()) >= before + 5, timeout_s=20,
               what="the bad calls dead-lettered")
    reasons = _reasons(db, before)
    assert sum("'args'" in r for r in reasons) == 2, reasons
    assert sum("'nret'" in r for r in reasons) == 3, reasons
    # Callers named by readable specs got errors: the two argument failures, the two calls.
    wait_until(lambda: len(done_notices(db, owner)) == 4, timeout_s=20,
               what="the callers' errors")
    assert ray.get(echo.echo.remote("b"), timeout=30) == "b"
    assert ray.get(echo.pid.remote(), timeout=30) == pid  # the same process: never restarted
    taskmesh.kill(echo)
    wait_until(lambda: not _live([pid]), what="the actor's process to end")


def test_garbage_in_a_node_hash_leaves_that_node_out(
        ray: Any, shared_cluster: TestCluster, db: Store, node: str) -> None:
    """`resources_total=notjson` used to make every new init() and `taskmesh status`
    fail; `obj_port=abc` every fetch that asked that node."""
    fake = os.urandom(8).hex()
    key = db.keys.node(fake)
    seconds, micros = db.redis.time()
    db.redis.hset(key, mapping={
        "node_id": fake, "ip": "127.0.0.1", "hostname": "elsewhere", "pid": "x", "obj_port": "abc",
        "state": "ALIVE", "start_ms": "1", "resources_total": "notjson",
        "resources_available": '{"CPU": "many"}'})
    db.redis.zadd(db.keys.nodes_alive(), {fake: seconds * 1000 + micros // 1000})
    try:
        taskmesh.shutdown()
        taskmesh.init(address=shared_cluster.url)  # a new driver
        listed = {n["NodeID"]: n for n in taskmesh.nodes()}
        assert listed[node]["Alive"] and not listed[fake]["Alive"]
        assert taskmesh.cluster_resources()["CPU"] == 2.0  # the live node's alone
        flagged = next(n for n in db.nodes() if n["node_id"] == fake)
        for field in ("resources_total", "resources_available", "pid"):
            assert f"'{field}'" in flagged["malformed"]
        result = CliRunner().invoke(cli, ["status", "--address", shared_cluster.url])
        assert result.exit_code == 0, (result.output, result.exception)
        assert node in result.output
        assert db.object_holders("ab" * 14, fake) == []  # not asked, not a ValueError
        _still_serving(ray, node)
    finally:
        db.redis.zrem(db.keys.nodes_alive(), fake)
        db.redis.delete(key)
