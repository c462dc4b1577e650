"""A lease read that only waits on queues needing no room (a 0-CPU actor's or task's
shape) must be woken when a CPU frees up, or every task waits for the read to time out
(a live 0-CPU actor once cut task throughput ~10x, and it stayed slow after its handle
was dropped, since the 0-CPU queue stays known)."""

from __future__ import annotations

import taskmesh
from conftest import wait_until
from taskmesh import scheduler
from taskmesh.store import Store


def test_a_read_that_leaves_out_a_queue_with_room_is_woken() -> None:
    # Blocked on the 0-CPU queue alone while the CPUs were busy; a CPU frees up.
    assert scheduler.read_left_out({"none"}, {"none": 16, "CPU=1": 1})
    # The read already waits on the CPU queue: more room needs no wake-up.
    assert not scheduler.read_left_out({"none", "CPU=1"}, {"none": 16, "CPU=1": 2})
    assert not scheduler.read_left_out({"CPU=1"}, {"CPU=1": 3})
    # A bundle of a placement group got room its blocked read left out.
    assert scheduler.read_left_out({"CPU=1"}, {"CPU=1": 1, "pg:ab:0": 1})


@taskmesh.remote
def noop() -> int:
    return 0


@taskmesh.remote(num_cpus=0)
class ZeroCpu:
    def ping(self) -> int:
        return 0


def _heartbeat_ms(store: Store, node_id: str) -> int:
    return next(n["last_heartbeat_ms"] for n in store.nodes() if n["node_id"] == node_id)


def _missed_wakes(store: Store, node_id: str) -> int:
    return int(store.redis.hget(store.keys.node(node_id), "lease_missed_wakes") or 0)


def test_tasks_beside_a_zero_cpu_actor_wake_the_lease_read(cluster_factory) -> None:
    """With the actor alive, the agent's read waits on the 0-CPU queue whenever the CPU
    is busy. The agent counts the reads left to time out although a queue they left out
    got room (its node hash's `lease_missed_wakes`): with every such read woken, it stays
    at zero through a batch of tasks (it used to grow with every task)."""
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            actor = ZeroCpu.remote()
            assert taskmesh.get(actor.ping.remote()) == 0
            assert taskmesh.get([noop.remote() for _ in range(200)]) == [0] * 200
            store = Store(cluster.url)
            node_id = taskmesh.nodes()[0]["NodeID"]
            # The agent writes the counter just before each heartbeat: two heartbeats
            # after the batch, the hash holds its count from after the batch.
            done_ms = int(store.redis.time()[0] * 1000)
            wait_until(lambda: _heartbeat_ms(store, node_id) > done_ms + 1000,
                       what="two heartbeats after the batch")
            assert _missed_wakes(store, node_id) == 0
            store.close()
        finally:
            taskmesh.shutdown()
