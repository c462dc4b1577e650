"""Where a submitter sends a task: the Router's decisions over its view of the live
nodes. The view is read from a fakeredis server (the router needs only TIME, the
heartbeat zset and each node's `resources_total`), so these run without Redis or
processes; tests/test_scheduling.py runs the same strategies on real agents."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import fakeredis
import pytest

from taskmesh._core import router as router_module
from taskmesh._core.router import FRESH_HEARTBEAT_MS, PgTarget, Route, Router
from taskmesh._core.strategies import NodeAffinitySchedulingStrategy
from taskmesh.store import Keys

CPU1 = {"CPU": 1.0}


class Nodes:
    """Heartbeats and node hashes, written as agents write them."""

    def __init__(self) -> None:
        self.redis = fakeredis.FakeRedis()
        self.keys = Keys("tm")

    def now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros // 1000

    def join(self, node_id: str, total: dict[str, float], beat_age_ms: int = 0) -> None:
        self.redis.hset(self.keys.node(node_id), "resources_total", json.dumps(total))
        self.redis.zadd(self.keys.nodes_alive(), {node_id: self.now_ms() - beat_age_ms})

    def leave(self, node_id: str) -> None:
        self.redis.zrem(self.keys.nodes_alive(), node_id)


@pytest.fixture
def nodes() -> Nodes:
    return Nodes()


@pytest.fixture
def router(nodes: Nodes) -> Router:
    return Router(SimpleNamespace(redis=nodes.redis, keys=nodes.keys))  # type: ignore[arg-type]


def test_the_view_holds_nodes_with_a_recent_heartbeat(nodes: Nodes, router: Router) -> None:
    nodes.join("a", {"CPU": 2.0})
    nodes.join("b", {"CPU": 1.0, "GPU": 1.0}, beat_age_ms=FRESH_HEARTBEAT_MS // 2)
    nodes.join("silent", {"CPU": 8.0}, beat_age_ms=FRESH_HEARTBEAT_MS + 1000)  # killed, not yet dead
    assert router.alive() == {"a": {"CPU": 2.0}, "b": {"CPU": 1.0, "GPU": 1.0}}


def test_the_view_is_cached_for_a_while_unless_asked_fresh(
        nodes: Nodes, router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes.join("a", CPU1)
    assert list(router.alive()) == ["a"]
    nodes.join("b", CPU1)
    assert list(router.alive()) == ["a"]  # no Redis command per submission
    assert list(router.alive(fresh=True)) == ["a", "b"]
    nodes.leave("a")
    monkeypatch.setattr(router_module, "VIEW_TTL_S", 0.0)
    assert list(router.alive()) == ["b"]


def test_a_nodes_totals_are_read_once(nodes: Nodes, router: Router) -> None:
    nodes.join("a", CPU1)
    router.alive(fresh=True)
    nodes.redis.hset(nodes.keys.node("a"), "resources_total", json.dumps({"CPU": 64.0}))
    assert router.alive(fresh=True) == {"a": CPU1}  # a node's total never changes
    nodes.redis.zadd(nodes.keys.nodes_alive(), {"unregistered": nodes.now_ms()})
    assert router.alive(fresh=True) == {"a": CPU1}  # alive, but no hash yet: not chosen


def test_default_goes_to_its_shape_queue(nodes: Nodes, router: Router) -> None:
    nodes.join("a", CPU1)
    for strategy in (None, "DEFAULT"):
        assert router.route(strategy, CPU1, "CPU=1", actor=False, pg=None) == Route("CPU=1")


def test_default_goes_near_its_largest_argument_when_that_node_fits(nodes: Nodes, router: Router) -> None:
    nodes.join("a", {"CPU": 1.0})
    nodes.join("b", {"CPU": 1.0, "GPU": 1.0})
    near = router.route(None, CPU1, "CPU=1", actor=False, pg=None, near="a")
    assert near == Route("node:a", shape="CPU=1", soft=True)
    gpu = {"CPU": 1.0, "GPU": 1.0}
    assert router.route(None, gpu, "CPU=1,GPU=1", actor=False, pg=None, near="a") == Route("CPU=1,GPU=1")
    assert router.route(None, CPU1, "CPU=1", actor=False, pg=None, near="gone") == Route("CPU=1")


def test_spread_goes_round_robin_over_the_nodes_that_fit(nodes: Nodes, router: Router) -> None:
    for name in ("a", "b", "c"):
        nodes.join(name, {"CPU": 1.0, "disk": 1.0} if name != "b" else {"CPU": 1.0})
    queues = [router.route("SPREAD", CPU1, "CPU=1", actor=False, pg=None).queue for _ in range(6)]
    assert queues == ["node:a", "node:b", "node:c"] * 2
    disk = {"CPU": 1.0, "disk": 1.0}
    routes = [router.route("SPREAD", disk, "CPU=1,disk=1", actor=True, pg=None) for _ in range(4)]
    assert {r.queue for r in routes} == {"node:a", "node:c"}
    assert all((r.shape, r.soft) == ("CPU=1,disk=1", True) for r in routes)
    assert router.route("SPREAD", {"GPU": 1.0}, "GPU=1", actor=False, pg=None) == Route("GPU=1")


def test_node_affinity_to_a_live_node_that_fits(nodes: Nodes, router: Router) -> None:
    nodes.join("a", CPU1)
    for soft in (False, True):
        strategy = NodeAffinitySchedulingStrategy("a", soft=soft)
        assert router.route(strategy, CPU1, "CPU=1", actor=False, pg=None) == Route(
            "node:a", shape="CPU=1", soft=soft)


def test_node_affinity_looks_again_for_a_node_it_has_not_seen(nodes: Nodes, router: Router) -> None:
    nodes.join("a", CPU1)
    router.alive()
    nodes.join("new", CPU1)  # joined after the view was read
    strategy = NodeAffinitySchedulingStrategy("new", soft=False)
    assert router.route(strategy, CPU1, "CPU=1", actor=False, pg=None).queue == "node:new"


@pytest.mark.parametrize(("node", "demand", "why"), [
    ("gone", CPU1, "(gone) is not alive"),
    ("a", {"CPU": 4.0}, "(a) does not have the resources {'CPU': 4.0}"),
])
def test_node_affinity_that_cannot_be_met(nodes: Nodes, router: Router, node: str,
                                          demand: dict[str, float], why: str) -> None:
    nodes.join("a", CPU1)
    soft = router.route(NodeAffinitySchedulingStrategy(node, soft=True), demand, "S", actor=False, pg=None)
    assert soft == Route("S")  # runs anywhere it fits
    for actor, what in ((False, "task"), (True, "actor")):
        hard = router.route(NodeAffinitySchedulingStrategy(node, soft=False), demand, "S",
                            actor=actor, pg=None)
        assert hard.queue == "S" and hard.unschedulable is not None
        assert hard.unschedulable.startswith(f"The {what} is not schedulable")
        assert why in hard.unschedulable and "soft=False" in hard.unschedulable


def test_a_placement_group_task_goes_to_its_bundles_queue(nodes: Nodes, router: Router) -> None:
    pg = PgTarget("p1", 2, capture=True)
    route = router.route("SPREAD", CPU1, "CPU=1", actor=False, pg=pg)  # the group wins
    assert route == Route("pg:p1:2", shape="CPU=1", soft=False, pg=["p1", 2, True])
    assert router.route(None, CPU1, "CPU=1", actor=True, pg=PgTarget("p1", -1, False)).queue == "pg:p1:any"


def test_an_infeasible_request_is_warned_about_once_per_shape(
        nodes: Nodes, router: Router, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="taskmesh"):
        router.warn_if_infeasible("CPU=4", {"CPU": 4.0})  # no node yet: nothing to compare
        nodes.join("a", {"CPU": 2.0})
        nodes.join("b", {"CPU": 2.0})
        router.warn_if_infeasible("CPU=1", CPU1)
        router.warn_if_infeasible("CPU=4", {"CPU": 4.0})
        router.warn_if_infeasible("CPU=4", {"CPU": 4.0})
    [record] = caplog.records
    assert "cannot be scheduled right now: {'CPU': 4.0}" in record.getMessage()
    assert "(cluster: {'CPU': 4.0})" in record.getMessage()  # four CPUs, but not on one node
