"""Bad options are rejected at decoration and in .options(), naming the option, with
the exception types Ray raises. No cluster needed: validation happens before submission."""

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
        taskmesh.remote(runtime_env={"env_vars": {"A": "1"}})(f)


def test_remote_on_non_callables_and_positional_args() -> None:
    with pytest.raises(TypeError):
        taskmesh.remote(5)
    with pytest.raises(TypeError, match="@remote decorator"):
        taskmesh.remote(f, num_cpus=1)
    with pytest.raises(TypeError, match="function or a class"):
        taskmesh.remote(num_cpus=1)(5)


def test_api_before_init_is_a_clear_error() -> None:
    assert not taskmesh.is_initialized()
    with pytest.raises(RuntimeError, match="init"):
        taskmesh.get_runtime_context()
