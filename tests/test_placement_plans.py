"""Placing a placement group, decided without Redis: `try_place` reads the group, the
live nodes and their reservations from a store and hands `reserve_pg` a plan; here the
store is a plain object holding those values (the Lua script that reserves is tested on
a real Redis in tests/test_placement_groups.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from taskmesh import scheduler
from taskmesh._core.placement import try_place


@dataclass
class GroupStore:
    """The store methods `try_place` uses, over plain values."""

    totals: dict[str, dict[str, float]]  # node -> total resources
    dead: set[str] = field(default_factory=set)
    reserved: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # node -> bundle -> res
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    reserve_result: int = 1
    plans: list[tuple[str, dict[int, tuple[str, dict[str, float]]]]] = field(default_factory=list)

    def add_group(self, pg_id: str, bundles: list[dict[str, float]], strategy: str,
                  state: str = "PENDING", bundle_nodes: dict[int, str] | None = None) -> None:
        self.groups[pg_id] = {"pg_id": pg_id, "bundles": bundles, "strategy": strategy,
                              "state": state, "bundle_nodes": bundle_nodes or {}}

    def pg_info(self, pg_id: str) -> dict[str, Any] | None:
        return self.groups.get(pg_id)

    def nodes(self) -> list[dict[str, Any]]:
        return [{"node_id": n, "alive": n not in self.dead, "resources_total": t}
                for n, t in self.totals.items()]

    def reservations(self, node_ids: list[str]) -> dict[str, dict[str, dict[str, float]]]:
        return {n: self.reserved.get(n, {}) for n in node_ids}

    def reserve_pg(self, pg_id: str, plan: dict[int, tuple[str, dict[str, float]]]) -> int:
        self.plans.append((pg_id, plan))
        return self.reserve_result


def test_a_group_that_fits_is_reserved_as_planned() -> None:
    store = GroupStore({"a": {"CPU": 2}, "b": {"CPU": 2}})
    store.add_group("pg1", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    assert try_place(store, "pg1") == "placed"
    assert store.plans == [("pg1", {0: ("a", {"CPU": 1}), 1: ("b", {"CPU": 1})})]


def test_reservations_already_made_on_a_node_are_not_free() -> None:
    store = GroupStore({"a": {"CPU": 2}, "b": {"CPU": 2}},
                       reserved={"a": {"old:0": {"CPU": 2}}})
    store.add_group("pg1", [{"CPU": 2}], "PACK")
    assert try_place(store, "pg1") == "placed"
    assert store.plans[0][1] == {0: ("b", {"CPU": 2})}
    store.reserved["b"] = {"other:0": {"CPU": 1}}
    store.add_group("pg2", [{"CPU": 2}], "PACK")
    assert try_place(store, "pg2") == "waiting"  # it would fit once a group goes
    assert len(store.plans) == 1


def test_a_group_no_live_node_set_could_ever_hold_is_infeasible() -> None:
    store = GroupStore({"a": {"CPU": 2}, "b": {"CPU": 2}, "big": {"CPU": 8}}, dead={"big"})
    store.add_group("pack", [{"CPU": 2}, {"CPU": 1}], "STRICT_PACK")
    store.add_group("spread", [{"CPU": 1}] * 3, "STRICT_SPREAD")
    store.add_group("gpu", [{"GPU": 1}], "PACK")
    assert [try_place(store, g) for g in ("pack", "spread", "gpu")] == ["infeasible"] * 3
    store.dead.clear()  # the big node comes back
    assert try_place(store, "pack") == "placed"
    assert store.plans == [("pack", {0: ("big", {"CPU": 2}), 1: ("big", {"CPU": 1})})]


def test_a_lost_race_for_the_reservation_waits_for_the_next_try() -> None:
    store = GroupStore({"a": {"CPU": 1}}, reserve_result=0)
    store.add_group("pg1", [{"CPU": 1}], "PACK")
    assert try_place(store, "pg1") == "waiting"


@pytest.mark.parametrize("state", ["CREATED", "REMOVED"])
def test_only_pending_or_rescheduling_groups_are_placed(state: str) -> None:
    store = GroupStore({"a": {"CPU": 1}})
    store.add_group("pg1", [{"CPU": 1}], "PACK", state=state)
    assert try_place(store, "pg1") == "gone"
    assert try_place(store, "unknown") == "gone"
    assert store.plans == []


def test_a_rescheduled_group_places_only_the_bundles_of_dead_nodes() -> None:
    store = GroupStore({"a": {"CPU": 2}, "b": {"CPU": 2}, "c": {"CPU": 2}}, dead={"b"},
                       reserved={"a": {"pg1:0": {"CPU": 1}}})
    store.add_group("pg1", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD", state="RESCHEDULING",
                    bundle_nodes={0: "a", 1: "b"})
    assert try_place(store, "pg1") == "placed"
    assert store.plans == [("pg1", {1: ("c", {"CPU": 1})})]  # not a: it holds bundle 0


def test_a_strict_pack_group_rescheduled_stays_on_its_surviving_node() -> None:
    store = GroupStore({"a": {"CPU": 2}, "b": {"CPU": 4}}, reserved={"a": {"pg1:0": {"CPU": 1}}})
    store.add_group("pg1", [{"CPU": 1}, {"CPU": 1}], "STRICT_PACK", state="RESCHEDULING",
                    bundle_nodes={0: "a"})
    assert try_place(store, "pg1") == "placed"
    assert store.plans == [("pg1", {1: ("a", {"CPU": 1})})]
    store.reserved["a"]["x:0"] = {"CPU": 1}  # a is full now: the group waits for it
    assert try_place(store, "pg1") == "waiting"


# ---- the plans themselves (see also tests/test_scheduler.py) ------------------------------


def test_pack_fills_the_node_its_placed_bundles_use_first() -> None:
    free = {"a": {"CPU": 4}, "b": {"CPU": 4}}
    assert scheduler.plan_bundles({1: {"CPU": 1}}, "PACK", free, fixed={0: "b"}) == {1: "b"}
    assert scheduler.plan_bundles({1: {"CPU": 1}}, "SPREAD", free, fixed={0: "b"}) == {1: "a"}


def test_plans_try_larger_bundles_first_and_are_deterministic() -> None:
    free = {"a": {"CPU": 3}, "b": {"CPU": 2}}
    bundles = {0: {"CPU": 1}, 1: {"CPU": 3}, 2: {"CPU": 1}}
    plan = scheduler.plan_bundles(bundles, "PACK", free)
    assert plan == {1: "a", 0: "b", 2: "b"}  # 3 CPUs first, or it would not fit
    assert all(scheduler.plan_bundles(bundles, "PACK", dict(reversed(free.items()))) == plan
               for _ in range(3))


def test_strict_spread_backtracks_to_a_plan_that_exists() -> None:
    free = {"a": {"CPU": 1, "GPU": 1}, "b": {"CPU": 1}, "c": {"CPU": 1, "GPU": 1}}
    bundles = {0: {"GPU": 1}, 1: {"GPU": 1}, 2: {"CPU": 1}}
    assert scheduler.plan_bundles(bundles, "STRICT_SPREAD", free) == {0: "a", 1: "c", 2: "b"}


def test_feasible_anywhere_looks_at_each_node_alone() -> None:
    totals = [{"CPU": 2}, {"CPU": 1, "GPU": 1}]
    assert scheduler.feasible_anywhere({"CPU": 1, "GPU": 1}, totals)
    assert not scheduler.feasible_anywhere({"CPU": 3}, totals)  # 3 CPUs exist, not on one node
    assert not scheduler.feasible_anywhere({"CPU": 1}, [])
