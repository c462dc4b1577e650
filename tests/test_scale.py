"""Eight node agents on one machine: a fan-out of 10,000 tasks and a SPREAD of eight
actors give every node work."""

from __future__ import annotations

import collections
import time

import pytest

import taskmesh


@pytest.mark.slow
def test_eight_agents_share_a_fan_out_and_spread_actors(cluster_factory) -> None:
    with cluster_factory(nodes=8, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote
            def square(x):
                # A millisecond of work: tasks of a few µs are leased 64 at a time by the
                # first workers to ask and may all be done before a slow agent leases any.
                time.sleep(0.001)
                return x * x, taskmesh.get_runtime_context().get_node_id()

            results = taskmesh.get([square.remote(i) for i in range(10_000)], timeout=300)
            assert [r[0] for r in results] == [i * i for i in range(10_000)]
            per_node = collections.Counter(r[1] for r in results)
            assert set(per_node) == set(cluster.agents), per_node

            @taskmesh.remote(scheduling_strategy="SPREAD")
            class Worker:
                def node(self):
                    return taskmesh.get_runtime_context().get_node_id()

            actors = [Worker.remote() for _ in range(8)]
            assert sorted(taskmesh.get([a.node.remote() for a in actors], timeout=60)) \
                == sorted(cluster.agents)
        finally:
            taskmesh.shutdown()
