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
