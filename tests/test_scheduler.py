"""Shapes and lease decisions are pure: tested without Redis or processes."""

from taskmesh import scheduler


def test_shape_names_are_canonical() -> None:
    assert scheduler.shape_name({"CPU": 1.0}) == "CPU=1"
    assert scheduler.shape_name({"GPU": 0.5, "CPU": 1}) == "CPU=1,GPU=0.5"
    assert scheduler.shape_name({"CPU": 0}) == scheduler.NO_DEMAND
    assert scheduler.parse_shape("CPU=1,GPU=0.5") == {"CPU": 1.0, "GPU": 0.5}
    assert scheduler.parse_shape(scheduler.NO_DEMAND) == {}


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
    assert scheduler.node_queue("n1") == "node:n1"
    assert scheduler.bundle_queue("p", 2) == "pg:p:2" and scheduler.bundle_queue("p", -1) == "pg:p:any"
    assert scheduler.is_shape_queue("CPU=1") and not scheduler.is_shape_queue("node:n1")
