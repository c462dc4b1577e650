"""Ray's DAG API (`.bind()`, InputNode, MultiOutputNode, `execute()`) on a real cluster,
written the way Ray's DAG guide uses it. Remote functions and classes are defined inside
the tests so that the workers receive them by value."""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace
from typing import Any

import pytest

from taskmesh import exceptions
from taskmesh.dag import ClassNode, FunctionNode, InputNode, MultiOutputNode
from taskmesh.objects import ObjectRef


def _counter_class(ray: Any) -> Any:
    """An actor whose state shows how many calls reached it."""

    @ray.remote
    class Counter:
        def __init__(self, start: int = 0):
            self.value = start

        def incr(self, by: int = 1) -> int:
            self.value += by
            return self.value

        def get(self) -> int:
            return self.value

        def pair(self) -> tuple[int, int]:
            return self.value, -self.value

    return Counter


def test_bind_records_calls_that_execute_runs_as_tasks(ray) -> None:
    @ray.remote
    def func(src: int, inc: int = 1) -> int:
        return src + inc

    a = func.bind(1, inc=2)
    assert isinstance(a, FunctionNode) and a.get_args() == (1,) and a.get_kwargs() == {"inc": 2}
    assert ray.get(a.execute()) == 3
    b = func.bind(a, inc=3)
    assert ray.get(b.execute()) == 6
    c = func.bind(b, inc=a)
    assert ray.get(c.execute()) == 9


def test_chain_from_input_node_runs_again_with_each_input(ray) -> None:
    @ray.remote
    def add_one(x: int) -> int:
        return x + 1

    @ray.remote
    def double(x: int) -> int:
        return 2 * x

    with InputNode() as inp:
        dag = double.bind(add_one.bind(inp))

    ref = dag.execute(2)
    assert isinstance(ref, ObjectRef)
    assert ray.get(ref) == 6
    assert ray.get([dag.execute(i) for i in range(5)]) == [2, 4, 6, 8, 10]


def test_fan_in(ray) -> None:
    @ray.remote
    def a(x: int) -> int:
        return x * 2

    @ray.remote
    def b(x: int) -> int:
        return x + 1

    @ray.remote
    def c(x: int, y: int) -> int:
        return x + y

    with InputNode() as dag_input:
        dag = c.bind(a.bind(dag_input), b.bind(dag_input))

    assert ray.get(dag.execute(2)) == 7
    assert ray.get(dag.execute(3)) == 10


def test_a_node_used_twice_runs_once_per_execute(ray) -> None:
    counter = _counter_class(ray).remote()

    @ray.remote
    def record(counter: Any, x: int) -> int:
        ray.get(counter.incr.remote())
        return x

    @ray.remote
    def add(x: int, y: int) -> int:
        return x + y

    with InputNode() as inp:
        shared = record.bind(counter, inp)
        dag = add.bind(shared, add.bind(shared, shared))

    assert ray.get(dag.execute(5)) == 15
    assert ray.get(counter.get.remote()) == 1
    assert ray.get(dag.execute(7)) == 21
    assert ray.get(counter.get.remote()) == 2

    hit = counter.incr.bind()
    assert ray.get(add.bind(hit, hit).execute()) == 6  # 3 + 3: one call, not 3 + 4
    assert ray.get(counter.get.remote()) == 3


def test_multi_output_node(ray) -> None:
    @ray.remote
    def f(x: int) -> int:
        return x + 1

    with InputNode() as input_data:
        dag = MultiOutputNode([f.bind(input_data["x"]), f.bind(input_data["y"])])

    refs = dag.execute({"x": 1, "y": 2})
    assert isinstance(refs, list) and all(isinstance(r, ObjectRef) for r in refs)
    assert ray.get(refs) == [2, 3]


def test_class_node_calls_share_one_actor_per_execute(ray) -> None:
    Counter = _counter_class(ray)

    @ray.remote
    def combine(x: int, y: int) -> int:
        return x + y

    a1 = Counter.bind(10)
    assert isinstance(a1, ClassNode)
    val = a1.get.bind()
    assert ray.get(val.execute()) == 10

    a2 = Counter.bind(10)
    a1.incr.bind(2)
    a1.incr.bind(4)
    a2.incr.bind(6)
    dag = combine.bind(a1.get.bind(), a2.get.bind())
    # Calls bound on a ClassNode run in bind order, also those no output depends on:
    # a1 = 10 + 2 + 4, a2 = 10 + 6.
    assert ray.get(dag.execute()) == 32
    assert ray.get(dag.execute()) == 32  # each execute creates fresh actors

    with InputNode() as inp:
        actor = Counter.bind(0)
        added = actor.incr.bind(inp)
        seen = actor.get.bind()
        dag = MultiOutputNode([seen, added])  # outputs listed against bind order
    assert ray.get(dag.execute(3)) == [3, 3]


def _later(ray: Any) -> Any:
    """A task that returns its argument after a while: an actor constructed from its
    result starts only once the calls sent to it are all queued, so it reads them (and
    the terminate call of a dropped handle) in one batch."""

    @ray.remote
    def later(value: Any) -> Any:
        time.sleep(0.5)
        return value

    return later


def test_class_node_actor_lives_until_its_calls_are_done(ray) -> None:
    actor = _counter_class(ray).bind(_later(ray).bind(10))
    dag = MultiOutputNode([actor.get.bind() for _ in range(3)])
    refs = dag.execute()
    gc.collect()  # the execute's actor handle is gone now, whatever cycle held its frame
    assert ray.get(refs, timeout=10) == [10, 10, 10]


def test_a_method_call_takes_the_result_of_an_earlier_one_on_the_same_actor(ray) -> None:
    counter = _counter_class(ray).remote(_later(ray).remote(0))
    with InputNode() as inp:
        dag = counter.incr.bind(counter.incr.bind(counter.incr.bind(inp)))
    assert ray.get(dag.execute(3), timeout=30) == 12


def test_executing_a_class_node_returns_a_handle(ray) -> None:
    handle = _counter_class(ray).bind(41).execute()
    assert isinstance(handle, ray.ActorHandle)
    assert ray.get(handle.incr.remote()) == 42


def test_method_bind_on_a_live_actor_reuses_it(ray) -> None:
    @ray.remote
    class Worker:
        def __init__(self):
            self.forwarded = 0

        def forward(self, input_data: int) -> int:
            self.forwarded += 1
            return input_data + 1

        def num_forwarded(self) -> int:
            return self.forwarded

    worker = Worker.remote()
    with InputNode() as input_data:
        dag = MultiOutputNode([worker.forward.bind(input_data)])

    assert ray.get(dag.execute(1)) == [2]
    assert ray.get(dag.execute(2)) == [3]
    assert ray.get(dag.execute(3)) == [4]
    assert ray.get(worker.num_forwarded.remote()) == 3


def test_input_node_selects_by_index_key_and_attribute(ray) -> None:
    @ray.remote
    def pair(a: Any, b: Any) -> tuple[Any, Any]:
        return a, b

    with InputNode() as inp:
        by_arg_and_keyword = pair.bind(inp[0], inp.x)
        by_index = pair.bind(inp[0], inp[1])
        by_key = pair.bind(inp["m1"], inp["m2"])
        by_attribute = pair.bind(inp.m1, inp.m2)
        whole = pair.bind(inp, inp[0])

    assert inp[0] is inp[0]
    assert ray.get(by_arg_and_keyword.execute(1, x=2)) == (1, 2)
    assert ray.get(by_index.execute(2, 3)) == (2, 3)
    assert ray.get(by_index.execute([4, 5])) == (4, 5)
    assert ray.get(by_key.execute({"m1": 1, "m2": 2})) == (1, 2)
    assert ray.get(by_key.execute(m1=3, m2=4)) == (3, 4)
    assert ray.get(by_attribute.execute(SimpleNamespace(m1=5, m2=6))) == (5, 6)
    assert ray.get(whole.execute("ab")) == ("ab", "a")


def test_upstream_nodes_arrive_as_values_at_top_level_and_refs_when_nested(ray) -> None:
    @ray.remote
    def one() -> int:
        return 1

    @ray.remote
    def describe(top: Any, nested: list, named: dict) -> tuple[Any, ...]:
        return top, isinstance(nested[0], ray.ObjectRef), ray.get(nested[0]), named["k"] == 7

    node = one.bind()
    assert ray.get(describe.bind(node, [node], {"k": 7}).execute()) == (1, True, 1, True)


def test_options_given_before_bind_are_kept(ray) -> None:
    Counter = _counter_class(ray)

    @ray.remote
    def split(x: int) -> tuple[int, int]:
        return x, -x

    with InputNode() as inp:
        dag = split.options(num_returns=2).bind(inp)
    assert dag.get_options()["num_returns"] == 2
    refs = dag.execute(4)
    assert isinstance(refs, list) and ray.get(refs) == [4, -4]

    # Detached: as in Ray, a named actor whose counting handles are all gone (execute()
    # drops the one it made) is collected; get_actor's handle does not count.
    actor = Counter.options(name="dag-named-counter", lifetime="detached").bind(5)
    pair_refs = actor.pair.options(num_returns=2).bind().execute()
    assert ray.get(pair_refs) == [5, -5]
    named = ray.get_actor("dag-named-counter")
    assert ray.get(named.get.remote()) == 5
    ray.kill(named)

    live = Counter.remote(2)
    assert ray.get(live.pair.options(num_returns=2).bind().execute()) == [2, -2]


def test_a_failing_node_fails_the_outputs_that_depend_on_it(ray) -> None:
    @ray.remote
    def fail(x: int) -> int:
        raise ValueError(f"bad input {x}")

    @ray.remote
    def add_one(x: int) -> int:
        return x + 1

    with InputNode() as inp:
        dag = MultiOutputNode([add_one.bind(fail.bind(inp)), add_one.bind(inp)])

    failed, fine = dag.execute(3)
    assert ray.get(fine) == 4
    with pytest.raises(ValueError, match="bad input 3") as info:
        ray.get(failed)
    assert isinstance(info.value, exceptions.RayTaskError)


def test_misuse_raises_clear_errors(ray) -> None:
    Counter = _counter_class(ray)

    @ray.remote
    def identity(x: Any) -> Any:
        return x

    with InputNode() as inp:
        dag = identity.bind(inp)
    with pytest.raises(ValueError, match="no input"):
        dag.execute()
    with pytest.raises(ValueError, match="no input"):
        identity.bind(inp[0]).execute()

    with InputNode() as other:
        two_inputs = MultiOutputNode([identity.bind(inp), identity.bind(other)])
    with pytest.raises(ValueError, match="only one InputNode"):
        two_inputs.execute(1)

    with pytest.raises(ValueError, match="constructor"):
        Counter.bind(inp)
    with pytest.raises(AttributeError, match="execute"):
        dag.remote()
    with pytest.raises(AttributeError, match="nope"):
        _ = Counter.bind().nope
    with pytest.raises(AttributeError, match="bind"):
        Counter.bind().get.remote()
    with pytest.raises(ValueError, match="list"):
        MultiOutputNode(dag)
    with pytest.raises(ValueError, match="no arguments"):
        InputNode(1)


def test_long_chains_do_not_hit_the_recursion_limit(ray) -> None:
    with InputNode() as inp:
        dag: Any = inp
        for _ in range(5000):
            dag = MultiOutputNode([dag])

    result = dag.execute("bottom")
    for _ in range(5000):
        (result,) = result
    assert result == "bottom"
