"""Lease grants: a worker sent a task from a shape queue goes on leasing that queue
itself, holding the task's resources, until the queue is empty; the agent is off the
path of those tasks. What must hold is what held when every task went through the agent:
a worker killed under a grant has its task retried (or failed), cancel reaches a task a
worker leased itself, an actor's creation leased under a grant is placed, and nothing
is left in the queues. The agent counts what it did in its node hash (runs_sent,
grants, grant_entries_settled, grant_adoptions), which is how these tests tell that the
path under test was taken."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh.store import Store


def _heartbeat_ms(store: Store, node_id: str) -> int:
    return next(n["last_heartbeat_ms"] for n in store.nodes() if n["node_id"] == node_id)


def _counters(store: Store, node_id: str) -> dict[str, int]:
    """The agent's lease counters once they include everything up to now: it writes
    them just before each heartbeat, so two heartbeats later the hash holds them."""
    now_ms = int(store.redis.time()[0] * 1000)
    wait_until(lambda: _heartbeat_ms(store, node_id) > now_ms + 1000, what="two heartbeats")
    fields = store.redis.hgetall(store.keys.node(node_id))
    names = ("runs_sent", "grants", "grant_entries_settled", "grant_entries_returned", "grant_adoptions")
    return {n: int(fields.get(n.encode(), 0)) for n in names}


def _queued(store: Store) -> int:
    return sum(store.redis.xlen(store.keys.queue(shape)) for shape in store.shapes())


@taskmesh.remote
def square(x: int) -> int:
    return x * x


@taskmesh.remote
def naps(x: int) -> int:
    time.sleep(0.02)
    return x


@taskmesh.remote(max_retries=1)
def dies_once(marker: str) -> str:
    """SIGKILLs its own worker the first time it runs (the marker file tells)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("ran")
        os.kill(os.getpid(), signal.SIGKILL)
    return "second attempt"


@taskmesh.remote(max_retries=0)
def always_dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@taskmesh.remote
def sleeps(marker: str) -> str:
    with open(marker, "a") as f:
        f.write("started\n")
    time.sleep(60)
    return "not cancelled"


@taskmesh.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n


def test_workers_lease_a_batch_themselves(cluster_factory) -> None:
    """1,000 tasks on 2 CPUs: the agent sends a handful, with grants; the workers lease
    the rest themselves, and every result is right."""
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            assert taskmesh.get([square.remote(i) for i in range(1000)]) == [i * i for i in range(1000)]
            store = Store(cluster.url)
            counters = _counters(store, cluster.started[0])
            assert 1 <= counters["grants"] <= counters["runs_sent"] <= 100, counters
            assert _queued(store) == 0
        finally:
            taskmesh.shutdown()


@taskmesh.remote
def marks_then_naps(marker: str) -> str:
    Path(marker).write_text("started")
    time.sleep(1.0)
    return "done"


def test_the_first_task_of_a_grant_reaches_its_caller_without_the_agent(
        cluster_factory, tmp_path: Path) -> None:
    """The task the agent sends with a grant is stored and acked by its worker, in the
    round trip of its first lease (Done with `stored` only tells the agent): its result
    reaches the caller while the agent is stopped, and its entry leaves the queue."""
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            assert taskmesh.get(square.remote(3)) == 9
            marker = tmp_path / "started"
            ref = marks_then_naps.remote(str(marker))
            wait_until(marker.exists, what="the task to start on its worker")
            agent = cluster.agents[cluster.started[0]]
            os.kill(agent.pid, signal.SIGSTOP)
            try:
                assert taskmesh.get(ref, timeout=30) == "done"
                store = Store(cluster.url)
                queue = store.keys.queue("CPU=1")
                assert store.redis.xlen(queue) == 0
                assert store.redis.xpending(queue, "agents")["pending"] == 0
            finally:
                os.kill(agent.pid, signal.SIGCONT)
            assert taskmesh.get(square.remote(4)) == 16  # the agent takes the worker back
        finally:
            taskmesh.shutdown()


def test_a_worker_killed_under_a_grant_has_its_task_retried(cluster_factory, tmp_path: Path) -> None:
    """On 1 CPU the first task of a batch is sent with a grant and its worker leases the
    rest, the killers included: the agent takes what the dead worker held (XCLAIM) and
    retries it (max_retries=1) or fails it with WorkerCrashedError (max_retries=0)."""
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            refs = [square.remote(i) for i in range(20)]
            retried = dies_once.remote(str(tmp_path / "marker"))
            failed = always_dies.remote()
            assert taskmesh.get(refs) == [i * i for i in range(20)]
            assert taskmesh.get(retried, timeout=60) == "second attempt"
            with pytest.raises(exceptions.WorkerCrashedError):
                taskmesh.get(failed, timeout=60)
            store = Store(cluster.url)
            assert _counters(store, cluster.started[0])["grant_entries_settled"] >= 1
            assert taskmesh.get(square.remote(7)) == 49  # the node still runs work
            wait_until(lambda: _queued(store) == 0, what="empty queues")
        finally:
            taskmesh.shutdown()


@pytest.mark.parametrize("force", [False, True])
def test_cancel_reaches_a_task_a_worker_leased_itself(cluster_factory, tmp_path: Path, force: bool) -> None:
    """The sleeper comes after a task sent with a grant on 1 CPU, so its worker leased it
    itself and the agent does not know it runs there: cancel still ends it (interrupted,
    or with force its worker killed), it is not run again, and the node goes on."""
    marker = tmp_path / "started"
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            first = square.remote(3)
            sleeper = sleeps.remote(str(marker))
            assert taskmesh.get(first) == 9
            wait_until(marker.exists, timeout_s=30, what="the sleeper to start")
            taskmesh.cancel(sleeper, force=force)
            with pytest.raises(exceptions.TaskCancelledError):
                taskmesh.get(sleeper, timeout=30)
            assert taskmesh.get(square.remote(4), timeout=30) == 16  # its CPU came back
            store = Store(cluster.url)
            counters = _counters(store, cluster.started[0])
            assert counters["runs_sent"] >= 1 and counters["grants"] >= 1
            assert marker.read_text().count("started") == 1  # not retried
            assert _queued(store) == 0
        finally:
            taskmesh.shutdown()


def test_an_actor_creation_leased_under_a_grant_is_placed(cluster_factory) -> None:
    """While both CPUs are held by granted workers busy with a batch, an actor's creation
    arrives in the same CPU=1 queue: a granted worker leases it and hands it to the agent
    (Adopt), which places the actor with that grant's CPU; the batch still completes on
    the other one, and the actor's CPU comes back when it is killed."""
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            before = [naps.remote(i) for i in range(100)]
            time.sleep(0.3)  # the batch is flushed and being leased under grants
            counter = Counter.options(num_cpus=1).remote()
            after = [naps.remote(i) for i in range(10)]
            assert taskmesh.get(before + after, timeout=60) == list(range(100)) + list(range(10))
            assert taskmesh.get([counter.add.remote() for _ in range(3)], timeout=30) == [1, 2, 3]
            store = Store(cluster.url)
            assert _counters(store, cluster.started[0])["grant_adoptions"] == 1
            assert taskmesh.available_resources().get("CPU", 0) == 1  # the actor holds one
            taskmesh.kill(counter)
            wait_until(lambda: taskmesh.available_resources().get("CPU", 0) == 2, timeout_s=30,
                       what="the actor's CPU back")
            assert taskmesh.get(square.remote(5), timeout=30) == 25
        finally:
            taskmesh.shutdown()


def test_an_entry_delivered_to_the_node_but_unknown_to_its_agent_is_taken_back(
        cluster_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry pending for the node in Redis that its agent does not know of (a read
    whose reply never arrived) is found by the agent's periodic comparison of the node's
    pending list with what it knows, and runs: it is not left until the node dies."""
    monkeypatch.setenv("TASKMESH_RECONCILE_S", "1")
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        node_id = cluster.started[0]
        agent = cluster.agents[node_id]
        taskmesh.init(address=cluster.url)
        try:
            store = Store(cluster.url)
            queue = store.keys.queue("CPU=0.5")  # a shape the agent does not read yet
            store.ensure_groups(["CPU=0.5"])
            agent.send_signal(signal.SIGSTOP)
            try:
                ref = square.options(num_cpus=0.5).remote(6)
                wait_until(lambda: store.redis.xlen(queue) == 1, what="the task queued")
                # Delivered to the node's consumer behind its agent's back.
                assert store.redis.xreadgroup("agents", node_id, {queue: ">"}, count=1)
            finally:
                agent.send_signal(signal.SIGCONT)
            assert taskmesh.get(ref, timeout=60) == 36
            wait_until(lambda: _queued(store) == 0, what="empty queues")
        finally:
            taskmesh.shutdown()


@taskmesh.remote
def slow_nap(seconds: float) -> str:
    time.sleep(seconds)
    return "slow"


def test_a_worker_dying_in_a_batch_fails_only_the_task_it_ran(cluster_factory) -> None:
    """Once tasks prove short a worker leases them a batch at a time. When it dies in one,
    its running slot tells the agent which entry it was running: that one fails
    (max_retries=0), the entries it leased after it go back unstarted and run, although
    they may not be retried either."""
    once = square.options(max_retries=0)
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            assert taskmesh.get([square.remote(i) for i in range(300)]) == [i * i for i in range(300)]
            store = Store(cluster.url)
            # All queued before the node leases any: the batch that holds the killer then
            # holds entries after it, whatever the timing of the submissions.
            node = cluster.started[0]
            stopped = [cluster.agents[node].pid, *cluster.worker_pids(node)]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                before = [once.remote(i) for i in range(5)]
                failed = always_dies.remote()
                after = [once.remote(i) for i in range(40)]
                wait_until(lambda: _queued(store) == 46, what="the 46 tasks queued")
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            assert taskmesh.get(before + after, timeout=60) == [i * i for i in range(5)] + [
                i * i for i in range(40)]
            with pytest.raises(exceptions.WorkerCrashedError):
                taskmesh.get(failed, timeout=60)
            counters = _counters(store, cluster.started[0])
            assert counters["grant_entries_returned"] >= 1, counters  # it held a batch
            wait_until(lambda: _queued(store) == 0, what="empty queues")
        finally:
            taskmesh.shutdown()


def test_a_long_task_hands_the_rest_of_its_batch_back(cluster_factory) -> None:
    """A batch is leased on the guess that tasks are short: a task that runs long gives
    the entries leased after it back, and another worker runs them meanwhile."""
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            assert taskmesh.get([square.remote(i) for i in range(300)]) == [i * i for i in range(300)]
            slow = slow_nap.remote(20.0)
            quick = [square.remote(i) for i in range(40)]
            ready, _ = taskmesh.wait(quick, num_returns=len(quick), timeout=15)
            assert len(ready) == len(quick)  # not held behind the slow one
            assert taskmesh.wait([slow], timeout=0)[0] == []
            taskmesh.cancel(slow, force=True)
        finally:
            taskmesh.shutdown()
