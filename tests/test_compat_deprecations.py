"""Ray's deprecation warnings and the options Ray 2.60 still accepts: the placement-group
task and actor options, `object_store_memory` in bundles, `placement_group()`'s
arguments, `py_modules` as `file://` URIs of zip files, and `__ray_invocation_decorator__`."""

from __future__ import annotations

import sys
import warnings
import zipfile
from pathlib import Path

import cloudpickle
import pytest

from taskmesh._base.deprecation import RayDeprecationWarning
from taskmesh.util.placement_group import placement_group, remove_placement_group
from taskmesh.util.scheduling_strategies import PlacementGroupSchedulingStrategy

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _deprecations(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RayDeprecationWarning)]


def test_placement_group_options_warn_and_still_place(ray) -> None:
    @ray.remote(num_cpus=0.5)
    def where():
        return ray.get_runtime_context().get_placement_group_id()

    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=30)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ref = where.options(placement_group=pg, placement_group_bundle_index=0,
                                placement_group_capture_child_tasks=True).remote()
        messages = _deprecations(record)
        for name in ("placement_group", "placement_group_bundle_index",
                     "placement_group_capture_child_tasks"):
            assert any(f"{name} parameter is deprecated. Use scheduling_strategy="
                       "PlacementGroupSchedulingStrategy(...) instead" in m for m in messages), messages
        assert all(w.filename == __file__ for w in record if issubclass(w.category, RayDeprecationWarning))
        assert ray.get(ref, timeout=30) == pg.id.hex()  # still honoured

        # The strategy object warns about nothing; both at once is Ray's ValueError.
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
            assert ray.get(where.options(scheduling_strategy=strategy).remote(), timeout=30) == pg.id.hex()
        assert _deprecations(record) == []
        with pytest.raises(ValueError, match="The placement_group option is deprecated"), \
                warnings.catch_warnings(action="ignore"):
            where.options(placement_group=pg, scheduling_strategy="SPREAD").remote()

        @ray.remote(num_cpus=0.5)
        class Actor:
            def pg(self):
                return ray.get_runtime_context().get_placement_group_id()

        with pytest.warns(RayDeprecationWarning, match="placement_group parameter is deprecated"):
            actor = Actor.options(placement_group=pg).remote()
        assert ray.get(actor.pg.remote(), timeout=30) == pg.id.hex()
        ray.kill(actor)
    finally:
        remove_placement_group(pg)


def test_object_store_memory_in_a_bundle_warns_and_reserves_nothing(ray) -> None:
    with pytest.warns(RayDeprecationWarning, match="Setting 'object_store_memory' for bundles is "
                                                   "deprecated"):
        pg = placement_group([{"CPU": 1, "object_store_memory": 50 * 1024 * 1024}])
    try:
        assert pg.bundle_specs == [{"CPU": 1.0}]
        ray.get(pg.ready(), timeout=30)
    finally:
        remove_placement_group(pg)


def test_placement_group_takes_ray_2_60_arguments(ray) -> None:
    node_id = ray.get_runtime_context().get_node_id()
    # A soft target is a hint: checked as Ray checks it, then the group is placed as usual.
    pg = placement_group([{"CPU": 1}], strategy="STRICT_PACK", _soft_target_node_id=node_id,
                         bundle_label_selector=[{}])
    try:
        ray.get(pg.ready(), timeout=30)
    finally:
        remove_placement_group(pg)
    pg = placement_group([{"CPU": 1}], topology_strategy={"ray.io/node-id": "SPREAD"})
    try:
        ray.get(pg.ready(), timeout=30)
        assert ray.util.placement_group_table(pg)["strategy"] == "SPREAD"
    finally:
        remove_placement_group(pg)

    with pytest.raises(ValueError, match="_soft_target_node_id currently only works with STRICT_PACK "
                                         "but got PACK"):
        placement_group([{"CPU": 1}], _soft_target_node_id=node_id)
    with pytest.raises(ValueError, match="Invalid hex ID of _soft_target_node_id, got zz"):
        placement_group([{"CPU": 1}], strategy="STRICT_PACK", _soft_target_node_id="zz")
    with pytest.raises(ValueError, match="`strategy` and `topology_strategy` cannot both be specified"):
        placement_group([{"CPU": 1}], strategy="PACK", topology_strategy={"ray.io/node-id": "PACK"})
    with pytest.raises(ValueError, match="Invalid topology strategy 'NEAR'"):
        placement_group([{"CPU": 1}], topology_strategy={"ray.io/node-id": "NEAR"})
    with pytest.raises(ValueError, match="The length of `bundle_label_selector` should equal"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{}, {}])
    with pytest.raises(ValueError, match="Bundle label selector must be a list of string dictionary"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{"a": 1}])
    with pytest.raises(NotImplementedError, match="bundle_label_selector"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{"ray.io/market-type": "spot"}])
    with pytest.raises(NotImplementedError, match="topology_strategy"):
        placement_group([{"CPU": 1}], topology_strategy={"ray.io/gpu-domain": "STRICT_PACK"})
    with pytest.raises(TypeError):  # gone from Ray 2.60's signature
        placement_group([{"CPU": 1}], _max_cpu_fraction_per_node=0.5)  # type: ignore[call-arg]


def test_py_modules_takes_a_file_uri_of_a_zip(ray, tmp_path: Path) -> None:
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as z:  # one top-level directory, dropped as Ray does
        z.writestr("wrapper/zipped_mod_tm/__init__.py", "VALUE = 'from the zip'\n")

    @ray.remote
    def value():
        import zipped_mod_tm

        return zipped_mod_tm.VALUE

    uri = archive.as_uri()
    assert uri.startswith("file://")
    env = {"py_modules": [uri]}
    assert ray.get(value.options(runtime_env=env).remote(), timeout=60) == "from the zip"

    with pytest.raises(ValueError, match=r"Only \.zip, \.whl, \.tar\.gz, \.tgz, \.tar\.xz files are "
                                         "supported for py_modules URIs"):
        value.options(runtime_env={"py_modules": [tmp_path.as_uri()]}).remote()
    with pytest.raises(ValueError, match="is not a zip file"):
        value.options(runtime_env={"py_modules": [(tmp_path / "missing.zip").as_uri()]}).remote()


def _logged(invocation):
    """An invocation decorator as Ray's docs describe: it wraps invocation(args, kwargs)."""
    def wrapper(args, kwargs):
        return [invocation([a * 10 for a in args], kwargs), "wrapped"]

    return wrapper


def test_ray_invocation_decorator_wraps_calls_on_the_callers_side(ray) -> None:
    @ray.remote
    class Echo:
        def echo(self, x):
            return x

        echo.__ray_invocation_decorator__ = _logged

        def plain(self, x):
            return x

    actor = Echo.remote()
    ref, tag = actor.echo.remote(2)
    assert tag == "wrapped" and ray.get(ref, timeout=30) == 20
    assert ray.get(actor.plain.remote(2), timeout=30) == 2
    ref, tag = actor.echo.options(num_returns=1).remote(3)  # kept by .options()
    assert ray.get(ref, timeout=30) == 30

    # A handle looked up by name, built from what the cluster stores, keeps it too.
    named = Echo.options(name="decorated_echo").remote()
    ref, tag = ray.get_actor("decorated_echo").echo.remote(4)
    assert tag == "wrapped" and ray.get(ref, timeout=30) == 40
    ray.kill(named)
    ray.kill(actor)

    def double(x):
        return x

    double.__ray_invocation_decorator__ = _logged
    ref, tag = ray.remote(double).remote(5)
    assert tag == "wrapped" and ray.get(ref, timeout=30) == 50
