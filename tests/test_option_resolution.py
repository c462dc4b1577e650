"""What a task's options resolve to, without a cluster: defaults, resource demand,
the scheduling strategy (with Ray's deprecated placement_group options folded in) and
the runtime_env a child inherits. tests/test_options.py holds Ray's option table."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskmesh import runtime_env
from taskmesh._base import queues
from taskmesh._core import options
from taskmesh._core.strategies import (
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    PlacementGroupID,
    PlacementGroupSchedulingStrategy,
)


class Group:
    """What the strategies need of a placement-group handle."""

    def __init__(self, hex_id: str):
        self.id = PlacementGroupID(hex_id)


# ---- defaults and demand -------------------------------------------------------------------


def test_resolved_fills_the_tables_defaults_and_ignores_none() -> None:
    task = options.resolved({"num_cpus": 2, "max_retries": None}, options.TASK_OPTIONS)
    assert task["num_cpus"] == 2 and task["max_retries"] == 3 and task["num_returns"] is None
    assert task["retry_exceptions"] is False and task["placement_group"] == "default"
    assert set(task) == set(options.TASK_OPTIONS)
    actor = options.resolved({}, options.ACTOR_OPTIONS)
    assert (actor["max_restarts"], actor["max_task_retries"], actor["max_pending_calls"]) == (0, 0, -1)


@pytest.mark.parametrize(("given", "demand"), [
    ({}, {"CPU": 1.0}),  # Ray's default: one CPU
    ({"num_cpus": 0}, {"CPU": 0.0}),
    ({"num_cpus": 0.5, "num_gpus": 1, "memory": 2**30}, {"CPU": 0.5, "GPU": 1.0, "memory": 2.0**30}),
    ({"num_gpus": 0, "memory": 0, "resources": {"disk": 2}}, {"CPU": 1.0, "disk": 2.0}),
])
def test_task_demand(given: dict, demand: dict[str, float]) -> None:
    assert options.task_demand(given) == demand


def test_a_zero_cpu_task_has_the_no_demand_shape() -> None:
    assert queues.shape_name(options.task_demand({"num_cpus": 0})) == queues.NO_DEMAND


def test_validate_returns_the_options_unchanged_or_names_the_bad_one() -> None:
    given = {"num_cpus": 1, "name": "x"}
    assert options.validate(given, options.TASK_OPTIONS, "remote functions") == given
    with pytest.raises(ValueError,
                       match=r"Invalid option keyword lifetime for remote functions\. Valid ones are \["):
        options.validate({"lifetime": "detached"}, options.TASK_OPTIONS, "remote functions")


# ---- scheduling strategies ---------------------------------------------------------------


def test_placement_group_options_fold_into_a_strategy() -> None:
    assert options.strategy_of({}) is None
    assert options.strategy_of({"scheduling_strategy": "SPREAD", "placement_group": "default"}) == "SPREAD"
    group = Group("p1")
    folded = options.strategy_of({"placement_group": group, "placement_group_bundle_index": 1,
                                  "placement_group_capture_child_tasks": True})
    assert isinstance(folded, PlacementGroupSchedulingStrategy)
    assert (folded.placement_group, folded.placement_group_bundle_index,
            folded.placement_group_capture_child_tasks) == (group, 1, True)
    assert options.strategy_of({"placement_group": group}).placement_group_bundle_index == -1
    with pytest.raises(ValueError, match="placement_group option is deprecated"):
        options.strategy_of({"placement_group": group, "scheduling_strategy": "SPREAD"})


@pytest.mark.parametrize(("value", "error", "match"), [
    ("NEAREST", ValueError, "Invalid scheduling_strategy 'NEAREST'"),
    (42, TypeError, "scheduling_strategy"),
    (NodeAffinitySchedulingStrategy("n1", soft=True), None, None),
    (PlacementGroupSchedulingStrategy(Group("p1"), 0), None, None),
    ("DEFAULT", None, None),
])
def test_strategy_option(value: object, error: type[Exception] | None, match: str | None) -> None:
    table = options.TASK_OPTIONS
    if error is None:
        options.validate({"scheduling_strategy": value}, table, "remote functions")
        return
    with pytest.raises(error, match=match):
        options.validate({"scheduling_strategy": value}, table, "remote functions")


def test_strategies_check_their_arguments_and_print_as_ray() -> None:
    with pytest.raises(TypeError, match="node_id must be a hex string"):
        NodeAffinitySchedulingStrategy(node_id=7, soft=False)  # type: ignore[arg-type]
    soft_int = NodeAffinitySchedulingStrategy("n1", soft=1)  # type: ignore[arg-type]
    assert repr(soft_int) == "NodeAffinitySchedulingStrategy(node_id='n1', soft=True)"
    assert "placement_group=p1" in repr(PlacementGroupSchedulingStrategy(Group("p1")))
    with pytest.raises(NotImplementedError, match="node labels"):
        NodeLabelSchedulingStrategy({"zone": "a"})
    assert PlacementGroupID("p") == PlacementGroupID("p")
    assert len({PlacementGroupID("p"), PlacementGroupID("p")}) == 1


# ---- runtime_env ----------------------------------------------------------------------------


def test_a_childs_runtime_env_merges_env_vars_and_replaces_the_rest() -> None:
    parent = {"env_vars": {"A": "1", "B": "1"}, "working_dir": "pkg://parent"}
    child = {"env_vars": {"B": "2"}, "py_modules": ["pkg://m"]}
    assert runtime_env.merge(parent, child) == {
        "env_vars": {"A": "1", "B": "2"}, "working_dir": "pkg://parent", "py_modules": ["pkg://m"]}
    assert runtime_env.merge(parent, {"working_dir": "pkg://child"})["working_dir"] == "pkg://child"
    assert runtime_env.merge(None, child) == child and runtime_env.merge(parent, None) == parent
    assert runtime_env.merge(parent, {}) is not parent  # a copy
    assert runtime_env.merge(None, None) is None


def test_runtime_env_validation_normalizes_what_it_accepts(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text("")
    checked = runtime_env.validate({"env_vars": {}, "working_dir": str(tmp_path),
                                    "py_modules": [module], "excludes": []})
    assert checked == {"working_dir": str(tmp_path.resolve()), "py_modules": [str(module.resolve())]}
    assert runtime_env.validate({}) is None and runtime_env.validate(None) is None
    stored = runtime_env.PKG_SCHEME + "abc"  # a package this cluster stored: kept as it is
    assert runtime_env.validate({"working_dir": stored}) == {"working_dir": stored}


@pytest.mark.parametrize(("value", "error", "match"), [
    ("env_vars", TypeError, "must be a dict"),
    ({"env_vars": {"A": 1}}, TypeError, r"Dict\[str, str\]"),
    ({"envvars": {}}, ValueError, "Unknown runtime_env field 'envvars'"),
    ({"image_uri": "img"}, NotImplementedError, "'image_uri'"),
    ({"conda": 1}, TypeError, r"runtime_env\['conda'\] must be of type str or dict"),
    ({"pip": "/no/such/requirements.txt"}, ValueError, "is not a valid file"),
    ({"uv": {"packages": 3}}, TypeError, r"runtime_env\['uv'\] must be of type"),
    ({"pip": ["a"], "conda": "env"}, ValueError, "cannot be specified at the same time"),
    ({"container": {"image": "x"}, "pip": ["a"]}, ValueError, "'container' field currently"),
    ({"working_dir": "s3://bucket/dir"}, NotImplementedError, "Remote URIs"),
    ({"working_dir": "/no/such/dir"}, ValueError, "not a valid local directory"),
    ({"py_modules": "mod"}, TypeError, "list of strings"),
    ({"excludes": "*.pyc"}, TypeError, r"List\[str\]"),
])
def test_bad_runtime_envs_raise_rays_error_types(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        runtime_env.validate(value)  # type: ignore[arg-type]
