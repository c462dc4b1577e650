"""The wire records of _base/wire.py: each one round-trips, keeps the bytes the Lua scripts
and other processes expect, and names the field when its input is bad; and no other
module of taskmesh reads entry fields or spec keys by hand."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgpack
import pytest

from taskmesh import objects
from taskmesh._base import wire
from taskmesh._base.wire import (
    ActorSpec,
    CallSpec,
    Notice,
    QueueEntry,
    TaskSpec,
    WireError,
)
from taskmesh._core.failure import should_retry

PACKAGE = Path(__file__).resolve().parent.parent / "taskmesh"

OWNER = "ab12cd34"
TASK = OWNER + "00112233445566ff"


def _as_redis(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """What XADD then XREAD make of an entry's fields."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def _task_spec(**changes: Any) -> TaskSpec:
    base: dict[str, Any] = dict(fn_id="f" * 40, args=objects.serialize(([1], {})), num_returns=2,
                                owner=OWNER, job_id="01000000", namespace="ns")
    return TaskSpec(**{**base, **changes})


# ---- specs ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    _task_spec(),
    _task_spec(job_id=None, namespace=None, max_retries=-1, retry_exceptions=True, max_calls=3,
               resources={"CPU": 0.5, "GPU": 1.0}, generator=wire.STREAMING_MODE, num_returns=1,
               backpressure=4, pg=["9c1e", 1, True], runtime_env={"env_vars": {"A": "1"}},
               detached=True),
    _task_spec(retry_exceptions=b"pickled types", generator=wire.DYNAMIC_MODE, num_returns=1),
])
def test_task_specs_round_trip(spec: TaskSpec) -> None:
    assert TaskSpec.from_wire(spec.to_wire(), spec.args) == spec


def test_a_task_spec_leaves_its_arguments_out_and_is_decoded_once() -> None:
    """Calls of one function with the same options share the spec's bytes: the second
    decode comes from the cache, with its own arguments."""
    first, second = _task_spec(args=b"one"), _task_spec(args=b"two")
    assert first.to_wire() == second.to_wire() and b"one" not in first.to_wire()
    data = first.to_wire()
    wire._TASK_SPECS.pop(data, None)
    assert TaskSpec.from_wire(data, b"one") == first and data in wire._TASK_SPECS
    assert TaskSpec.from_wire(data, b"two") == second
    with pytest.raises(WireError, match="'args'"):
        TaskSpec.from_wire(data, "text")


def test_a_task_spec_keeps_its_bytes_on_the_wire() -> None:
    """The short keys, their order and which are left out when empty are unchanged."""
    spec = _task_spec(max_retries=3, max_calls=0, resources={"CPU": 1.0}, pg=["p", 0, False])
    legacy = msgpack.packb({
        "fn": spec.fn_id, "nret": 2, "owner": OWNER, "job": "01000000", "ns": "ns",
        "maxr": 3, "rexc": False, "maxc": 0, "res": {"CPU": 1.0}, "pg": ["p", 0, False],
    }, use_bin_type=True)
    assert spec.to_wire() == legacy


@pytest.mark.parametrize("spec", [
    ActorSpec("c" * 40, b"args", OWNER, "01000000", "Counter"),
    ActorSpec("c" * 40, b"args", OWNER, None, "Counter", "ns", {"CPU": 1.0, "GPU": 0.5}, 8, True, -1,
              {"io": 2}, ["p", -1, False], {"env_vars": {}}, events=False),
])
def test_actor_specs_round_trip(spec: ActorSpec) -> None:
    assert ActorSpec.from_wire(spec.to_wire()) == spec


def test_an_actor_spec_keeps_its_bytes_on_the_wire() -> None:
    spec = ActorSpec("c" * 40, b"a", OWNER, "01000000", "C", None, {"CPU": 1.0}, 1, False, 0, {},
                     events=False)
    legacy = msgpack.packb({
        "fn": "c" * 40, "args": b"a", "owner": OWNER, "job": "01000000", "ns": None,
        "held": {"CPU": 1.0}, "maxc": 1, "async": False, "cls": "C", "mtr": 0, "groups": {}, "ev": 0,
    }, use_bin_type=True)
    assert spec.to_wire() == legacy


@pytest.mark.parametrize("spec", [
    CallSpec("inc", b"args", 1, OWNER, "01000000"),
    CallSpec("items", b"args", 1, OWNER, None, "io", wire.STREAMING_MODE, 3),
    CallSpec(wire.TERMINATE, b"", 0, OWNER, "01000000"),
])
def test_call_specs_round_trip(spec: CallSpec) -> None:
    assert CallSpec.from_wire(spec.to_wire(), spec.args) == spec


def test_a_call_spec_keeps_its_bytes_on_the_wire() -> None:
    legacy = msgpack.packb({"m": "inc", "nret": 1, "owner": OWNER, "job": "01000000",
                            "cg": None, "gen": "s", "bp": 2}, use_bin_type=True)
    assert CallSpec("inc", b"a", 1, OWNER, "01000000", None, "s", 2).to_wire() == legacy


def test_call_args_decode_to_args_and_kwargs() -> None:
    spec = CallSpec("f", objects.serialize(([1, 2], {"k": 3})), 1, OWNER, None)
    assert spec.decode_args(objects.deserialize) == ([1, 2], {"k": 3})
    with pytest.raises(WireError, match="'args'.*pair"):
        CallSpec("f", objects.serialize(None), 1, OWNER, None).decode_args(objects.deserialize)
    with pytest.raises(WireError, match="'args'.*unpickle"):
        CallSpec("f", b"\x80\x05junk", 1, OWNER, None).decode_args(objects.deserialize)


# ---- the retry rule ---------------------------------------------------------------------

def test_the_attempts_rule_of_max_retries() -> None:
    assert _task_spec(max_retries=2).can_retry(1) and not _task_spec(max_retries=2).can_retry(2)
    assert not _task_spec(max_retries=0).can_retry(0)
    assert _task_spec(max_retries=-1).can_retry(10_000)


def test_should_retry_adds_retry_exceptions_for_a_raised_error() -> None:
    spec = _task_spec(max_retries=2)
    assert should_retry(spec, 0) and not should_retry(spec, 2)  # a lost worker or node
    assert not should_retry(spec, 0, ValueError())  # retry_exceptions=False
    assert should_retry(_task_spec(max_retries=2, retry_exceptions=True), 1, ValueError())
    only = _task_spec(max_retries=2, retry_exceptions=objects.serialize((KeyError,)))
    assert should_retry(only, 0, KeyError()) and not should_retry(only, 0, ValueError())
    assert not should_retry(only, 2, KeyError())


@pytest.mark.parametrize("rexc", [b"not a pickle", objects.serialize(5), objects.serialize((int,))])
def test_retry_exceptions_that_are_not_exception_types_retry_nothing(rexc: bytes) -> None:
    """A hand-written `rexc` must not raise in the worker (its end, and with max_retries
    -1 every next worker's): the task's own error becomes its result."""
    assert not should_retry(_task_spec(max_retries=-1, retry_exceptions=rexc), 0, ValueError())


# ---- queue entries ----------------------------------------------------------------------

@pytest.mark.parametrize("entry", [
    QueueEntry(TASK, "f", 0, _task_spec()),
    QueueEntry(TASK, "f", 3, _task_spec(), shape="CPU=1,GPU=0.5", soft=True, events=False),
    QueueEntry(TASK, "f", 1, _task_spec(), shape="CPU=1", rebuild=True),
    QueueEntry(TASK[:8] + "0" * 16, "C.__init__", 2, ActorSpec("c", b"", OWNER, None, "C"),
               kind=wire.ACTOR, shape="none", soft=False),
])
def test_queue_entries_round_trip(entry: QueueEntry) -> None:
    again = QueueEntry.from_fields(_as_redis(entry.to_fields()))
    assert again == entry and again.spec_wire == entry.spec_wire


def test_call_entries_round_trip() -> None:
    entry = QueueEntry(TASK, "C.inc", 0, CallSpec("inc", b"", 1, OWNER, "01000000"))
    assert QueueEntry.from_fields(_as_redis(entry.to_fields()), actor_call=True) == entry


def test_an_entry_keeps_its_field_names_and_its_spec_bytes() -> None:
    spec_wire = msgpack.packb({"fn": "f", "nret": 1, "owner": OWNER, "job": None,
                               "extra": "a newer writer's"})  # an unknown key is kept, not dropped
    fields = {b"task": TASK.encode(), b"name": b"f", b"attempt": b"2", b"spec": spec_wire,
              b"args": b"a", b"shape": b"CPU=1", b"soft": b"1", b"ev": b"0"}
    entry = QueueEntry.from_fields(fields)
    again = entry.with_attempt(3).to_fields()
    assert again == {"task": TASK, "name": "f", "attempt": 3, "spec": spec_wire, "args": b"a",
                     "shape": "CPU=1", "soft": 1, "ev": 0}
    actor = QueueEntry(TASK, "C.__init__", 0, ActorSpec("c", b"", OWNER, None, "C"), kind=wire.ACTOR)
    assert actor.to_fields()["kind"] == "actor" and "kind" not in entry.to_fields()
    assert entry.fence() == f"{TASK} 2".encode()
    assert entry.routed(None, True) is entry
    assert entry.routed("CPU=2", False).to_fields()["shape"] == "CPU=2"


def test_the_lineage_of_an_entry_round_trips() -> None:
    entry = QueueEntry(TASK, "f", 1, _task_spec(), shape="CPU=1", soft=True, events=False)
    lineage = QueueEntry.from_lineage(entry.to_lineage())
    assert (lineage.task, lineage.name, lineage.attempt, lineage.spec) == (TASK, "f", 1, entry.spec)
    # a lineage keeps only task, name, attempt, spec and args
    assert lineage.shape is None and lineage.events
    assert set(msgpack.unpackb(entry.to_lineage())) == {"task", "name", "attempt", "spec", "args"}
    with pytest.raises(WireError, match="'attempt'"):
        QueueEntry.from_lineage(msgpack.packb({"task": TASK, "name": "f", "attempt": -1,
                                               "spec": entry.spec_wire, "args": b""}))
    with pytest.raises(WireError, match="missing field 'spec'"):
        QueueEntry.from_lineage(msgpack.packb({"task": TASK, "name": "f", "attempt": 0}))


def test_bad_entry_fields_are_named() -> None:
    good = _as_redis(QueueEntry(TASK, "f", 0, _task_spec()).to_fields())
    for field in (b"task", b"name", b"attempt", b"spec"):
        with pytest.raises(WireError, match=f"missing field '{field.decode()}'"):
            QueueEntry.from_fields({k: v for k, v in good.items() if k != field})
    with pytest.raises(WireError, match="'name'"):
        QueueEntry.from_fields({**good, b"name": b"\xff\xfe"})
    with pytest.raises(WireError, match="'attempt'"):
        QueueEntry.from_fields({**good, b"attempt": b"-1"})
    with pytest.raises(WireError, match="'task'"):
        QueueEntry.from_fields({**good, b"task": b""})


def _task_from_wire(data: bytes) -> TaskSpec:
    return TaskSpec.from_wire(data, b"")


def _spec_problem(make: Any, **fields: Any) -> str:
    with pytest.raises(WireError) as e:
        make(msgpack.packb(fields, use_bin_type=True))
    return str(e.value)


@pytest.mark.parametrize(("changes", "field"), [
    ({"nret": wire.MAX_RETURNS + 1}, "nret"),  # past the 4 hex digits of an object id's index
    ({"nret": 2**40}, "nret"),
    ({"nret": -3}, "nret"),
    ({"nret": 0, "gen": wire.STREAMING_MODE}, "nret"),  # a generator call returns its generator ref
    ({"nret": 2, "gen": wire.DYNAMIC_MODE}, "nret"),
    ({"res": {"CPU": float("inf")}}, "res"),
    ({"res": {"CPU": float("nan")}}, "res"),
    ({"maxr": -2}, "maxr"),
    ({"maxr": 1.5}, "maxr"),
    ({"maxc": "x"}, "maxc"),
    ({"maxc": -1}, "maxc"),
    ({"job": 5}, "job"),
    ({"det": 2}, "det"),
])
def test_task_spec_values_out_of_range_are_named(changes: dict, field: str) -> None:
    good = msgpack.unpackb(_task_spec(num_returns=1).to_wire())
    assert f"'{field}'" in _spec_problem(_task_from_wire, **{**good, **changes})


def test_valid_edge_values_of_a_task_spec_decode() -> None:
    good = msgpack.unpackb(_task_spec().to_wire())
    for changes in ({"maxr": -1}, {"maxr": 0}, {"maxc": 0}, {"maxc": None}, {"nret": 0},
                    {"nret": wire.MAX_RETURNS}, {"job": None}, {"nret": 1, "gen": "s"}):
        TaskSpec.from_wire(msgpack.packb({**good, **changes}, use_bin_type=True), b"")
    missing = {k: v for k, v in good.items() if k != "job"}
    assert "missing field 'job'" in _spec_problem(_task_from_wire, **missing)


@pytest.mark.parametrize(("changes", "field"), [
    ({"nret": -3}, "nret"),
    ({"nret": 0, "gen": wire.STREAMING_MODE}, "nret"),
    ({"m": None}, "m"),
    ({"bp": -1}, "bp"),
])
def test_call_spec_values_out_of_range_are_named(changes: dict, field: str) -> None:
    good = msgpack.unpackb(CallSpec("f", b"a", 1, OWNER, None).to_wire())
    assert f"'{field}'" in _spec_problem(lambda data: CallSpec.from_wire(data, b""), **{**good, **changes})


@pytest.mark.parametrize(("changes", "field"), [
    ({"held": {"CPU": float("inf")}}, "held"),
    ({"held": {"CPU": -1}}, "held"),
    ({"maxc": "x"}, "maxc"),
    ({"mtr": -5}, "mtr"),
])
def test_actor_spec_values_out_of_range_are_named(changes: dict, field: str) -> None:
    good = msgpack.unpackb(ActorSpec("c", b"a", OWNER, None, "C").to_wire())
    assert f"'{field}'" in _spec_problem(ActorSpec.from_wire, **{**good, **changes})


@pytest.mark.parametrize("shape", [b"CPU=x", b"CPU=-1", b"CPU=inf", b"CPU=nan", b"=1", b"CPU", b"CPU=1,",
                                   b"\xff=1"])
def test_a_shape_field_that_is_not_a_shape_is_named(shape: bytes) -> None:
    good = _as_redis(QueueEntry(TASK, "f", 0, _task_spec()).to_fields())
    with pytest.raises(WireError, match="'shape'"):
        QueueEntry.from_fields({**good, b"shape": shape})


def test_an_entry_of_a_node_or_bundle_queue_must_name_its_shape() -> None:
    """Its queue's name says nothing of its demand: without `shape` it cannot be placed."""
    good = _as_redis(QueueEntry(TASK, "f", 0, _task_spec()).to_fields())
    QueueEntry.from_fields(good)  # a shape queue's entry: its demand is the queue's
    with pytest.raises(WireError, match="missing field 'shape'"):
        QueueEntry.from_fields(good, pinned=True)
    assert QueueEntry.from_fields({**good, b"shape": b"CPU=1"}, pinned=True).shape == "CPU=1"


# ---- node hash fields -------------------------------------------------------------------

def test_node_resources_decode_or_name_the_field() -> None:
    assert wire.node_resources(b'{"CPU": 2, "GPU": 0.5}', "resources_total") == {"CPU": 2.0, "GPU": 0.5}
    assert wire.node_resources(None, "resources_total") == wire.node_resources(b"", "x") == {}
    for raw in (b"notjson", b"[1, 2]", b'{"CPU": "2"}', b'{"CPU": -1}', b"\xff", b'{"CPU": Infinity}'):
        with pytest.raises(WireError, match="'resources_available'"):
            wire.node_resources(raw, "resources_available")


def test_node_ports_decode_or_name_the_field() -> None:
    assert wire.node_port(b"37905") == 37905
    for raw in (b"abc", b"99999", b"0", b"-1", None, b"", "\u0661\u0662"):
        with pytest.raises(WireError, match="'obj_port'"):
            wire.node_port(raw)


# ---- notices and other stream entries ---------------------------------------------------

def test_notices_round_trip() -> None:
    objs = [[TASK + "0001", objects.KIND_VALUE, b"small"],
            [TASK + "0002", objects.KIND_VALUE, b"x" * (wire.NOTICE_INLINE_LIMIT + 1)]]
    notice = Notice.from_wire(wire.encode_notice(TASK, objs))
    assert notice == Notice(TASK, [objs[0], [TASK + "0002", objects.KIND_VALUE, None]], False)
    assert Notice.from_wire(notice.to_wire()) == notice
    item = wire.decode_notice(wire.encode_notice(TASK, objs[:1], item=True))
    assert item.item and item.objects == [objs[0]]
    for bad in (b"\xc1", msgpack.packb([TASK]), msgpack.packb({"task": TASK}), msgpack.packb([1, []])):
        with pytest.raises(WireError, match="notice"):
            Notice.from_wire(bad)


def test_event_and_log_entries_round_trip() -> None:
    batch = [{"task_id": TASK, "attempt": 0, "state": "RUNNING", "ts": 1}]
    assert wire.events_of(_as_redis(wire.events_entry(batch))) == batch
    payload = msgpack.packb({"pid": 1, "node": "n", "actor": None, "lines": [["f", "stdout", "hi"]]})
    assert wire.log_of(_as_redis(wire.log_entry(payload)))["lines"] == [["f", "stdout", "hi"]]
    assert wire.notices_of({b"1": b"first", b"2": b"second"}) == [b"first", b"second"]
    with pytest.raises(WireError, match="'e'"):
        wire.events_of({b"x": b""})
    with pytest.raises(WireError, match="'l'"):
        wire.log_of({b"l": msgpack.packb([1])})


# ---- agent <-> worker messages ----------------------------------------------------------

@pytest.mark.parametrize("msg", [
    wire.Run(b"1-0", {b"task": TASK.encode(), b"spec": b"\x80"}),
    wire.Run(b"1-0", {b"task": TASK.encode()}, (0, 3)),
    wire.Run(b"1-0", {b"task": TASK.encode()}, ()),
    wire.Ready(4242, OWNER),
    wire.Done(b"1-0", OWNER, b"notice", ((TASK + "0001", objects.KIND_VALUE, b"v"),)),
    wire.Requeue(b"1-0"),
    wire.Retiring(),
    wire.Blocked(),
    wire.Unblocked(),
    wire.ActorAlive(b"1-0"),
    wire.ActorFailed(b"1-0"),
    wire.ActorExiting(),
    wire.Run(b"1-0", {b"task": TASK.encode()}, None, "CPU=1"),
    wire.Cancel((TASK,), True),
    wire.Cancel((), False),
    wire.JobsEnded(("00000001", "0000000a")),
    wire.Adopt(b"1-0", {b"task": TASK.encode(), b"kind": b"actor"}),
    wire.GrantEnded(),
    wire.EndGrant(),
])
def test_messages_round_trip(msg: wire.Message) -> None:
    assert wire.decode_message(wire.encode_message(msg)) == msg


def test_the_run_message_carries_gpus_as_an_entry_field() -> None:
    raw = msgpack.unpackb(wire.encode_message(wire.Run(b"1-0", {b"task": b"ab"}, (0, 1))), raw=True)
    assert raw == [b"T", b"1-0", {b"task": b"ab", b"gpus": b"0,1"}]
    with pytest.raises(WireError, match="'gpus'"):
        wire.decode_message(msgpack.packb(["T", b"1-0", {b"gpus": b"zero"}]))


def test_a_run_without_a_grant_is_the_three_element_message_of_before() -> None:
    raw = msgpack.unpackb(wire.encode_message(wire.Run(b"1-0", {b"task": b"ab"})), raw=True)
    assert raw == [b"T", b"1-0", {b"task": b"ab"}]
    with pytest.raises(WireError, match="'grant'"):
        wire.decode_message(msgpack.packb(["T", b"1-0", {}, 7]))
    with pytest.raises(WireError, match="'task_ids'"):
        wire.decode_message(msgpack.packb(["C", [1, 2], False]))
    with pytest.raises(WireError, match="'job_ids'"):
        wire.decode_message(msgpack.packb(["J", [1, 2]]))


def test_bad_messages_raise_a_wire_error() -> None:
    for bad in (msgpack.packb(["ZZ"]), msgpack.packb([]), msgpack.packb(["D", b"1-0"]), b"\xc1"):
        with pytest.raises(WireError, match="message"):
            wire.decode_message(bad)


# ---- nobody else reads the wire by hand -------------------------------------------------

# The short keys of the specs (TaskSpec, ActorSpec, CallSpec).
SPEC_KEYS = {"fn", "args", "nret", "owner", "job", "ns", "maxr", "rexc", "maxc", "res", "gen", "bp",
             "pg", "renv", "held", "async", "cls", "mtr", "groups", "m", "cg", "ev"}
# (module, key) pairs that are not spec keys: the CLI's object listing rows and the
# holder kinds of `taskmesh memory` say "owner".
NOT_SPECS = {("taskmesh/cli/commands.py", "owner"),
             ("taskmesh/dashboard/app.py", "job"),  # a query parameter
             ("taskmesh/dashboard/data.py", "owner"),  # an object summary's
             ("taskmesh/dashboard/data.py", "args")}  # a Chrome trace event's


def _modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "_base" / "wire.py"]


def _keys_read(tree: ast.AST) -> list[tuple[int, Any]]:
    """(line, key) of every `x[<constant>]` and `x.get(<constant>, ...)`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            out.append((node.lineno, node.slice.value))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant)):
            out.append((node.lineno, node.args[0].value))
    return out


def test_only_the_wire_module_reads_entry_fields_or_spec_keys() -> None:
    wrong = []
    for path in _modules():
        name = path.relative_to(PACKAGE.parent).as_posix()
        for line, key in _keys_read(ast.parse(path.read_text(), str(path))):
            if isinstance(key, bytes):
                wrong.append(f"{name}:{line} reads field {key!r}")
            elif isinstance(key, str) and key in SPEC_KEYS and (name, key) not in NOT_SPECS:
                wrong.append(f"{name}:{line} reads spec key {key!r}")
    assert wrong == []


def test_only_the_grammar_module_spells_queue_names() -> None:
    wrong = []
    for path in _modules():
        if path == PACKAGE / "_base" / "queues.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith(("node:", "pg:")):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert wrong == []
