"""The node agent's decisions as plain values, without Redis or processes: its resource
book (pools, bundles, GPU ids), how many entries it leases from each queue, and when a
blocked lease read must be woken. tests/test_resources.py holds the first cases."""

from __future__ import annotations

import pytest

from taskmesh import scheduler
from taskmesh._base import queues
from taskmesh.workers.resources import NodeResources, starved_pools

# ---- pools and reservations -----------------------------------------------------------


def test_a_task_takes_from_its_pool_and_gives_back_to_it() -> None:
    r = NodeResources({"CPU": 4, "memory": 1000})
    assert r.total == {"CPU": 4.0, "memory": 1000.0} and r.available == r.total
    r.take(None, {"CPU": 1.5, "memory": 400})
    assert r.available == {"CPU": 2.5, "memory": 600.0}
    assert r.pool_for("CPU=2", {"CPU": 2}) is None  # the node's own pool
    assert r.pool_for("memory=700", {"memory": 700}) is False
    r.give(None, {"CPU": 1.5, "memory": 400})
    assert r.available == r.total


def test_shape_and_node_queues_start_in_the_nodes_pool() -> None:
    r = NodeResources({"CPU": 1, "special": 1})
    assert r.pool_for("node:n1", {"special": 1}) is None
    assert r.pool_for("CPU=1,special=1", {"CPU": 1, "special": 1}) is None
    assert r.pool_for("none", {}) is None  # a zero demand fits anywhere
    assert r.pool_for("other=1", {"other": 1}) is False


def test_a_reservation_leaves_the_nodes_pool_even_while_tasks_use_it() -> None:
    r = NodeResources({"CPU": 2})
    r.take(None, {"CPU": 2})  # two tasks run
    r.set_reservations({"g:0": {"CPU": 1}})
    assert r.available == {"CPU": -1.0}  # below zero until a task ends
    assert r.bundles == {"g:0": {"CPU": 1.0}} and r.unreserved() == {"CPU": 1.0}
    assert r.pool_for("CPU=1", {"CPU": 1}) is False
    r.give(None, {"CPU": 1})
    assert r.pool_for("CPU=1", {"CPU": 1}) is False  # the one CPU left is the bundle's
    r.give(None, {"CPU": 1})
    assert r.available == {"CPU": 1.0}


def test_the_same_reservations_twice_change_nothing() -> None:
    r = NodeResources({"CPU": 4})
    reserved = {"g:0": {"CPU": 1}, "g:1": {"CPU": 1}}
    r.set_reservations(reserved)
    r.take("g:0", {"CPU": 1})
    r.set_reservations(reserved)  # the agent reloads on every placement-group change
    assert r.available == {"CPU": 2.0}
    assert r.bundles == {"g:0": {"CPU": 0.0}, "g:1": {"CPU": 1.0}}


def test_removing_one_group_keeps_the_others_bundles() -> None:
    r = NodeResources({"CPU": 4})
    r.set_reservations({"a:0": {"CPU": 1}, "b:0": {"CPU": 2}})
    r.take("b:0", {"CPU": 2})
    r.set_reservations({"b:0": {"CPU": 2}})
    assert r.groups() == ["b"] and r.available == {"CPU": 2.0}
    assert r.pool_for("pg:a:0", {"CPU": 1}) is False  # a's queue finds no bundle here
    r.set_reservations({})  # b goes while its task runs: the task gives back to the node
    r.give("b:0", {"CPU": 2})
    assert r.available == {"CPU": 4.0} and r.bundles == {} and r.reserved == {}


def test_any_bundle_of_a_group_takes_the_first_with_room() -> None:
    r = NodeResources({"CPU": 4})
    r.set_reservations({"g:1": {"CPU": 1}, "g:0": {"CPU": 1}, "h:0": {"CPU": 2}})
    assert r.pool_for("pg:g:any", {"CPU": 1}) == "g:0"
    r.take("g:0", {"CPU": 1})
    assert r.pool_for("pg:g:any", {"CPU": 1}) == "g:1"
    r.take("g:1", {"CPU": 1})
    assert r.pool_for("pg:g:any", {"CPU": 1}) is False  # h's room is not g's
    assert r.pool_for("pg:g:2", {"CPU": 0}) is False  # a bundle hosted elsewhere


def test_pinned_queues_are_the_nodes_then_each_bundles_then_each_groups_any() -> None:
    r = NodeResources({"CPU": 4})
    r.set_reservations({"h:0": {"CPU": 1}, "g:1": {"CPU": 1}, "g:0": {"CPU": 1}})
    assert r.pinned_queues("n1") == ["node:n1", "pg:g:0", "pg:g:1", "pg:h:0", "pg:g:any", "pg:h:any"]


# ---- how much to lease ------------------------------------------------------------------


def test_the_node_queue_reads_whole_free_cpus_of_the_lease_budget() -> None:
    r = NodeResources({"CPU": 3})
    queues = r.pinned_queues("n1")
    r.take(None, {"CPU": 0.5})
    # budget: available 2.5 + unreserved 3 (one node's worth waiting) - held 1
    assert r.pinned_counts(queues, {"CPU": 1}, {"node:n1": 1}) == {"node:n1": 4}
    assert r.pinned_counts(queues, {"CPU": 5}, {}) == {}


def test_a_node_without_cpus_reads_a_fixed_number_of_zero_cpu_entries() -> None:
    r = NodeResources({"special": 1})
    queues = r.pinned_queues("n1")
    assert r.pinned_counts(queues, {}, {}) == {"node:n1": scheduler.ZERO_DEMAND_SLOTS}
    assert r.pinned_counts(queues, {}, {"node:n1": 10, "CPU=1": 6}) == {}  # slots are full


def test_bundle_queues_read_one_entry_per_two_cpus_of_their_bundles() -> None:
    r = NodeResources({"CPU": 8})
    r.set_reservations({"g:0": {"CPU": 2}, "g:1": {"CPU": 4}})
    queues = r.pinned_queues("n1")
    counts = r.pinned_counts(queues, {}, {})
    # a bundle's budget is its free plus its reserved resources (one bundle's worth waiting)
    assert counts["pg:g:0"] == 2 and counts["pg:g:1"] == 4
    assert counts["pg:g:any"] == 6  # every bundle of the group
    r.take("g:0", {"CPU": 2})
    r.take("g:1", {"CPU": 3})
    counts = r.pinned_counts(queues, {}, {})
    assert counts["pg:g:0"] == 1 and counts["pg:g:1"] == 2 and counts["pg:g:any"] == 3


def test_lease_counts_give_every_fitting_shape_the_same_budget() -> None:
    total = {"CPU": 2.0, "special": 1.0}
    counts = scheduler.lease_counts(["CPU=1", "CPU=2", "CPU=1,special=1", "none", "GPU=1"],
                                    total, total, {})
    assert counts == {"CPU=1": 4, "CPU=2": 2, "CPU=1,special=1": 2,
                      "none": scheduler.ZERO_DEMAND_SLOTS}


def test_float_sums_do_not_lose_a_slot() -> None:
    free = {"CPU": 0.1 + 0.2}  # 0.30000000000000004
    assert scheduler.fits({"CPU": 0.3}, free) and scheduler.fits({"CPU": 0.1 + 0.2}, {"CPU": 0.3})
    assert scheduler.fit_count({"CPU": 0.1}, {"CPU": 0.3}) == 3  # 0.3 / 0.1 < 3 in floats
    assert scheduler.fit_count({"CPU": 0.1}, {"CPU": -0.5}) == 0


@pytest.mark.parametrize("demand", [
    {"CPU": 1.0}, {"CPU": 0.25, "GPU": 0.5}, {"memory": 999_999_999_999.0}, {"memory": 1e12},
    {"CPU": 1e-4}, {},
])
def test_shape_names_round_trip(demand: dict[str, float]) -> None:
    """Exactly, for byte counts up to a terabyte (shape names keep 12 digits)."""
    assert queues.parse_shape(queues.shape_name(demand)) == demand
    assert queues.shape_name({**demand, "zero": 0}) == queues.shape_name(demand)


# ---- waking the lease read --------------------------------------------------------------


PINNED = ["node:n1", "pg:g:0", "pg:g:1", "pg:g:any"]


def test_a_read_is_short_when_it_leaves_out_a_queue_whose_pool_runs_tasks() -> None:
    everything = dict.fromkeys(PINNED, 1)
    assert not starved_pools(PINNED, everything, running={None, "g:0"})
    left_out_node = {q: 1 for q in PINNED if q != "node:n1"}
    assert starved_pools(PINNED, left_out_node, running={None})
    assert not starved_pools(PINNED, left_out_node, running={"g:0"})  # nothing ends there
    only_node = {"node:n1": 1}
    assert starved_pools(PINNED, only_node, running={"g:1"})  # pg:g:1 and pg:g:any
    assert not starved_pools(PINNED, only_node, running={"h:0"})  # another group
    assert starved_pools(["node:n1", "pg:g:any"], only_node, running={"g:7"})
    assert not starved_pools(PINNED, {}, running=set())


def test_a_pool_with_room_wakes_a_read_that_leaves_out_a_queue_it_could_read() -> None:
    # (what the agent's _wake_lease_for decides, with the counts it computes anew)
    assert scheduler.read_left_out({"CPU=1", "node:n1", "pg:g:0"}, {"CPU=1": 1, "pg:g:1": 1})
    assert not scheduler.read_left_out({"CPU=1", "node:n1", "pg:g:0"}, {"CPU=1": 2, "pg:g:0": 1})
    assert scheduler.read_left_out({"none"}, {"none": 16, "CPU=1": 1})  # the 0-CPU queue alone


# ---- GPU ids ------------------------------------------------------------------------------


def test_fractions_pack_onto_the_fullest_gpu_that_fits() -> None:
    r = NodeResources({"CPU": 1, "GPU": 3})
    half = r.assign_gpus(0.5)
    quarter = r.assign_gpus(0.25)
    assert half == quarter == [0]  # packed, leaving whole GPUs for whole demands
    assert r.assign_gpus(2) == [1, 2]
    assert r.assign_gpus(0.5) == []  # 0.25 left on GPU 0 only
    assert r.assign_gpus(0.25) == [0]
    r.free_gpus([1, 2])
    r.free_gpus([0], 0.25)
    r.free_gpus([0], 0.25)
    assert r.gpu_free == {0: 0.5, 1: 1.0, 2: 1.0}
    r.free_gpus([0], 0.5)
    r.free_gpus([0], 0.5)  # a double free never makes more than one GPU
    assert r.gpu_free[0] == 1.0


def test_no_gpu_demand_gets_no_ids() -> None:
    r = NodeResources({"CPU": 1, "GPU": 1})
    assert r.has_gpus and r.assign_gpus(0) == [] and r.assign_gpus(-1) == []
    assert r.gpu_free == {0: 1.0}
