"""Tasks and objects end to end: a real Redis, a real node agent, real worker processes."""

from __future__ import annotations

import os
import time

import pytest

import taskmesh
from taskmesh import exceptions


def test_remote_bare_and_with_options(ray) -> None:
    @ray.remote
    def add(a, b):
        return a + b

    @ray.remote(num_cpus=0.5, name="custom-name")
    def mul(a, b):
        return a * b

    assert ray.get(add.remote(1, 2)) == 3
    assert ray.get(mul.remote(3, 4)) == 12
    assert ray.get(add.options(num_cpus=1).remote("a", "b")) == "ab"


def test_many_tasks_return_in_order(ray) -> None:
    @ray.remote
    def square(x):
        return x * x

    refs = [square.remote(i) for i in range(300)]
    assert ray.get(refs) == [i * i for i in range(300)]


def test_num_returns(ray) -> None:
    @ray.remote(num_returns=3)
    def three():
        return 1, 2, 3

    @ray.remote(num_returns=0)
    def nothing():
        return None

    a, b, c = three.remote()
    assert ray.get([a, b, c]) == [1, 2, 3]
    assert nothing.remote() is None
    two = three.options(num_returns=2)
    refs = two.remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(refs[0])


def test_put_get_and_kwargs(ray) -> None:
    ref = ray.put({"x": [1, 2, 3]})
    assert ray.get(ref) == {"x": [1, 2, 3]}

    @ray.remote
    def lookup(d, key="x"):
        return d[key]

    assert ray.get(lookup.remote(ref)) == [1, 2, 3]
    assert ray.get(lookup.remote(d=ref, key="x")) == [1, 2, 3]
    with pytest.raises(TypeError, match="put"):
        ray.put(ref)


def test_top_level_refs_are_resolved_nested_refs_stay_refs(ray) -> None:
    @ray.remote
    def inspect(top, nested):
        return type(top).__name__, type(nested[0]).__name__, taskmesh.get(nested[0])

    ref = ray.put(5)
    assert ray.get(inspect.remote(ref, [ref])) == ("int", "ObjectRef", 5)


def test_task_outputs_feed_tasks_before_they_finish(ray) -> None:
    @ray.remote
    def slow(x):
        time.sleep(0.3)
        return x

    @ray.remote
    def inc(x):
        return x + 1

    chain = slow.remote(1)
    for _ in range(5):
        chain = inc.remote(chain)
    assert ray.get(chain) == 6


def test_tasks_submit_tasks(ray) -> None:
    @ray.remote
    def leaf(x):
        return x * 10

    @ray.remote
    def parent(n):
        return sum(taskmesh.get([leaf.remote(i) for i in range(n)]))

    # Four parents on a 2-CPU node: each blocks in get, lending its CPU to the leaves.
    assert ray.get([parent.remote(3) for _ in range(4)]) == [30] * 4


def test_large_values_and_large_arguments(ray) -> None:
    import numpy as np

    arr = np.arange(300_000, dtype=np.int64)  # 2.4 MB, put as a separate object

    @ray.remote
    def total(a):
        return int(a.sum()), a.shape

    assert ray.get(total.remote(arr)) == (int(arr.sum()), (300_000,))
    assert (ray.get(ray.put(arr)) == arr).all()


def test_errors_are_both_ray_task_error_and_the_cause(ray) -> None:
    @ray.remote
    def fail():
        raise KeyError("missing-thing")

    with pytest.raises(KeyError) as info:
        ray.get(fail.remote())
    err = info.value
    assert isinstance(err, exceptions.RayTaskError)
    assert isinstance(err, exceptions.RayError)
    assert "missing-thing" in str(err) and "Traceback" in str(err)
    assert "fail" in str(err)


def test_a_failed_argument_fails_the_dependent_task(ray) -> None:
    @ray.remote
    def fail():
        raise ValueError("upstream")

    @ray.remote
    def use(x):
        return x

    with pytest.raises(ValueError, match="upstream"):
        ray.get(use.remote(fail.remote()))


def test_unpicklable_exception_still_reports(ray) -> None:
    @ray.remote
    def fail():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")

        raise Local("custom text")

    with pytest.raises(exceptions.RayTaskError, match="custom text"):
        ray.get(fail.remote())


def test_get_timeout(ray) -> None:
    @ray.remote
    def sleepy():
        time.sleep(2)

    ref = sleepy.remote()
    with pytest.raises(exceptions.GetTimeoutError) as info:
        ray.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(exceptions.GetTimeoutError):
        ray.get(ref, timeout=0)


def test_wait(ray) -> None:
    @ray.remote
    def sleep_for(s):
        time.sleep(s)
        return s

    fast, slow = sleep_for.remote(0), sleep_for.remote(5)
    ready, not_ready = ray.wait([slow, fast], num_returns=1, timeout=4)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = ray.wait([slow, fast], num_returns=2, timeout=0.1)
    assert ready == [fast] and not_ready == [slow]
    put_ref = ray.put(1)
    assert ray.wait([put_ref]) == ([put_ref], [])


def test_wait_on_finished_refs_keeps_their_order_and_refuses_duplicates(ray) -> None:
    @ray.remote
    def echo(i):
        return i

    refs = [echo.remote(i) for i in range(5)]
    ray.get(refs)
    assert ray.wait(refs, num_returns=2) == (refs[:2], refs[2:])
    assert ray.wait(refs[::-1], num_returns=5) == (refs[::-1], [])
    with pytest.raises(ValueError, match="unique"):
        ray.wait([refs[0], refs[1], refs[0]], num_returns=2)
    with pytest.raises(TypeError, match="list containing <class 'int'>"):
        ray.wait([refs[0], 1])


def test_retry_exceptions(ray, tmp_path) -> None:
    marker = tmp_path / "attempts"

    @ray.remote(retry_exceptions=[OSError], max_retries=2)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise OSError("not yet")
        return "ok"

    assert ray.get(flaky.remote(str(marker))) == "ok"
    assert marker.read_text() == "xxx"

    @ray.remote(retry_exceptions=[OSError], max_retries=5)
    def wrong_type():
        raise ValueError("not retried")

    with pytest.raises(ValueError):
        ray.get(wrong_type.remote())

    @ray.remote(retry_exceptions=True, max_retries=1)
    def always(path):
        with open(path, "a") as f:
            f.write("y")
        raise RuntimeError("still failing")

    other = tmp_path / "always"
    with pytest.raises(RuntimeError, match="still failing"):
        ray.get(always.remote(str(other)))
    assert other.read_text() == "yy"


def test_max_calls_recycles_the_worker(ray) -> None:
    @ray.remote(max_calls=1)
    def pid():
        return os.getpid()

    pids = [ray.get(pid.remote()) for _ in range(3)]
    assert len(set(pids)) == 3


def test_worker_output_reaches_the_driver_prefixed(ray, capsys) -> None:
    @ray.remote
    def chatty():
        print("hello from a task")
        return os.getpid()

    pid = ray.get(chatty.remote())
    deadline = time.monotonic() + 5
    out = ""
    while time.monotonic() < deadline and "hello from a task" not in out:
        time.sleep(0.1)
        out += capsys.readouterr().out
    assert f"(chatty pid={pid}) hello from a task" in out


def test_remote_function_cannot_be_called_directly(ray) -> None:
    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError, match=r"f\.remote\(\)"):
        f()


def test_get_rejects_non_refs(ray) -> None:
    with pytest.raises(ValueError, match="object_refs"):
        ray.get(1)
    with pytest.raises(TypeError):
        ray.wait(ray.put(1))
    ref = ray.put(1)
    with pytest.raises(ValueError, match="unique"):
        ray.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait([ref], num_returns=2)
    with pytest.raises(ValueError, match="timeout"):
        ray.get(ref, timeout=-1)


def test_refs_can_be_awaited_and_have_futures(ray) -> None:
    import asyncio

    @ray.remote
    def seven():
        return 7

    async def main():
        return await seven.remote()

    assert asyncio.run(main()) == 7
    assert seven.remote().future().result(timeout=10) == 7


def test_dropped_refs_free_their_objects(ray) -> None:
    from taskmesh._core.context import get_runtime

    runtime = get_runtime()
    ref = ray.put("temporary")
    key = runtime.store.keys.obj(ref.hex())
    assert runtime.store.redis.exists(key)
    del ref
    runtime.flush()
    assert not runtime.store.redis.exists(key)


def test_runtime_context_inside_tasks(ray) -> None:
    @ray.remote(num_cpus=1)
    def where():
        ctx = taskmesh.get_runtime_context()
        return ctx.get_job_id(), ctx.get_node_id(), ctx.get_task_id(), ctx.get_assigned_resources()

    job_id, node_id, task_id, res = ray.get(where.remote())
    assert job_id == taskmesh.get_runtime_context().get_job_id()
    assert node_id in [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert task_id and res == {"CPU": 1.0}


def test_plain_arguments_are_packed_without_the_ref_collector_and_large_ones_are_put() -> None:
    """A call whose arguments are all plain values (int, float, str, bytes, bool, None)
    is pickled directly; one too large to travel in the queue entry is still put first."""
    from taskmesh import objects
    from taskmesh._core.remote_function import _pack_args

    class Runtime:  # what _pack_args uses of the runtime: put, for large arguments
        def __init__(self) -> None:
            self.put_values: list = []

        def put(self, value: object) -> str:
            self.put_values.append(value)
            return "promoted"

    runtime = Runtime()
    blob, deps, holds, _ = _pack_args(runtime, (1, "s", None, True, b"b"), {"k": 2.5})
    assert objects.deserialize(blob) == ([1, "s", None, True, b"b"], {"k": 2.5})
    assert deps == holds == [] and runtime.put_values == []
    big = "x" * (objects.INLINE_ARG_LIMIT + 1)
    blob, _, _, _ = _pack_args(runtime, (big, 1), {})
    assert runtime.put_values == [big] and objects.deserialize(blob) == (["promoted", 1], {})
    assert objects.plain_call_pickle((1, [2]), {}) is None  # a list: the full path
