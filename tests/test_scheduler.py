"""Shapes and lease decisions are pure: tested without Redis or processes."""

import pytest

from taskmesh import scheduler
from taskmesh._base import queues


def test_shape_names_are_canonical() -> None:
    assert queues.shape_name({"CPU": 1.0}) == "CPU=1"
    assert queues.shape_name({"GPU": 0.5, "CPU": 1}) == "CPU=1,GPU=0.5"
    assert queues.shape_name({"CPU": 0}) == queues.NO_DEMAND
    assert queues.parse_shape("CPU=1,GPU=0.5") == {"CPU": 1.0, "GPU": 0.5}
    assert queues.parse_shape(queues.NO_DEMAND) == {}
    for bad in ("CPU", "=1", "CPU=one", "CPU=1,,GPU=1"):
        with pytest.raises(ValueError):
            queues.parse_shape(bad)


def test_fits_and_fit_count() -> None:
    assert scheduler.fits({"CPU": 1}, {"CPU": 1})
    assert not scheduler.fits({"CPU": 1, "disk": 1}, {"CPU": 4})
    assert scheduler.fit_count({"CPU": 0.5}, {"CPU": 2}) == 4
    assert scheduler.fit_count({"CPU": 3}, {"CPU": 2}) == 0
    assert scheduler.fit_count({}, {"CPU": 2}) == scheduler.ZERO_DEMAND_SLOTS


def test_lease_counts_skip_shapes_the_node_can_never_run() -> None:
    total = {"CPU": 2.0}
    counts = scheduler.lease_counts(["CPU=1", "CPU=4", "GPU=1"], total, total, {})
    assert counts == {"CPU=1": 4}  # two running + one node's worth waiting locally


def test_lease_counts_account_for_held_tasks() -> None:
    total = {"CPU": 2.0}
    busy = {"CPU": 0.0}
    assert scheduler.lease_counts(["CPU=1"], total, busy, {}) == {"CPU=1": 2}
    assert scheduler.lease_counts(["CPU=1"], total, busy, {"CPU": 2.0}) == {}


# ---- placement-group planning ------------------------------------------------------------

FREE = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}, "c": {"CPU": 1.0, "GPU": 1.0}}


def test_pack_uses_as_few_nodes_as_fit() -> None:
    plan = scheduler.plan_bundles({0: {"CPU": 1}, 1: {"CPU": 1}}, "PACK", FREE)
    assert plan is not None and len(set(plan.values())) == 1
    plan = scheduler.plan_bundles({0: {"CPU": 2}, 1: {"CPU": 2}}, "PACK", FREE)
    assert plan is not None and set(plan.values()) == {"a", "b"}


def test_strict_pack_needs_one_node_for_everything() -> None:
    assert scheduler.plan_bundles({0: {"CPU": 1}, 1: {"CPU": 1}}, "STRICT_PACK", FREE) in (
        {0: "a", 1: "a"}, {0: "b", 1: "b"})
    assert scheduler.plan_bundles({0: {"CPU": 2}, 1: {"CPU": 1}}, "STRICT_PACK", FREE) is None
    # bundles already placed pin the rest to their node
    assert scheduler.plan_bundles({1: {"CPU": 1}}, "STRICT_PACK", FREE, fixed={0: "b"}) == {1: "b"}


def test_spread_and_strict_spread() -> None:
    bundles = {0: {"CPU": 1}, 1: {"CPU": 1}, 2: {"CPU": 1}}
    assert set(scheduler.plan_bundles(bundles, "SPREAD", FREE).values()) == {"a", "b", "c"}
    assert set(scheduler.plan_bundles(bundles, "STRICT_SPREAD", FREE).values()) == {"a", "b", "c"}
    four = {**bundles, 3: {"CPU": 1}}
    spread = scheduler.plan_bundles(four, "SPREAD", FREE)  # best effort: a node twice
    assert spread is not None and len(set(spread.values())) == 3
    assert scheduler.plan_bundles(four, "STRICT_SPREAD", FREE) is None
    # the GPU bundle can only go to c: the search must not give c away first
    gpu_first = {0: {"CPU": 1}, 1: {"CPU": 1}, 2: {"GPU": 1}}
    assert scheduler.plan_bundles(gpu_first, "STRICT_SPREAD", FREE)[2] == "c"
    assert scheduler.plan_bundles({1: {"CPU": 1}}, "STRICT_SPREAD", FREE, fixed={0: "a"})[1] != "a"


def test_planning_respects_what_is_free() -> None:
    assert scheduler.plan_bundles({0: {"CPU": 3}}, "PACK", FREE) is None
    assert scheduler.plan_bundles({0: {"disk": 1}}, "SPREAD", FREE) is None
    assert scheduler.plan_bundles({0: {"CPU": 0.5}, 1: {"CPU": 0.5}}, "STRICT_PACK", {"c": {"CPU": 1}}) \
        == {0: "c", 1: "c"}


def test_queue_names() -> None:
    assert queues.node_queue("n1") == "node:n1"
    assert queues.node_of("node:n1") == "n1" and queues.node_of("pg:p:1") is None
    assert queues.bundle_queue("p", 2) == "pg:p:2" and queues.bundle_queue("p", -1) == "pg:p:any"
    assert queues.bundle_queues("p", 2) == ["pg:p:0", "pg:p:1", "pg:p:any"]
    assert queues.is_shape_queue("CPU=1") and not queues.is_shape_queue("node:n1")
    assert not queues.is_shape_queue("pg:p:any") and queues.is_bundle_queue("pg:p:any")
    assert queues.parse_bundle_queue("pg:p:any") == ("p", queues.ANY_BUNDLE)
    assert queues.group_of_queue("pg:p:3") == "p" and queues.group_of_queue("CPU=1") is None
    pool = queues.bundle_pool("p", 3)
    assert queues.parse_bundle_pool(pool) == ("p", "3") and queues.pool_queue(pool) == "pg:p:3"
