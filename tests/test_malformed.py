"""Entries written by hand into taskmesh's streams (redis-cli, another program) are moved
to the dead-letter stream with the reason; agents and actors keep serving."""

from __future__ import annotations

import msgpack
import pytest

import taskmesh
from conftest import done_notices, wait_until
from taskmesh import objects
from taskmesh._base.wire import QueueEntry, WireError
from taskmesh.store import Store

# A task's and a call's arguments travel in the entry's field `args`; an actor's in its spec.
_TASK_SPEC = {"fn": "x", "owner": "ab12cd34", "nret": 1, "job": "01000000"}
_CALL_SPEC = {"m": "f", "owner": "ab12cd34", "nret": 1, "job": "01000000"}
_ACTOR_SPEC = {"fn": "x", "args": b"", "owner": "ab12cd34", "job": "01000000", "cls": "C"}


def _entry(spec: dict | bytes, args: bytes | str = b"", **fields: bytes) -> dict[bytes, bytes]:
    raw = spec if isinstance(spec, bytes) else msgpack.packb(spec)
    return {b"task": b"ab12", b"name": b"f", b"attempt": b"0", b"spec": raw, b"args": args,
            **{k.encode(): v for k, v in fields.items()}}


def _problem(fields: dict[bytes, bytes], *, actor_call: bool = False) -> str:
    with pytest.raises(WireError) as e:
        QueueEntry.from_fields(fields, actor_call=actor_call)
    return str(e.value)


def test_a_bad_entry_raises_a_wire_error_naming_the_field() -> None:
    good = _entry(_TASK_SPEC)
    assert QueueEntry.from_fields(good).spec.num_returns == 1
    assert "missing field 'spec'" in _problem({k: v for k, v in good.items() if k != b"spec"})
    assert "hex id" in _problem({**good, b"task": b"DROP TABLE"})
    assert "'attempt'" in _problem({**good, b"attempt": b"first"})
    assert "not a msgpack map" in _problem(_entry(msgpack.packb([1, 2])))
    assert "unreadable msgpack" in _problem(_entry(b"not msgpack"))
    assert "'nret'" in _problem(_entry({k: v for k, v in _TASK_SPEC.items() if k != "nret"}))
    call = _entry(_CALL_SPEC)
    assert QueueEntry.from_fields(call, actor_call=True).spec.method == "f"
    assert "'m'" in _problem(good, actor_call=True)


@pytest.mark.parametrize(("spec", "field"), [
    ({"job": None}, None),  # nil: a job-less process
    ({"maxr": -1}, None),  # -1: retry forever
    ({"maxc": 0}, None),
    ({"maxr": -2}, "maxr"),
    ({"maxr": "3"}, "maxr"),
    ({"maxc": "x"}, "maxc"),
    ({"maxc": -1}, "maxc"),  # only max_retries has a forever
    ({"nret": -1}, "nret"),
    ({"nret": True}, "nret"),
    ({"owner": 7}, "owner"),
    ({"rexc": 1}, "rexc"),
    ({"res": {"CPU": -1}}, "res"),
    ({"res": [1]}, "res"),
    ({"gen": "x"}, "gen"),
    ({"bp": -1}, "bp"),
    ({"pg": ["p", "0", True]}, "pg"),
    ({"renv": "env"}, "renv"),
    ({"ns": 1}, "ns"),
])
def test_task_spec_fields_are_checked(spec: dict, field: str | None) -> None:
    fields = _entry({**_TASK_SPEC, **spec})
    if field is None:
        QueueEntry.from_fields(fields)
    else:
        assert f"'{field}'" in _problem(fields)


def test_arguments_that_are_not_bytes_are_named() -> None:
    assert "'args'" in _problem(_entry(_TASK_SPEC, args="text"))
    assert "'args'" in _problem(_entry(_CALL_SPEC, args="text"), actor_call=True)
    assert "'args'" in _problem({k: v for k, v in _entry(_TASK_SPEC).items() if k != b"args"})


def test_missing_job_is_named() -> None:
    for spec, call in ((_TASK_SPEC, False), (_CALL_SPEC, True), (_ACTOR_SPEC, False)):
        fields = _entry({k: v for k, v in spec.items() if k != "job"},
                        **({} if spec is not _ACTOR_SPEC else {"kind": b"actor"}))
        assert "missing field 'job'" in _problem(fields, actor_call=call)


@pytest.mark.parametrize(("spec", "field"), [
    ({"cls": None}, "cls"),
    ({"maxc": "x"}, "maxc"),
    ({"maxc": -1}, "maxc"),
    ({"mtr": -2}, "mtr"),
    ({"async": "yes"}, "async"),
    ({"held": {"CPU": "1"}}, "held"),
    ({"groups": {"io": 0}}, "groups"),
])
def test_actor_spec_fields_are_checked(spec: dict, field: str) -> None:
    assert f"'{field}'" in _problem(_entry({**_ACTOR_SPEC, **spec}, kind=b"actor"))


def test_entry_fields_are_checked() -> None:
    good = _entry(_TASK_SPEC)
    assert QueueEntry.from_fields({**good, b"shape": b"CPU=1,GPU=0.5", b"soft": b"1"}).soft
    assert "'shape'" in _problem({**good, b"shape": b"CPU", b"soft": b"1"})
    assert "'shape'" in _problem({**good, b"shape": b"CPU=lots"})
    assert "'soft'" in _problem({**good, b"shape": b"CPU=1", b"soft": b"maybe"})
    assert "'kind'" in _problem({**good, b"kind": b"robot"})
    assert "'kind'" in _problem({**_entry(_CALL_SPEC), b"kind": b"actor"}, actor_call=True)
    assert "'cg'" in _problem(_entry({**_CALL_SPEC, "cg": 3}), actor_call=True)


def test_actor_call_args_must_unpickle_to_args_and_kwargs() -> None:
    def spec(args: bytes) -> object:
        return QueueEntry.from_fields(_entry(_CALL_SPEC, args), actor_call=True).spec

    assert spec(objects.serialize(([1], {"a": 2}))).decode_args(objects.deserialize) == ([1], {"a": 2})
    for args in (b"garbage", objects.serialize(5), objects.serialize(([1], [2]))):
        with pytest.raises(WireError, match="'args'"):
            spec(args).decode_args(objects.deserialize)


def test_malformed_task_entries_go_to_the_dead_letter_stream(ray, shared_cluster) -> None:
    @ray.remote
    def double(x):
        return 2 * x

    assert ray.get(double.remote(1)) == 2  # the CPU=1 queue exists
    store = Store(shared_cluster.url)
    try:
        queue = store.keys.queue("CPU=1")
        store.redis.xadd(queue, {"hello": "world"})
        store.redis.xadd(queue, {"task": "abcd", "name": "x", "attempt": "0", "spec": "not msgpack"})
        wait_until(lambda: store.redis.xlen(store.keys.deadletter()) >= 2)
        reasons = [f[b"reason"].decode() for _, f in store.redis.xrange(store.keys.deadletter())]
        assert any("missing field" in r for r in reasons)
        assert any("unreadable" in r or "msgpack" in r for r in reasons)
        assert ray.get([double.remote(i) for i in range(5)]) == [0, 2, 4, 6, 8]  # still serving
        assert store.redis.xlen(queue) == 0  # nothing left behind in the queue
    finally:
        store.close()


def test_malformed_actor_calls_go_to_the_dead_letter_stream(ray, shared_cluster) -> None:
    @ray.remote
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    assert ray.get(echo.echo.remote("a")) == "a"
    store = Store(shared_cluster.url)
    try:
        before = store.redis.xlen(store.keys.deadletter())
        calls = store.keys.actor_calls(echo._actor_id)
        store.redis.xadd(calls, {"task": "zz"})
        wait_until(lambda: store.redis.xlen(store.keys.deadletter()) > before)
        assert ray.get(echo.echo.remote("b"), timeout=30) == "b"
        # Well-formed fields whose arguments are not an (args, kwargs) pair, or do not
        # unpickle: set aside when the actor reads them; the actor keeps serving.
        owner = objects.new_owner_tag()
        for args in (objects.serialize(5), b"garbage"):
            spec = msgpack.packb({**_CALL_SPEC, "m": "echo", "owner": owner})
            store.redis.xadd(calls, {"task": objects.new_task_id(owner), "name": "Echo.echo",
                                     "attempt": 0, "spec": spec, "args": args})
        wait_until(lambda: store.redis.xlen(store.keys.deadletter()) >= before + 3)
        reasons = [f[b"reason"].decode() for _, f in store.redis.xrange(store.keys.deadletter())]
        assert sum("'args'" in r for r in reasons) >= 2
        assert ray.get(echo.echo.remote("c"), timeout=30) == "c"
        assert len(done_notices(store, owner)) == 2  # their (absent) callers got errors
    finally:
        store.close()
    taskmesh.kill(echo)


def test_badly_typed_spec_fields_go_to_the_dead_letter_stream(ray, shared_cluster) -> None:
    @ray.remote
    def one():
        return 1

    assert ray.get(one.remote()) == 1
    store = Store(shared_cluster.url)
    try:
        before = store.redis.xlen(store.keys.deadletter())
        queue = store.keys.queue("CPU=1")
        for bad in ({"maxc": "x"}, {"nret": -1}, {"maxr": -5}):
            spec = msgpack.packb({**_TASK_SPEC, **bad})
            store.redis.xadd(queue, {"task": "abcd", "name": "x", "attempt": "0", "spec": spec, "args": b""})
        store.redis.xadd(queue, {"task": "abcd", "name": "x", "attempt": "0", "shape": "CPU",
                                 "spec": msgpack.packb(_TASK_SPEC), "args": b""})
        wait_until(lambda: store.redis.xlen(store.keys.deadletter()) >= before + 4)
        reasons = [f[b"reason"].decode() for _, f in store.redis.xrange(store.keys.deadletter())]
        for field in ("maxc", "nret", "maxr", "shape"):
            assert any(f"'{field}'" in r for r in reasons), field
        assert ray.get([one.remote() for _ in range(4)]) == [1] * 4  # still serving
    finally:
        store.close()
