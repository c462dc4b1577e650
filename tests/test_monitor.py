"""The failure monitor: its pure decisions, its lease, settling a dead node's entries on
a real Redis, and kill -9 of a real agent whose task then runs on the other node."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import msgpack
import pytest

import taskmesh
from conftest import done_notices, wait_until
from taskmesh import objects
from taskmesh._base import queues
from taskmesh._base.wire import QueueEntry
from taskmesh._core import failure as _failure
from taskmesh.exceptions import WorkerCrashedError
from taskmesh.store import Store
from taskmesh.workers import monitor
from taskmesh.workers.monitor import MONITOR_CONSUMER, Action, Monitor

_wait_for = functools.partial(wait_until, timeout_s=20.0)


def _fields(maxr: int, attempt: int = 0, nret: int = 1, owner: str | None = None) -> dict[bytes, bytes]:
    owner = owner or objects.new_owner_tag()
    spec = {"fn": "f", "nret": nret, "owner": owner, "job": "00000001", "maxr": maxr}
    return {b"task": objects.new_task_id(owner).encode(), b"name": b"f",
            b"attempt": str(attempt).encode(), b"spec": msgpack.packb(spec, use_bin_type=True),
            b"args": b""}


def _actor_fields() -> dict[bytes, bytes]:
    """An actor's creation entry."""
    owner = objects.new_owner_tag()
    spec = {"fn": "C", "args": b"", "owner": owner, "job": "00000001", "cls": "C"}
    return {b"task": objects.new_task_id(owner).encode(), b"name": b"C.__init__", b"attempt": b"0",
            b"kind": b"actor", b"spec": msgpack.packb(spec, use_bin_type=True)}


def _entry(fields: dict[bytes, bytes]) -> QueueEntry:
    return QueueEntry.from_fields(fields)


# ---- pure decisions ---------------------------------------------------------------------

def test_stale_nodes_are_those_past_the_timeout_oldest_first() -> None:
    beats = {"fresh": 9_500, "edge": 8_000, "old": 7_999, "older": 1_000}
    assert monitor.stale_nodes(beats, now_ms=10_000, timeout_ms=2_000) == ["older", "old"]
    assert monitor.stale_nodes({}, now_ms=10_000, timeout_ms=2_000) == []


def test_dead_consumers_are_the_ones_without_a_live_node() -> None:
    consumers = {"CPU=1": {"a": 2, "b": 0, MONITOR_CONSUMER: 1}, "CPU=2": {"a": 1}, "none": {}}
    assert monitor.dead_consumers(consumers, alive={"a"}) == {"CPU=1": ["b"]}
    assert monitor.dead_consumers(consumers, alive=set()) == {"CPU=1": ["a", "b"], "CPU=2": ["a"]}


def test_a_workers_consumer_lives_and_dies_with_its_node() -> None:
    consumers = {"CPU=1": {"a": 0, queues.worker_consumer("a", 41): 1, queues.worker_consumer("b", 7): 1}}
    assert monitor.dead_consumers(consumers, alive={"a"}) == {"CPU=1": ["b:7"]}
    assert monitor.dead_consumers(consumers, alive=set()) == {"CPU=1": ["a", "a:41", "b:7"]}


@pytest.mark.parametrize(("maxr", "attempt", "action"), [
    (3, 0, Action.RETRY), (3, 2, Action.RETRY), (3, 3, Action.FAIL),
    (0, 0, Action.FAIL), (-1, 50, Action.RETRY),
])
def test_retry_while_attempts_remain(maxr: int, attempt: int, action: Action) -> None:
    assert monitor.decide(_entry(_fields(maxr, attempt))) is action


def test_actor_creation_entries_are_handed_back_not_judged() -> None:
    assert monitor.decide(_entry(_actor_fields())) is Action.HAND_BACK


def test_crash_completion_stores_worker_crashed_for_every_return() -> None:
    fields = _fields(maxr=1, attempt=1, nret=2)
    done = _failure.crash_completion(_entry(fields), "node n1 died")
    task_id = fields[b"task"].decode()
    assert [oid for oid, _, _ in done.objects] == [objects.object_id(task_id, 1),
                                                   objects.object_id(task_id, 2)]
    error = objects.deserialize(done.objects[0][2])
    assert isinstance(error, WorkerCrashedError)
    assert "node n1 died" in str(error) and "attempt 2 of 2" in str(error)


def test_node_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(monitor.ENV_NODE_TIMEOUT_MS, raising=False)
    assert monitor.node_timeout_from_env() == monitor.DEFAULT_NODE_TIMEOUT_MS
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")
    assert monitor.node_timeout_from_env() == 2000
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "soon")
    with pytest.raises(ValueError, match=monitor.ENV_NODE_TIMEOUT_MS):
        monitor.node_timeout_from_env()


# ---- the lease --------------------------------------------------------------------------

def test_one_monitor_holds_the_lease_until_it_stops_renewing(store: Store) -> None:
    first = Monitor(store, "node-a", node_timeout_ms=60_000, lease_ms=300)
    second = Monitor(store, "node-b", node_timeout_ms=60_000, lease_ms=300)
    first.tick()
    second.tick()
    assert (first.holding, second.holding) == (True, False)
    for _ in range(4):  # renewing keeps it past its first expiry
        time.sleep(0.1)
        first.tick()
        second.tick()
    assert (first.holding, second.holding) == (True, False)
    time.sleep(0.4)  # the holder stalls: its lease expires
    second.tick()
    first.tick()
    assert (first.holding, second.holding) == (False, True)
    assert store.redis.get(store.keys.monitor()) == b"node-b"
    first.release()  # releasing a lease it lost must not delete the successor's
    assert store.redis.get(store.keys.monitor()) == b"node-b"
    second.release()
    assert store.redis.get(store.keys.monitor()) is None


# ---- settling a dead node's entries on a real Redis -------------------------------------

def _lease_as(store: Store, node: str, entries: list[dict[bytes, bytes]]) -> None:
    store.register_shape("CPU=1")
    store.submit_tasks([("CPU=1", fields) for fields in entries])
    assert len(store.lease(store.redis, node, {"CPU=1": len(entries)}, None)) == len(entries)


def test_dead_node_entries_are_retried_failed_or_handed_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "CLAIM_MIN_IDLE_MS", 0)
    for node in ("dead", "live"):
        store.register_node(node, {"node_id": node, "state": "ALIVE"})
    store.redis.zadd(store.keys.nodes_alive(), {"dead": 1})
    retried, failed = _fields(maxr=2, attempt=1), _fields(maxr=0)
    actor = _actor_fields()
    _lease_as(store, "dead", [retried, failed, actor])
    _lease_as(store, "live", [_fields(maxr=0)])  # a long task on a live node: untouched

    Monitor(store, "live", node_timeout_ms=2_000).tick()

    queue = store.keys.queue("CPU=1")
    assert store.redis.hget(store.keys.node("dead"), "state") == b"DEAD"
    assert store.liveness(["CPU=1"]).consumers == {"CPU=1": {"live": 1, MONITOR_CONSUMER: 0}}
    requeued = store.lease(store.redis, "live", {"CPU=1": 10}, None)
    by_task = {e.fields[b"task"]: e.fields for e in requeued}
    assert by_task.keys() == {retried[b"task"], actor[b"task"]}
    assert by_task[retried[b"task"]][b"attempt"] == b"2"
    assert by_task[actor[b"task"]] == actor  # unchanged
    (kind, data), = store.get_objects([objects.object_id(failed[b"task"].decode(), 1)])
    assert kind == objects.KIND_ERROR
    assert "node dead died" in str(objects.deserialize(data))
    owner = msgpack.unpackb(failed[b"spec"])["owner"]
    assert len(done_notices(store, owner)) == 1
    assert store.redis.xlen(queue) == 3  # the two re-queued + the live node's


def test_entries_a_dead_monitor_had_claimed_are_settled_by_the_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [_fields(maxr=1) for _ in range(3)]
    _lease_as(store, "gone", entries)
    ids = store.pending_ids("CPU=1", "gone", 10)
    claimed = store.claim("CPU=1", ids, MONITOR_CONSUMER, 0)  # ...and then the monitor died
    assert len(claimed) == 3
    # the claim fences: an overlapping monitor cannot take the same entries right away
    assert store.claim("CPU=1", ids, MONITOR_CONSUMER, 1_000) == []
    monkeypatch.setattr(monitor, "CLAIM_MIN_IDLE_MS", 0)
    Monitor(store, "next", node_timeout_ms=2_000).tick()
    assert store.pending_ids("CPU=1", MONITOR_CONSUMER, 10) == []
    again = store.lease(store.redis, "other", {"CPU=1": 10}, None)
    assert sorted(e.fields[b"attempt"] for e in again) == [b"1"] * 3
    assert "gone" not in store.liveness(["CPU=1"]).consumers["CPU=1"]


def test_two_monitors_mark_a_node_dead_once(store: Store) -> None:
    store.register_node("n1", {"node_id": "n1", "state": "ALIVE"})
    store.redis.zadd(store.keys.nodes_alive(), {"n1": 1_000})
    assert store.mark_node_dead("n1", cutoff_ms=500, cause="x") is False  # heartbeat is newer
    assert store.mark_node_dead("n1", cutoff_ms=2_000, cause="x") is True
    assert store.mark_node_dead("n1", cutoff_ms=2_000, cause="x") is False


# ---- kill -9 of a real agent --------------------------------------------------------------

def _start_victim(tmp_path: Path, max_retries: int):
    record = tmp_path / "attempts"

    @taskmesh.remote(max_retries=max_retries)
    def victim(path: str) -> str:
        node = taskmesh.get_runtime_context().get_node_id()
        with open(path, "a") as f:
            f.write(f"{node} {os.getpid()}\n")
        if len(open(path).read().splitlines()) == 1:
            time.sleep(120)  # the first attempt dies with its node while it sleeps
        return node

    ref = victim.remote(str(record))
    lines = _wait_for(lambda: record.exists() and record.read_text().splitlines(), what="first attempt")
    return ref, record, lines[0].split()[0]


def test_task_of_a_killed_node_runs_again_on_the_other_node(
    cluster_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=2, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            ref, record, doomed = _start_victim(tmp_path, max_retries=3)
            (survivor,) = set(cluster.agents) - {doomed}
            cluster.kill_node(doomed)
            assert taskmesh.get(ref, timeout=60) == survivor
            assert [line.split()[0] for line in record.read_text().splitlines()] == [doomed, survivor]
            alive = {n["NodeID"]: n["Alive"] for n in taskmesh.nodes()}
            assert alive == {doomed: False, survivor: True}
            store = Store(cluster.url)
            try:  # the dead node's consumer does not accumulate
                _wait_for(lambda: doomed not in store.liveness(["CPU=1"]).consumers["CPU=1"],
                          what="the dead consumer to be deleted")
            finally:
                store.close()
        finally:
            taskmesh.shutdown()


def test_task_of_a_killed_node_without_retries_raises_worker_crashed(
    cluster_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=2, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            ref, record, doomed = _start_victim(tmp_path, max_retries=0)
            cluster.kill_node(doomed)
            with pytest.raises(WorkerCrashedError, match=f"node {doomed} died"):
                taskmesh.get(ref, timeout=60)
            assert len(record.read_text().splitlines()) == 1
        finally:
            taskmesh.shutdown()


def test_when_the_monitor_holder_dies_another_agent_takes_over(
    cluster_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=2, num_cpus=1) as cluster:
        store = Store(cluster.url)
        try:
            holder = _wait_for(lambda: store.redis.get(store.keys.monitor()), what="a holder").decode()
            (other,) = set(cluster.agents) - {holder}
            cluster.kill_node(holder)
            _wait_for(lambda: store.redis.get(store.keys.monitor()) == other.encode(),
                      timeout_s=30, what="the other agent to take the lease")
            _wait_for(lambda: store.redis.hget(store.keys.node(holder), "state") == b"DEAD",
                      timeout_s=30, what="the dead holder to be declared dead")
        finally:
            store.close()
