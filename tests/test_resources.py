"""The node agent's resource book, as plain values (no processes)."""

from __future__ import annotations

from taskmesh.workers.resources import NodeResources


def test_bundles_are_pools_of_their_own() -> None:
    r = NodeResources({"CPU": 4, "GPU": 2})
    r.set_reservations({"pg1:0": {"CPU": 2}, "pg1:1": {"CPU": 1, "GPU": 1}})
    assert r.available == {"CPU": 1, "GPU": 1} and r.unreserved() == {"CPU": 1, "GPU": 1}
    assert r.pool_for("CPU=1", {"CPU": 1}) is None
    assert r.pool_for("CPU=2", {"CPU": 2}) is False
    assert r.pool_for("pg:pg1:0", {"CPU": 2}) == "pg1:0"
    assert r.pool_for("pg:pg1:1", {"CPU": 2}) is False
    assert r.pool_for("pg:pg1:any", {"GPU": 1}) == "pg1:1"
    assert r.pool_for("pg:other:0", {"CPU": 1}) is False
    r.take("pg1:0", {"CPU": 2})
    assert r.pool_for("pg:pg1:any", {"CPU": 1}) == "pg1:1"
    # the group is removed while its task runs: the task gives back to the node
    r.set_reservations({})
    assert r.available == {"CPU": 2, "GPU": 2} and r.bundles == {}
    r.give("pg1:0", {"CPU": 2})
    assert r.available == {"CPU": 4, "GPU": 2}


def test_pinned_counts_read_nothing_without_room() -> None:
    r = NodeResources({"CPU": 2})
    queues = r.pinned_queues("n1")
    assert queues == ["node:n1"]
    assert r.pinned_counts(queues, {}, {}) == {"node:n1": 4}  # 2 running + 2 waiting
    r.take(None, {"CPU": 2})
    assert r.pinned_counts(queues, {"CPU": 2}, {"node:n1": 2}) == {}
    r.set_reservations({"g:0": {"CPU": 0}})  # a bundle without CPUs: zero-CPU slots
    queues = r.pinned_queues("n1")
    assert queues == ["node:n1", "pg:g:0", "pg:g:any"]
    counts = r.pinned_counts(queues, {"CPU": 2}, {})
    assert "node:n1" not in counts and counts["pg:g:0"] > 0


def test_gpu_ids_whole_and_shared() -> None:
    r = NodeResources({"CPU": 1, "GPU": 2})
    a = r.assign_gpus(1)
    b = r.assign_gpus(0.5)
    c = r.assign_gpus(0.5)
    assert len(a) == 1 and b == c and b != a  # the halves share the other GPU
    assert r.assign_gpus(1) == []  # none whole left
    r.free_gpus(b, 0.5)
    r.free_gpus(c, 0.5)
    assert r.assign_gpus(1) == b
    r.free_gpus(a)
    assert sorted(r.gpu_free) == [0, 1]
    assert NodeResources({"CPU": 1}).assign_gpus(1) == [] and not NodeResources({"CPU": 1}).has_gpus
