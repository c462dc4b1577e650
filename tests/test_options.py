"""Bad options are rejected at decoration and in .options(), naming the option, with
the exception types Ray raises (validation happens before submission: no cluster needed,
except to see max_calls recycle workers)."""

from __future__ import annotations

import pytest

import taskmesh


def f():
    return 1


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_returns": -1}, ValueError, "num_returns"),
        ({"max_retries": -2}, ValueError, "max_retries"),
        ({"num_cpus": "x"}, TypeError, "num_cpus"),
        ({"num_cpus": -1}, ValueError, "num_cpus"),
        ({"num_gpus": 1.5}, ValueError, "num_gpus"),
        ({"resources": {"CPU": 1}}, ValueError, "num_cpus"),
        ({"resources": {"disk": "lots"}}, ValueError, "disk"),
        ({"retry_exceptions": [1]}, ValueError, "retry_exceptions"),
        ({"retry_exceptions": "yes"}, TypeError, "retry_exceptions"),
        ({"max_calls": -1}, ValueError, "max_calls"),
        ({"max_restarts": 1}, ValueError, "max_restarts"),  # an actor option
        ({"no_such_option": 1}, ValueError, "no_such_option"),
        ({"scheduling_strategy": "RANDOM"}, ValueError, "scheduling_strategy"),
    ],
)
def test_bad_options_raise_naming_the_option(options, error, match) -> None:
    with pytest.raises(error, match=match):
        taskmesh.remote(**options)(f)
    good = taskmesh.remote(f)
    with pytest.raises(error, match=match):
        good.options(**options)


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Valid ones are") as info:
        taskmesh.remote(num_cpu=1)(f)
    assert "num_cpus" in str(info.value)


def test_valid_but_unsupported_ray_options_are_not_silently_ignored() -> None:
    with pytest.raises(NotImplementedError, match="runtime_env"):
        taskmesh.remote(runtime_env={"image_uri": "anyscale/ray:latest"})(f)


def test_remote_on_non_callables_and_positional_args() -> None:
    # As Ray: the decorator's form is asserted.
    with pytest.raises(AssertionError):
        taskmesh.remote(5)
    with pytest.raises(AssertionError, match="@remote decorator"):
        taskmesh.remote(f, num_cpus=1)
    with pytest.raises(TypeError, match="function or a class"):
        taskmesh.remote(num_cpus=1)(5)


def test_api_before_init_is_a_clear_error() -> None:
    assert not taskmesh.is_initialized()
    with pytest.raises(RuntimeError, match="init"):
        taskmesh.get_gpu_ids()


# ---- parity with Ray's option table (ray/_common/ray_option_utils.py) ------------------------


def gen():
    yield 1


class Actor:
    def method(self):
        return 1


# (options, exception Ray raises or None) for @remote on a function, checked against Ray.
TASK_CASES = [
    ({"num_returns": "foo"}, TypeError),  # Ray's check compares the string with 0
    ({"num_returns": 1.5}, TypeError),
    ({"num_returns": None}, None),
    ({"max_retries": -1}, None),
    ({"max_retries": None}, None),
    ({"max_retries": 1.0}, TypeError),
    ({"max_calls": 0}, None),
    ({"max_calls": None}, None),
    ({"num_cpus": 1.5}, None),
    ({"num_cpus": 0.00001}, ValueError),
    ({"memory": -5}, ValueError),
    ({"retry_exceptions": [KeyboardInterrupt]}, ValueError),  # Exception subclasses only
    ({"retry_exceptions": (ValueError,)}, None),
    ({"max_task_retries": 1}, ValueError),
    ({"max_concurrency": 2}, ValueError),
    ({"lifetime": "detached"}, ValueError),
    ({"namespace": "x"}, ValueError),
    ({"get_if_exists": True}, ValueError),
    ({"concurrency_groups": {"a": 1}}, ValueError),
    ({"max_pending_calls": 1}, ValueError),
    ({"object_store_memory": 10}, ValueError),  # "not implemented for tasks", in Ray too
    ({"object_store_memory": 1.5}, TypeError),
    ({"_generator_backpressure_num_objects": 0}, ValueError),
    ({"_num_objects_per_yield": 0}, ValueError),
    ({"enable_task_events": 1}, TypeError),
    ({"name": 3}, TypeError),
    ({"accelerator_type": 3}, TypeError),
    ({"label_selector": 3}, TypeError),
    ({"fallback_strategy": 3}, TypeError),
    ({"_labels": 3}, TypeError),
    ({"_metadata": {}}, ValueError),  # not a Ray 2.x option
]

# The same for @remote on a class.
ACTOR_CASES = [
    ({"num_returns": 1}, ValueError),
    ({"max_calls": 1}, ValueError),
    ({"max_retries": 1}, ValueError),
    ({"retry_exceptions": True}, ValueError),
    ({"_generator_backpressure_num_objects": 1}, ValueError),
    ({"max_restarts": -2}, ValueError),
    ({"max_restarts": -1}, None),
    ({"max_restarts": None}, None),
    ({"max_restarts": 1.0}, TypeError),
    ({"max_task_retries": -2}, ValueError),
    ({"max_task_retries": None}, None),
    ({"max_concurrency": -1}, ValueError),
    ({"lifetime": "forever"}, ValueError),
    ({"namespace": 3}, TypeError),
    ({"get_if_exists": 1}, TypeError),
    ({"get_if_exists": True}, ValueError),  # needs a name
    ({"get_if_exists": True, "name": "a"}, None),
    ({"max_pending_calls": -2}, ValueError),
    ({"max_pending_calls": -1}, None),
    ({"max_pending_calls": "x"}, TypeError),
    ({"allow_out_of_order_execution": 1}, TypeError),
    ({"enable_tensor_transport": 1}, TypeError),
    ({"_actor_generator_backpressure_num_objects": 0}, ValueError),
    ({"_actor_generator_backpressure_num_objects": -1}, None),
    ({"concurrency_groups": 3}, TypeError),
    ({"object_store_memory": -1}, ValueError),
    ({"num_cpus": 1.5}, None),
    ({"memory": -1}, ValueError),
]


@pytest.mark.parametrize(("options", "error"), TASK_CASES, ids=str)
def test_task_options_as_ray(options, error) -> None:
    if error is None:
        taskmesh.remote(**options)(f)
        if "max_calls" not in options:  # only the decorator may set it (as Ray)
            taskmesh.remote(f).options(**options)
        return
    name = next(iter(options))
    with pytest.raises(error, match=name):
        taskmesh.remote(**options)(f)
    with pytest.raises(error, match=name):
        taskmesh.remote(f).options(**options)


@pytest.mark.parametrize(("options", "error"), ACTOR_CASES, ids=str)
def test_actor_options_as_ray(options, error) -> None:
    if error is None:
        taskmesh.remote(**options)(Actor)
        taskmesh.remote(Actor).options(**options)
        return
    name = next(iter(options))
    with pytest.raises(error, match=name):
        taskmesh.remote(**options)(Actor)
    with pytest.raises(error, match=name):
        taskmesh.remote(Actor).options(**options)


def test_options_only_the_decorator_may_set() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        taskmesh.remote(f).options(max_calls=2)
    taskmesh.remote(max_calls=2)(f).options(num_cpus=1)  # kept from the decorator
    with pytest.raises(ValueError, match="concurrency_groups"):
        taskmesh.remote(Actor).options(concurrency_groups={"io": 2})
    with pytest.raises(ValueError, match="get_if_exists"):
        taskmesh.remote(Actor).options(get_if_exists=True)
    taskmesh.remote(name="a")(Actor).options(get_if_exists=True)  # the name comes with the class


def test_generator_num_returns_as_ray() -> None:
    with pytest.raises(ValueError, match="generator"):
        taskmesh.remote(num_returns="streaming")(f)
    with pytest.raises(ValueError, match="generator"), pytest.warns(DeprecationWarning):
        taskmesh.remote(f).options(num_returns="dynamic")
    taskmesh.remote(num_returns="streaming")(gen)
    taskmesh.remote(gen).options(num_returns=1)  # a generator may return one object
    with pytest.warns(DeprecationWarning, match="dynamic"):
        taskmesh.remote(num_returns="dynamic")(gen)

    async def coroutine():
        return 1

    with pytest.raises(ValueError, match="async def"):
        taskmesh.remote(coroutine)


def test_valid_ray_options_taskmesh_lacks_raise_not_implemented_unless_default() -> None:
    with pytest.raises(NotImplementedError, match="_num_objects_per_yield"):
        taskmesh.remote(_num_objects_per_yield=2)(gen)
    taskmesh.remote(_num_objects_per_yield=1)(gen)  # Ray's default
    with pytest.raises(NotImplementedError, match="max_pending_calls"):
        taskmesh.remote(max_pending_calls=5)(Actor)
    with pytest.raises(NotImplementedError, match="allow_out_of_order_execution"):
        taskmesh.remote(allow_out_of_order_execution=True)(Actor)
    taskmesh.remote(allow_out_of_order_execution=False)(Actor)
    with pytest.warns(DeprecationWarning, match="object_store_memory"):
        taskmesh.remote(object_store_memory=10**6)(Actor)  # accepted and ignored, as Ray


def test_method_decorator_as_ray() -> None:
    @taskmesh.method  # bare, as @ray.method
    def plain(self):
        return 1

    assert plain(None) == 1
    with pytest.raises(AssertionError, match="bogus"):
        taskmesh.method(bogus=3)
    with pytest.raises(ValueError, match="generator"):
        taskmesh.method(num_returns="streaming")(plain)
    with pytest.raises(ValueError, match="num_returns"):
        taskmesh.method(num_returns=-1)(plain)
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        taskmesh.method(_generator_backpressure_num_objects=0)
    with pytest.raises(NotImplementedError, match="tensor_transport"):
        taskmesh.method(tensor_transport="nccl")


@pytest.mark.slow
def test_max_calls_recycles_the_worker(ray) -> None:
    @ray.remote(max_calls=2)
    def pid():
        import os

        return os.getpid()

    pids = [ray.get(pid.remote()) for _ in range(6)]
    counts = {p: pids.count(p) for p in pids}
    assert max(counts.values()) <= 2, pids  # no worker runs it a third time
    assert len(counts) >= 3, pids  # the agent started new workers in their place

    @ray.remote(max_calls=1, max_retries=0)
    def once():
        import os

        return os.getpid()

    # Submitted together: a retiring worker is never handed another task (which would
    # die with it, here with no retry left).
    assert len(set(ray.get([once.remote() for _ in range(8)]))) == 8

    @ray.remote
    def unlimited():
        import os

        return os.getpid()

    many = [ray.get(unlimited.remote()) for _ in range(6)]
    assert len(set(many)) < 6  # without max_calls, workers are reused
