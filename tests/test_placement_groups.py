"""Placement groups on real agents, written as Ray's placement-group guide uses them."""

from __future__ import annotations

import logging

import pytest

import taskmesh
from conftest import start_cluster, wait_until
from taskmesh import exceptions
from taskmesh._core.strategies import PlacementGroupSchedulingStrategy
from taskmesh.store import Store
from taskmesh.util import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

pytestmark = pytest.mark.cluster  # the module's agents come from start_cluster


@taskmesh.remote(num_cpus=1)
def where() -> str:
    return taskmesh.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    """Three agents with 2 CPUs each."""
    Store(redis_server.url).redis.flushall()
    with start_cluster(redis_server.url, tmp_path_factory.mktemp("agents"), nodes=3, num_cpus=2) as c:
        taskmesh.init(address=c.url)
        try:
            yield c
        finally:
            taskmesh.shutdown()


def _nodes(pg) -> list[str]:
    table = placement_group_table(pg)
    return [table["bundles_to_node_id"][i] for i in range(len(table["bundles"]))]


def _reserved(cluster) -> dict[str, dict]:
    store = Store(cluster.url)
    try:
        return {n: store.node_reservations(n) for n in cluster.agents}
    finally:
        store.close()


@pytest.mark.parametrize("strategy, distinct", [
    ("PACK", 1), ("STRICT_PACK", 1), ("SPREAD", 2), ("STRICT_SPREAD", 2)])
def test_strategies_place_bundles(cluster, strategy, distinct) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    assert taskmesh.get(pg.ready(), timeout=10) == pg
    assert pg.wait(timeout_seconds=5)
    nodes = _nodes(pg)
    assert len(set(nodes)) == distinct and set(nodes) <= set(cluster.agents)
    table = placement_group_table(pg)
    assert table["state"] == "CREATED" and table["strategy"] == strategy
    assert table["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_tasks_and_actors_run_in_their_bundle(cluster) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    taskmesh.get(pg.ready(), timeout=10)
    nodes = _nodes(pg)
    for i in range(3):
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
        assert taskmesh.get([where.options(scheduling_strategy=strategy).remote() for _ in range(3)]) \
            == [nodes[i]] * 3
    anywhere = PlacementGroupSchedulingStrategy(pg)
    assert set(taskmesh.get([where.options(scheduling_strategy=anywhere).remote()
                             for _ in range(6)])) <= set(nodes)

    @taskmesh.remote(num_cpus=1)
    class Member:
        def info(self):
            current = get_current_placement_group()
            return taskmesh.get_runtime_context().get_node_id(), current.id.hex() if current else None

    actor = Member.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 2)).remote()
    assert taskmesh.get(actor.info.remote()) == (nodes[2], pg.id.hex())
    # the deprecated options still work (as in Ray)
    legacy = where.options(placement_group=pg, placement_group_bundle_index=1).remote()
    assert taskmesh.get(legacy) == nodes[1]
    remove_placement_group(pg)
    with pytest.raises(exceptions.ActorPlacementGroupRemoved):
        wait_until(lambda: taskmesh.get(actor.info.remote(), timeout=10) is None, 10, "the actor to die")


def test_child_tasks_are_captured(cluster) -> None:
    pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
    taskmesh.get(pg.ready(), timeout=10)

    @taskmesh.remote(num_cpus=1)
    def parent():
        current = get_current_placement_group()
        child = taskmesh.get(where.remote())
        return current.id.hex(), child

    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    pg_id, child_node = taskmesh.get(parent.options(scheduling_strategy=strategy).remote())
    assert pg_id == pg.id.hex() and child_node == _nodes(pg)[0]
    assert get_current_placement_group() is None  # in the driver
    remove_placement_group(pg)


def test_reservations_are_held_and_given_back(cluster) -> None:
    pg = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="SPREAD", name="reserved")
    assert pg.wait(10)
    assert get_placement_group("reserved") == pg
    reserved = _reserved(cluster)
    assert sum(len(r) for r in reserved.values()) == 2
    wait_until(lambda: taskmesh.available_resources().get("CPU") == 2, 10, "4 CPUs reserved")
    remove_placement_group(pg)
    assert sum(len(r) for r in _reserved(cluster).values()) == 0
    wait_until(lambda: taskmesh.available_resources().get("CPU") == 6, 10, "CPUs given back")
    with pytest.raises(ValueError, match="reserved"):
        get_placement_group("reserved")


def test_a_pending_group_is_placed_when_room_appears(cluster) -> None:
    first = placement_group([{"CPU": 2}] * 3, strategy="STRICT_SPREAD")
    assert first.wait(10)
    second = placement_group([{"CPU": 2}], strategy="PACK")
    ready = second.ready()
    assert not second.wait(0.5)
    assert taskmesh.wait([ready], timeout=0.2)[0] == []
    assert placement_group_table(second)["state"] == "PENDING"
    remove_placement_group(first)
    assert taskmesh.get(ready, timeout=15) == second
    remove_placement_group(second)


def test_tasks_waiting_for_a_removed_group_fail(cluster) -> None:
    blocker = placement_group([{"CPU": 2}] * 3, strategy="STRICT_SPREAD")
    assert blocker.wait(10)
    pg = placement_group([{"CPU": 1}])
    waiting = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
    remove_placement_group(pg)
    with pytest.raises(exceptions.TaskPlacementGroupRemoved):
        taskmesh.get(waiting, timeout=10)
    remove_placement_group(blocker)


def test_strict_pack_larger_than_any_node_waits_with_a_warning(cluster, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="taskmesh"):
        pg = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_PACK")
    assert "cannot be placed" in caplog.text and pg.id.hex() in caplog.text
    assert not pg.wait(1.5)  # the monitor retried for a while: still pending, no error
    assert placement_group_table(pg)["state"] == "PENDING"
    big = cluster.add_node(num_cpus=4)  # stopped with the module's cluster
    assert pg.wait(15)
    assert set(_nodes(pg)) == {big}
    remove_placement_group(pg)


@pytest.mark.parametrize("bundles, message", [
    ([], "non-empty list"),
    ({"CPU": 1}, "must be a list"),
    ([{}], "empty dictionary"),
    ([{"CPU": 0}], "only 0 values"),
    ([{"CPU": -1}], "non-negative"),
    ([{"CPU": "one"}], "resource dictionaries"),
])
def test_bad_bundles_are_rejected(cluster, bundles, message) -> None:
    with pytest.raises(ValueError, match=message):
        placement_group(bundles)


def test_bad_group_options_are_rejected(cluster) -> None:
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="CLUSTER")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    pg = placement_group([{"CPU": 1}])
    with pytest.raises(ValueError, match="deprecated"):
        where.options(placement_group=pg, scheduling_strategy="SPREAD")
    remove_placement_group(pg)


def test_list_placement_groups_command(cluster) -> None:
    from click.testing import CliRunner

    from taskmesh.cli import main as cli

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="listed")
    assert pg.wait(10)
    nodes = _nodes(pg)
    result = CliRunner().invoke(cli, ["list", "placement-groups", "--address", cluster.url,
                                      "--filter", "state=CREATED"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if pg.id.hex() in ln)
    assert "listed" in line and "STRICT_SPREAD" in line and ",".join(nodes) in line
    remove_placement_group(pg)
    removed = CliRunner().invoke(cli, ["list", "placement-groups", "--address", cluster.url,
                                       "--filter", "state=CREATED"])
    assert pg.id.hex() not in removed.output
