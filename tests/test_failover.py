"""Failures: actors on a killed node are recovered by the monitor; a node declared dead stays dead."""

from __future__ import annotations

import time

import pytest

import taskmesh
from conftest import wait_until
from taskmesh.exceptions import ActorDiedError, RayActorError
from taskmesh.workers import monitor


def _node_of(handle) -> str:
    return taskmesh.get(handle.where.remote(), timeout=30)


def _kill_node_and_wait(cluster, node: str, handle) -> None:
    """SIGKILL the node's agent and wait until the actor's process died with it (it
    may still answer for the few milliseconds that takes)."""
    import psutil

    pid = int(taskmesh.api.get_runtime().store.actor_info(handle._actor_id)["pid"])
    cluster.kill_node(node)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the actor's worker outlived its agent"
        time.sleep(0.02)


@taskmesh.remote
class Keeper:
    def __init__(self):
        self.calls = 0

    def where(self):
        self.calls += 1
        return taskmesh.get_runtime_context().get_node_id()

    def count(self):
        return self.calls


def test_actor_of_a_killed_node_restarts_on_another_node(cluster_factory, monkeypatch) -> None:
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=2, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            # max_task_retries: a call that reaches Redis before Redis notices the dead
            # connection is delivered to the dead process, so it is in flight, not lost.
            keeper = Keeper.options(max_restarts=1, max_task_retries=1).remote()
            doomed = _node_of(keeper)
            (survivor,) = set(cluster.agents) - {doomed}
            _kill_node_and_wait(cluster, doomed, keeper)
            assert taskmesh.get(keeper.where.remote(), timeout=60) == survivor
            assert taskmesh.get(keeper.count.remote(), timeout=30) == 1  # __init__ ran again
            info = taskmesh.api.get_runtime().store.actor_info(keeper._actor_id)
            assert info["state"] == "ALIVE" and info["restarts"] == "1"
        finally:
            taskmesh.shutdown()


def test_actor_of_a_killed_node_without_restarts_dies(cluster_factory, monkeypatch) -> None:
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=2, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            keeper = Keeper.remote()
            doomed = _node_of(keeper)
            _kill_node_and_wait(cluster, doomed, keeper)
            deadline = time.monotonic() + 60
            store = taskmesh.api.get_runtime().store
            while store.actor_info(keeper._actor_id).get("state") != "DEAD":
                assert time.monotonic() < deadline, "the actor was never declared dead"
                time.sleep(0.1)
            with pytest.raises(ActorDiedError, match="died") as info:
                taskmesh.get(keeper.where.remote(), timeout=30)
            assert isinstance(info.value, RayActorError)
        finally:
            taskmesh.shutdown()


def test_a_node_declared_dead_does_not_come_back(cluster_factory) -> None:
    """Fencing: once the monitor handed a node's work to others, that node's agent must
    not keep leasing; when its heartbeat finds it DEAD, it exits."""
    from taskmesh.store import Store

    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        (node,) = cluster.agents
        store = Store(cluster.url)
        try:
            store.redis.hset(store.keys.node(node), "state", "DEAD")  # as mark_node_dead does
            proc = cluster.agents[node]
            deadline = time.monotonic() + 15
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the dead node's agent kept running"
                time.sleep(0.05)
            assert store.heartbeat(node, None) == -1
        finally:
            store.close()


@pytest.mark.cluster
def test_a_redis_restart_loses_no_acknowledged_task(tmp_path) -> None:
    """Redis is killed (kill -9) with tasks queued, running and done, and restarted
    from its append-only file on the same port: every task still completes, and the
    cluster keeps working (clients reconnect by themselves)."""
    import psutil

    from conftest import TestCluster, assert_no_leaked_children
    from taskmesh.workers.launch import start_redis

    before = {c.pid for c in psutil.Process().children(recursive=True)}
    data = tmp_path / "redis"
    fsync = ("--appendfsync", "always")
    server = start_redis(data_dir=data, persistent=True, extra_args=fsync)
    cluster = TestCluster(server.url, tmp_path)
    try:
        cluster.add_node(num_cpus=2)
        taskmesh.init(address=server.url)
        try:
            @taskmesh.remote
            def slow(i):
                time.sleep(0.02)
                return i

            counter = Keeper.remote()
            taskmesh.get(counter.where.remote(), timeout=30)
            refs = [slow.remote(i) for i in range(150)]
            time.sleep(0.5)
            server.proc.kill()
            server.proc.wait()
            time.sleep(0.5)
            server = start_redis(data_dir=data, port=server.port, persistent=True, extra_args=fsync)
            assert taskmesh.get(refs, timeout=120) == list(range(150))
            assert taskmesh.get(slow.remote(7), timeout=60) == 7
            assert taskmesh.get(counter.count.remote(), timeout=60) == 1  # actor state kept
            # The agent still hears announcements (its pub/sub listener reconnected):
            # a task of a shape that did not exist before runs.
            assert taskmesh.get(slow.options(num_cpus=0.5).remote(8), timeout=60) == 8
        finally:
            taskmesh.shutdown()
    finally:
        cluster.stop()
        server.stop()
    assert_no_leaked_children(before)


def test_refs_held_on_a_dead_node_are_released_by_the_monitor(cluster_factory, monkeypatch) -> None:
    """An actor on node B borrows a ref; B is killed (kill -9): once the monitor declares
    it dead, the borrow is released, so the object is freed when the driver drops it."""
    import numpy as np

    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, "2000")

    @taskmesh.remote
    class Holder:
        def keep(self, refs):
            self.refs = refs
            return taskmesh.get_runtime_context().get_node_id()

    with cluster_factory(nodes=0) as cluster:
        cluster.add_node(num_cpus=1, resources={"a": 1})
        node_b = cluster.add_node(num_cpus=1, resources={"b": 1})
        taskmesh.init(address=cluster.url)
        store = taskmesh.api.get_runtime().store
        try:
            holder = Holder.options(resources={"b": 1}).remote()
            ref = taskmesh.put(np.ones(100_000))
            oid = ref.hex()
            assert taskmesh.get(holder.keep.remote([ref]), timeout=30) == node_b
            refs_key = store.keys.obj_refs(oid)
            wait_until(lambda: any(h.startswith(b"p:") for h in store.redis.hkeys(refs_key)))
            cluster.kill_node(node_b)
            wait_until(lambda: not store.redis.exists(refs_key), timeout_s=30)  # monitor released it
            assert store.redis.exists(store.keys.obj(oid))  # the driver still holds it
            del ref
            wait_until(lambda: not store.redis.exists(store.keys.obj(oid)))
        finally:
            taskmesh.shutdown()
def test_a_lease_whose_reply_was_lost_is_taken_back(cluster_factory) -> None:
    """Redis records an XREADGROUP delivery even when the reply never reaches the agent
    (connection lost right then). The agent, once its lease read fails, takes back the
    entries pending for it that it does not know of, so the task still runs."""
    import os
    import signal

    import redis as redis_py

    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        (node,) = cluster.agents
        taskmesh.init(address=cluster.url)
        store = taskmesh.api.get_runtime().store
        try:
            @taskmesh.remote
            def square(x):
                return x * x

            assert taskmesh.get(square.remote(3), timeout=30) == 9
            agent = cluster.agents[node]
            # Its workers too: one still leasing under the grant of square(3) would take
            # the next entry before the read that steals it.
            stopped = [agent.pid, *cluster.worker_pids(node)]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                wait_until(lambda: _blocked_readers(store.redis))
                for client in _blocked_readers(store.redis):
                    store.redis.client_kill_filter(_id=client["id"])
                ref = square.remote(4)
                queue = store.keys.queue("CPU=1")
                wait_until(lambda: store.redis.xlen(queue) > 0)
                # The delivery the agent will never see: recorded as pending for it.
                stolen = redis_py.Redis.from_url(cluster.url)
                got = stolen.xreadgroup("agents", node, {queue: ">"}, count=10)
                stolen.close()
                assert got and got[0][1]
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            assert taskmesh.get(ref, timeout=30) == 16
        finally:
            taskmesh.shutdown()


def _blocked_readers(client) -> list[dict]:
    return [c for c in client.client_list() if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")]


_CRASHING_DRIVER = """
import sys, time
import numpy as np
import taskmesh

@taskmesh.remote
class Box:
    def __init__(self, refs=None):
        self.refs = refs
    def ping(self):
        return "pong"

taskmesh.init(address=sys.argv[1])
mine = taskmesh.put(np.ones(100_000))            # held by this driver only
lent = taskmesh.put(np.ones(100_000))            # also held by a detached actor
keeper = Box.options(name="keeper", lifetime="detached", namespace="crash").remote([lent])
temp = Box.remote()                              # dies with the job
taskmesh.get([keeper.ping.remote(), temp.ping.remote()])
print(mine.hex(), lent.hex(), temp._actor_id, flush=True)
time.sleep(600)
"""


def test_a_crashed_drivers_refs_and_actors_are_released(cluster_factory, monkeypatch, tmp_path) -> None:
    """kill -9 of a driver: once its heartbeat is older than the driver timeout, the
    monitor frees what only it held, keeps what a detached actor borrowed, and ends its
    job's other actors."""
    import subprocess
    import sys

    monkeypatch.setenv(monitor.ENV_DRIVER_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        script = tmp_path / "driver.py"
        script.write_text(_CRASHING_DRIVER)
        driver = subprocess.Popen([sys.executable, str(script), cluster.url], stdout=subprocess.PIPE,
                                  text=True)
        try:
            mine, lent, temp = driver.stdout.readline().split()
        finally:
            driver.kill()
            driver.wait()
        taskmesh.init(address=cluster.url)
        store = taskmesh.api.get_runtime().store
        try:
            wait_until(lambda: not store.redis.exists(store.keys.obj(mine)), timeout_s=30)
            wait_until(lambda: store.actor_info(temp).get("state") == "DEAD", timeout_s=30)
            assert store.redis.exists(store.keys.obj(lent))  # the detached actor holds it
            keeper = taskmesh.get_actor("keeper", namespace="crash")
            assert taskmesh.get(keeper.ping.remote(), timeout=30) == "pong"
            assert store.redis.zcard(store.keys.drivers()) == 1  # only this driver now
            taskmesh.kill(keeper)
        finally:
            taskmesh.shutdown()
