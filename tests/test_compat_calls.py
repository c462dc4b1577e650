"""Calls as Ray checks them: arguments bound against the signature at `.remote()`, the
decorator's form, definitions too large to export, reserved resource names and
namespaces, and `get`/`wait` on error and empty inputs. Each test is written from Ray's
documented behaviour."""

from __future__ import annotations

import time

import pytest

import taskmesh


def f(a, b=2, *, c):
    return a + b + c


def test_remote_binds_arguments_at_once() -> None:
    # Raised in the caller, before anything starts: no cluster is needed to see it.
    remote_f = taskmesh.remote(f)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        remote_f.remote(c=1)
    with pytest.raises(TypeError, match="missing a required argument: 'c'"):
        remote_f.remote(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        remote_f.remote(1, 2, 3, c=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        remote_f.remote(1, c=1, d=4)
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        remote_f.remote(1, a=1, c=1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        remote_f.options(num_cpus=1).remote(1, 2, 3, c=1)


def test_actor_constructor_binds_arguments_at_once() -> None:
    class WithInit:
        def __init__(self, x, y=0):
            self.x = x

    class WithoutInit:
        pass

    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        taskmesh.remote(WithInit).remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        taskmesh.remote(WithInit).options(name="n").remote(1, 2, 3)
    with pytest.raises(TypeError, match="too many positional arguments"):
        taskmesh.remote(WithoutInit).remote(1)


def test_actor_methods_bind_arguments(ray) -> None:
    @ray.remote
    class Calc:
        def add(self, a, b):
            return a + b

        @staticmethod
        def double(x):
            return 2 * x

        @classmethod
        def name(cls, suffix=""):
            return cls.__name__ + suffix

    calc = Calc.options(name="calc-for-binding").remote()
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        calc.add.remote(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        calc.add.options(num_returns=1).remote(1, 2, c=3)
    with pytest.raises(TypeError, match="too many positional arguments"):
        calc.double.remote(1, 2)
    assert ray.get([calc.add.remote(1, b=2), calc.double.remote(4), calc.name.remote("!")]) == [
        3, 8, "Calc!"]
    # A handle looked up by name checks the same way.
    found = ray.get_actor("calc-for-binding")
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        found.add.remote(1)
    assert ray.get(found.add.remote(2, 3)) == 5


def test_remote_with_empty_parentheses_fails_an_assertion() -> None:
    with pytest.raises(AssertionError, match="@remote decorator"):
        taskmesh.remote()
    with pytest.raises(AssertionError):
        taskmesh.remote(f, num_cpus=1)


def test_too_large_definition_is_refused_at_remote(monkeypatch) -> None:
    from taskmesh._base import config

    assert config.FUNCTION_SIZE_ERROR_THRESHOLD.get({}) == 100 * 1024 * 1024  # Ray's default
    monkeypatch.setenv("TASKMESH_FUNCTION_SIZE_ERROR_THRESHOLD", str(1024 * 1024))
    big = b"x" * (2 * 1024 * 1024)

    def captures_big():
        return len(big)

    class CapturesBig:
        data = big

    with pytest.raises(ValueError, match="remote function 'captures_big' is too large"):
        taskmesh.remote(captures_big).remote()
    with pytest.raises(ValueError, match="FUNCTION_SIZE_ERROR_THRESHOLD"):
        taskmesh.remote(captures_big).remote()  # each call, not only the first
    with pytest.raises(ValueError, match="actor 'CapturesBig' is too large"):
        taskmesh.remote(CapturesBig).remote()


def test_bundle_is_a_reserved_resource_name() -> None:
    with pytest.raises(ValueError, match="reserved"):
        taskmesh.remote(resources={"bundle": 1})(f)
    with pytest.raises(ValueError, match="reserved"):
        taskmesh.remote(f).options(resources={"bundle": 1})
    with pytest.raises(ValueError, match="reserved"):
        taskmesh.init(resources={"bundle": 1})


def test_namespace_must_be_a_string() -> None:
    class A:
        pass

    with pytest.raises(TypeError, match="namespace"):
        taskmesh.init(namespace=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        taskmesh.init(namespace="")
    with pytest.raises(TypeError, match="namespace"):
        taskmesh.remote(A).options(namespace=5)
    with pytest.raises(TypeError, match="namespace"):
        taskmesh.remote(namespace=["x"])(A)
    assert not taskmesh.is_initialized()


def test_get_raises_the_first_error_without_waiting(ray) -> None:
    @ray.remote
    def slow():
        time.sleep(60)

    @ray.remote
    def boom():
        raise ValueError("boom")

    pending = slow.remote()
    failing = boom.remote()
    start = time.monotonic()
    try:
        with pytest.raises(ValueError, match="boom"):
            ray.get([pending, failing])
        assert time.monotonic() - start < 20
        # An error that is already there, behind a ref still running.
        with pytest.raises(ValueError, match="boom"):
            ray.get([pending, failing], timeout=30)
        assert time.monotonic() - start < 25
    finally:
        ray.cancel(pending, force=True)


def test_wait_on_an_empty_list(ray) -> None:
    assert ray.wait([]) == ([], [])
    assert ray.wait([], num_returns=1, timeout=0) == ([], [])
