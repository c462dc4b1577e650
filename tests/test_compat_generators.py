"""Generators as Ray documents them ("Ray Generators", "Dynamic generators"): `wait` on
ObjectRefGenerators mixed with refs, and generator functions called with a fixed
num_returns (values stored one at a time; a short, long or failing generator treated as
Ray treats it)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from conftest import wait_until
from taskmesh.exceptions import RayTaskError

# Workers cannot import this module: its helpers and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _wait_for_file(path: str) -> None:
    """A signal from the driver (a generator waits here before its next yield)."""
    while not os.path.exists(path):
        time.sleep(0.005)


# ---- wait() on generators -----------------------------------------------------------


def test_wait_takes_generators_mixed_with_refs(ray, tmp_path: Path) -> None:
    @ray.remote
    def gated(gate: str, n: int):
        for i in range(n):
            _wait_for_file(f"{gate}{i}")
            yield i

    gate = str(tmp_path / "gate")
    gen = gated.remote(gate, 2)
    ref = ray.put("value")
    # Nothing yielded yet: the generator is not ready, the ref is; order is kept.
    ready, not_ready = ray.wait([gen, ref], num_returns=2, timeout=0.2)
    assert ready == [ref] and not_ready == [gen]

    Path(f"{gate}0").touch()  # its next item arrives: ready (without taking it)
    ready, not_ready = ray.wait([gen, ref], num_returns=2, timeout=30)
    assert ready == [gen, ref] and not_ready == []
    assert ray.get(next(gen)) == 0
    ready, _ = ray.wait([gen], timeout=0.1)  # item 1 not yielded yet
    assert ready == []

    Path(f"{gate}1").touch()
    ready, _ = ray.wait([gen], timeout=30)
    assert ready == [gen] and ray.get(next(gen)) == 1
    # Once it has ended it stays ready: next() would raise StopIteration at once.
    wait_until(lambda: ray.wait([gen], timeout=0)[0] == [gen], timeout_s=30, what="the end")
    with pytest.raises(StopIteration):
        next(gen)
    assert ray.wait([gen], timeout=0) == ([gen], [])

    # A generator that yields nothing is ready when it ends.
    empty = gated.remote(gate, 0)
    assert ray.wait([empty], timeout=30) == ([empty], [])

    with pytest.raises(TypeError, match="ObjectRef or ObjectRefGenerator, got a single"):
        ray.wait(gen)
    with pytest.raises(TypeError, match="got list containing <class 'int'>"):
        ray.wait([gen, 1])
    with pytest.raises(ValueError, match="unique"):
        ray.wait([gen, gen])


# ---- a fixed num_returns --------------------------------------------------------------


def test_a_generator_with_a_fixed_num_returns_yields_its_values(ray) -> None:
    @ray.remote(num_returns=3)
    def three(n: int, fail_at: int = -1):
        for i in range(n):
            if i == fail_at:
                raise KeyError("boom")
            yield i * 10

    assert ray.get(three.remote(3)) == [0, 10, 20]

    # More than num_returns: the first N are kept (Ray logs the error).
    assert ray.get(three.remote(5)) == [0, 10, 20]

    # Fewer: the values yielded are kept, the rest fail with Ray's ValueError.
    a, b, c = three.remote(2)
    assert ray.get([a, b]) == [0, 10]
    with pytest.raises(ValueError, match=r"Task returned 2 objects, but num_returns=3\."):
        ray.get(c)

    # An exception after k values: the k values are kept, the rest are the exception.
    a, b, c = three.remote(3, 1)
    assert ray.get(a) == 0
    for ref in (b, c):
        with pytest.raises(RayTaskError) as info:
            ray.get(ref)
        assert isinstance(info.value, KeyError) and "boom" in str(info.value)

    # num_returns=1 takes the generator's one value, not the generator.
    @ray.remote(num_returns=1)
    def one():
        yield {"x": 1}

    assert ray.get(one.remote()) == {"x": 1}


def test_an_actor_generator_method_with_a_fixed_num_returns(ray) -> None:
    @ray.remote
    class Source:
        @ray.method(num_returns=2)
        def pair(self, n: int):
            yield from range(n)

    source = Source.remote()
    assert ray.get(source.pair.remote(2)) == [0, 1]
    assert ray.get(source.pair.remote(3)) == [0, 1]
    first, second = source.pair.remote(1)
    assert ray.get(first) == 0
    with pytest.raises(ValueError, match=r"Task returned 1 objects, but num_returns=2\."):
        ray.get(second)
    # The actor lives on.
    assert ray.get(source.pair.options(num_returns=2).remote(2)) == [0, 1]
