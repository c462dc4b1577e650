"""Scheduling across real node agents: strategies, resources, GPUs, data locality and
infeasible requests (Ray's "Scheduling" and "Resources" chapters)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh._core.strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster  # the module's agents come from start_cluster


@taskmesh.remote
def where() -> str:
    return taskmesh.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def three_nodes(redis_server, tmp_path_factory):
    """Three 2-CPU agents; node 0 also has {"disk": 4}, node 2 two GPUs."""
    from conftest import start_cluster
    from taskmesh.store import Store

    Store(redis_server.url).redis.flushall()
    with start_cluster(redis_server.url, tmp_path_factory.mktemp("agents"), nodes=0) as cluster:
        ids = [cluster.add_node(num_cpus=2, resources={"disk": 4}),
               cluster.add_node(num_cpus=2),
               cluster.add_node(num_cpus=2, num_gpus=2)]
        cluster.ids = ids
        taskmesh.init(address=cluster.url)
        try:
            yield cluster
        finally:
            taskmesh.shutdown()


def test_spread_tasks_and_actors_reach_every_node(three_nodes) -> None:
    """SPREAD puts tasks in every node's queue. Where they then run is the nodes' to say:
    a node that cannot start one within HANDBACK_S (a loaded machine) hands it back to its
    shape queue, so the queues are read with the agents stopped, as they were routed."""
    import signal

    from taskmesh.store import Store

    store = Store(three_nodes.url)
    agents = [three_nodes.agents[n].pid for n in three_nodes.ids]
    for pid in agents:
        os.kill(pid, signal.SIGSTOP)
    try:
        refs = [where.options(scheduling_strategy="SPREAD").remote() for _ in range(30)]
        def routed() -> list[int] | None:
            q = [store.redis.xlen(store.keys.node_queue(n)) for n in three_nodes.ids]
            return q if sum(q) == 30 else None

        queued = wait_until(routed, what="the 30 SPREAD tasks routed")
        assert all(n >= 5 for n in queued), queued  # round robin: 10 each
    finally:
        for pid in agents:
            os.kill(pid, signal.SIGCONT)
        store.close()
    assert set(taskmesh.get(refs)) <= set(three_nodes.ids)

    @taskmesh.remote(num_cpus=0, scheduling_strategy="SPREAD")
    class Probe:
        def node(self):
            return taskmesh.get_runtime_context().get_node_id()

    actors = [Probe.remote() for _ in range(3)]
    assert sorted(taskmesh.get([a.node.remote() for a in actors])) == sorted(three_nodes.ids)
    for a in actors:
        taskmesh.kill(a)


def test_node_affinity_runs_on_the_named_node(three_nodes) -> None:
    target = three_nodes.ids[1]
    for soft in (False, True):
        strategy = NodeAffinitySchedulingStrategy(node_id=target, soft=soft)
        assert set(taskmesh.get([where.options(scheduling_strategy=strategy).remote()
                                 for _ in range(6)])) == {target}

    @taskmesh.remote
    class Pinned:
        def node(self):
            return taskmesh.get_runtime_context().get_node_id()

    actor = Pinned.options(scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)).remote()
    assert taskmesh.get(actor.node.remote()) == target
    taskmesh.kill(actor)


def test_node_affinity_to_an_unknown_node(three_nodes) -> None:
    gone = "0123456789abcdef"
    hard = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(gone, soft=False)).remote()
    with pytest.raises(exceptions.TaskUnschedulableError, match=gone):
        taskmesh.get(hard, timeout=10)
    soft = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(gone, soft=True)).remote()
    assert taskmesh.get(soft, timeout=10) in three_nodes.ids

    @taskmesh.remote
    class Pinned:
        def ping(self):
            return 1

    actor = Pinned.options(scheduling_strategy=NodeAffinitySchedulingStrategy(gone, soft=False)).remote()
    with pytest.raises(exceptions.ActorUnschedulableError):
        taskmesh.get(actor.ping.remote(), timeout=10)


def test_custom_resources_choose_the_node_that_has_them(three_nodes) -> None:
    disk_node = three_nodes.ids[0]
    refs = [where.options(resources={"disk": 1}).remote() for _ in range(8)]
    assert set(taskmesh.get(refs)) == {disk_node}


def test_fractional_cpus_share_a_cpu(three_nodes) -> None:
    """Four 0.5-CPU tasks run at once on one 2-CPU node: each waits for the others, so
    this only finishes if they all run concurrently."""
    @taskmesh.remote
    class Barrier:
        def __init__(self, n):
            self.n, self.arrived = n, 0

        def arrive(self):
            self.arrived += 1

        def count(self):
            return self.arrived

    barrier = Barrier.remote(4)
    target = three_nodes.ids[1]

    @taskmesh.remote(num_cpus=0.5, scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False))
    def meet(b):
        import time

        taskmesh.get(b.arrive.remote())
        deadline = time.monotonic() + 20
        while taskmesh.get(b.count.remote()) < 4:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return taskmesh.get_runtime_context().get_assigned_resources()

    assert taskmesh.get([meet.remote(barrier) for _ in range(4)], timeout=30) == [{"CPU": 0.5}] * 4
    taskmesh.kill(barrier)


def test_gpus_are_assigned_ids_and_cuda_visible_devices(three_nodes) -> None:
    gpu_node = three_nodes.ids[2]

    @taskmesh.remote(num_gpus=1)
    def one_gpu():
        import time

        time.sleep(0.3)  # overlap with the other task so both GPUs are in use
        return taskmesh.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"], \
            taskmesh.get_runtime_context().get_node_id()

    a, b = taskmesh.get([one_gpu.remote(), one_gpu.remote()])
    assert a[2] == b[2] == gpu_node
    assert len(a[0]) == len(b[0]) == 1 and a[1] == str(a[0][0]) and b[1] == str(b[0][0])
    assert {a[0][0], b[0][0]} <= {0, 1}

    @taskmesh.remote(num_gpus=2)
    def two_gpus():
        return taskmesh.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    ids, visible = taskmesh.get(two_gpus.remote())
    assert sorted(ids) == [0, 1] and sorted(visible.split(",")) == ["0", "1"]

    @taskmesh.remote(num_gpus=0.5)
    def half():
        return taskmesh.get_gpu_ids()

    assert all(len(ids) == 1 for ids in taskmesh.get([half.remote() for _ in range(4)]))

    @taskmesh.remote(num_gpus=1)
    class GpuActor:
        def ids(self):
            return taskmesh.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    actor = GpuActor.remote()
    ids, visible = taskmesh.get(actor.ids.remote())
    assert len(ids) == 1 and visible == str(ids[0])
    taskmesh.kill(actor)
    assert taskmesh.get_gpu_ids() == []  # the driver has none


def test_a_task_runs_where_its_large_argument_lives(three_nodes) -> None:
    holder = three_nodes.ids[0]

    @taskmesh.remote(resources={"disk": 1})
    def make():
        return np.ones(2_000_000)  # 16 MB: in the node's shared memory

    @taskmesh.remote
    def consume(x):
        return taskmesh.get_runtime_context().get_node_id(), float(x.sum())

    big = make.remote()
    taskmesh.wait([big])
    # ready argument: placed near it at submission; pending argument: when it is ready
    assert taskmesh.get(consume.remote(big)) == (holder, 2_000_000.0)
    assert taskmesh.get(consume.remote(make.remote())) == (holder, 2_000_000.0)


def test_bad_strategies_are_rejected() -> None:
    with pytest.raises(ValueError, match="scheduling_strategy"):
        where.options(scheduling_strategy="NEAREST")
    with pytest.raises(TypeError, match="scheduling_strategy"):
        where.options(scheduling_strategy=42)
    with pytest.raises(TypeError, match="node_id"):
        NodeAffinitySchedulingStrategy(node_id=7, soft=False)


def test_introspection_has_rays_shapes(three_nodes) -> None:
    total = taskmesh.cluster_resources()
    assert total["CPU"] == 6 and total["GPU"] == 2 and total["disk"] == 4
    nodes = taskmesh.nodes()
    assert {n["NodeID"] for n in nodes if n["Alive"]} == set(three_nodes.ids)
    assert all({"NodeManagerAddress", "Resources", "AvailableResources"} <= set(n) for n in nodes)
    assert wait_until(lambda: taskmesh.available_resources().get("CPU") == 6, 10, "idle CPUs")

    @taskmesh.remote(num_cpus=1, resources={"disk": 2})
    def context():
        ctx = taskmesh.get_runtime_context()
        return (ctx.get_job_id(), ctx.get_node_id(), ctx.get_task_id(), ctx.get_worker_id(),
                ctx.get_actor_id(), ctx.get_assigned_resources())

    job, node, task, worker, actor, assigned = taskmesh.get(context.remote())
    driver = taskmesh.get_runtime_context()
    assert job == driver.get_job_id() and node == three_nodes.ids[0]
    assert task and worker and worker != driver.get_worker_id() and actor is None
    assert assigned == {"CPU": 1.0, "disk": 2.0}


def test_memory_is_a_resource_of_every_node(three_nodes) -> None:
    per_node = [n["Resources"]["memory"] for n in taskmesh.nodes() if n["Alive"]]
    assert len(per_node) == 3 and all(m > 0 for m in per_node)

    @taskmesh.remote(memory=100 * 1024 * 1024)
    def reserved():
        return taskmesh.get_runtime_context().get_assigned_resources()

    assert taskmesh.get(reserved.remote()) == {"CPU": 1.0, "memory": 100.0 * 1024 * 1024}
