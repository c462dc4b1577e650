"""Scheduling as nodes come and go: infeasible requests wait for a fitting node; node
affinity to a node that dies fails (soft=False) or moves (soft=True)."""

from __future__ import annotations

import logging
import os

import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh._core.strategies import NodeAffinitySchedulingStrategy


@taskmesh.remote
def where() -> str:
    return taskmesh.get_runtime_context().get_node_id()


def test_infeasible_task_warns_and_waits_for_a_fitting_node(redis_server, cluster_factory, caplog) -> None:
    with cluster_factory(nodes=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            with caplog.at_level(logging.WARNING, logger="taskmesh"):
                ref = where.options(num_cpus=1, resources={"big": 1}).remote()
                ready, _ = taskmesh.wait([ref], timeout=0.5)
            assert not ready
            assert "cannot be scheduled right now" in caplog.text and "'big': 1.0" in caplog.text
            node = cluster.add_node(num_cpus=1, resources={"big": 1})
            assert taskmesh.get(ref, timeout=30) == node
        finally:
            taskmesh.shutdown()


def test_hard_affinity_to_a_node_that_dies_fails_and_soft_moves(cluster_factory) -> None:
    os.environ["TASKMESH_NODE_TIMEOUT_MS"] = "1500"
    try:
        with cluster_factory(nodes=1) as cluster:
            doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1})
            taskmesh.init(address=cluster.url)
            try:
                @taskmesh.remote(resources={"doomed": 1})
                def block():
                    import time

                    time.sleep(60)

                busy = block.remote()  # keeps the doomed node's only CPU busy
                wait_until(lambda: taskmesh.available_resources().get("doomed", 0) == 0, 10,
                           "the doomed node to be busy")
                hard = where.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(doomed, soft=False)).remote()
                soft = where.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(doomed, soft=True)).remote()
                cluster.kill_node(doomed)
                with pytest.raises(exceptions.TaskUnschedulableError, match=doomed):
                    taskmesh.get(hard, timeout=30)
                assert taskmesh.get(soft, timeout=30) != doomed
                del busy
            finally:
                taskmesh.shutdown()
    finally:
        del os.environ["TASKMESH_NODE_TIMEOUT_MS"]


def test_bundles_on_a_dead_node_are_placed_again(cluster_factory) -> None:
    from taskmesh._core.strategies import PlacementGroupSchedulingStrategy
    from taskmesh.util import placement_group, placement_group_table, remove_placement_group

    os.environ["TASKMESH_NODE_TIMEOUT_MS"] = "1500"
    try:
        with cluster_factory(nodes=3) as cluster:
            taskmesh.init(address=cluster.url)
            try:
                pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
                assert pg.wait(10)
                before = placement_group_table(pg)["bundles_to_node_id"]
                survivor, doomed = before[0], before[1]
                cluster.kill_node(doomed)

                def moved():
                    table = placement_group_table(pg)
                    nodes = table["bundles_to_node_id"]
                    return table["state"] == "CREATED" and nodes.get(1) not in (None, doomed) and nodes

                nodes = wait_until(moved, 30, "bundle 1 to be placed on a live node")
                assert nodes[0] == survivor and nodes[1] != survivor  # still STRICT_SPREAD
                in_bundle = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
                assert taskmesh.get(where.options(scheduling_strategy=in_bundle).remote(),
                                    timeout=30) == nodes[1]
                remove_placement_group(pg)
            finally:
                taskmesh.shutdown()
    finally:
        del os.environ["TASKMESH_NODE_TIMEOUT_MS"]
