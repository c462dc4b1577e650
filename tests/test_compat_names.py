"""Ray's module paths and names that programs import: each test is written from what Ray
documents for the name (where it lives, what it returns, what it raises)."""

from __future__ import annotations

import io
import threading
import time

import pytest

import taskmesh
from taskmesh import exceptions


def test_dag_input_and_output_node_module_paths() -> None:
    from taskmesh.dag import InputNode as FromPackage
    from taskmesh.dag.class_node import ClassMethodNode, ClassNode
    from taskmesh.dag.dag_node import DAGNode
    from taskmesh.dag.function_node import FunctionNode
    from taskmesh.dag.input_node import InputNode
    from taskmesh.dag.output_node import MultiOutputNode

    assert InputNode is FromPackage
    assert issubclass(MultiOutputNode, DAGNode) and issubclass(FunctionNode, DAGNode)
    assert issubclass(ClassNode, DAGNode) and issubclass(ClassMethodNode, DAGNode)
    with InputNode() as inp:
        assert isinstance(inp, DAGNode)


def test_cloudpickle_module_path() -> None:
    from taskmesh import cloudpickle

    value = {"f": lambda x: x + 1}
    assert cloudpickle.loads(cloudpickle.dumps(value))["f"](1) == 2
    assert taskmesh.cloudpickle is cloudpickle
    assert callable(cloudpickle.register_pickle_by_value) and cloudpickle.CloudPickler


def test_types_object_ref_and_object_id() -> None:
    from taskmesh.types import ObjectRef

    def annotated() -> ObjectRef[int]:  # Ray documents ObjectRef[T] for annotations
        raise NotImplementedError

    assert annotated.__annotations__["return"] is not None
    assert ObjectRef is taskmesh.ObjectRef
    assert taskmesh.ObjectID is taskmesh.ObjectRef


def test_runtime_env_config() -> None:
    from taskmesh.runtime_env import RuntimeEnv, RuntimeEnvConfig

    config = RuntimeEnvConfig()
    assert config["setup_timeout_seconds"] == 600 and config["eager_install"] is True
    assert isinstance(config, dict)
    assert RuntimeEnvConfig(setup_timeout_seconds=-1)["setup_timeout_seconds"] == -1
    with pytest.raises(ValueError):
        RuntimeEnvConfig(setup_timeout_seconds=0)
    with pytest.raises(TypeError):
        RuntimeEnvConfig(setup_timeout_seconds="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RuntimeEnvConfig(eager_install="yes")  # type: ignore[arg-type]
    # Accepted where Ray takes it: a runtime_env's "config" (as a dict too).
    env = RuntimeEnv(env_vars={"A": "1"}, config=RuntimeEnvConfig(setup_timeout_seconds=30))
    assert env["env_vars"] == {"A": "1"}
    assert RuntimeEnv(config={"eager_install": False}) == {}
    with pytest.raises(ValueError):
        RuntimeEnv(config={"bogus": 1})


def test_object_ref_stream_end_of_stream_error() -> None:
    assert issubclass(exceptions.ObjectRefStreamEndOfStreamError, exceptions.RayError)


def test_make_dual_exception_instance() -> None:
    class MyError(Exception):
        def __init__(self, code: int):
            super().__init__(code)
            self.code = code

    err = exceptions.RayTaskError("f", "Traceback ...", MyError(7))
    dual = err.make_dual_exception_instance()
    assert isinstance(dual, exceptions.RayTaskError) and isinstance(dual, MyError)
    assert dual.code == 7 and dual.cause is err.cause
    # A cause class that cannot be subclassed: TypeError here, the plain error from
    # as_instanceof_cause.
    final = exceptions.RayTaskError("f", "tb", True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        final.make_dual_exception_instance()
    assert final.as_instanceof_cause() is final


def test_register_serializer_applies_when_pickling() -> None:
    from taskmesh import objects

    class Holder:
        def __init__(self, value: int):
            self.value = value
            self.lock = threading.Lock()  # not picklable

    with pytest.raises(TypeError):
        objects.serialize(Holder(1))
    taskmesh.util.register_serializer(Holder, serializer=lambda h: h.value,
                                      deserializer=lambda v: ("rebuilt", v))
    try:
        assert objects.deserialize(objects.serialize([Holder(3), {"k": Holder(4)}])) == [
            ("rebuilt", 3), {"k": ("rebuilt", 4)}]
    finally:
        taskmesh.util.deregister_serializer(Holder)
    with pytest.raises(TypeError):
        objects.serialize(Holder(1))
    taskmesh.util.deregister_serializer(Holder)  # none registered: nothing happens


def test_register_serializer_end_to_end(ray) -> None:
    class Conn:
        def __init__(self, host: str):
            self.host = host
            self.lock = threading.Lock()

    @ray.remote
    def host_of(conn):
        return conn

    ray.util.register_serializer(Conn, serializer=lambda c: c.host,
                                 deserializer=lambda host: f"conn to {host}")
    try:
        assert ray.get(host_of.remote(Conn("db"))) == "conn to db"
        assert ray.get(ray.put(Conn("cache"))) == "conn to cache"
    finally:
        ray.util.deregister_serializer(Conn)


def test_inspect_serializability() -> None:
    lock = threading.Lock()

    def uses_lock():
        return lock

    out = io.StringIO()
    ok, failures = taskmesh.util.inspect_serializability(uses_lock, name="uses_lock", print_file=out)
    assert ok is False
    assert [f.name for f in failures] == ["lock"]
    (failure,) = failures
    assert failure.obj is lock and failure.parent is uses_lock
    text = out.getvalue()
    assert "Checking Serializability of" in text and "FAIL serialization" in text
    assert "was found to be non-serializable" in text

    out = io.StringIO()
    assert taskmesh.util.inspect_serializability(lambda: 1, print_file=out) == (True, set())
    assert "Nothing failed" in out.getvalue()


def _until(fn, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_state_get_functions(ray) -> None:
    from taskmesh.util import state

    @ray.remote
    class Counter:
        def ping(self):
            return "pong"

    @ray.remote
    def named_for_get_task():
        return 1

    counter = Counter.remote()
    assert ray.get(counter.ping.remote()) == "pong"
    actor = state.get_actor(counter._actor_id)
    assert actor is not None and actor.actor_id == counter._actor_id and actor.class_name == "Counter"
    assert state.get_actor("0" * 16) is None

    node_id = state.list_nodes()[0].node_id
    assert state.get_node(node_id).state == "ALIVE"
    job_id = ray.get_runtime_context().get_job_id()
    assert state.get_job(job_id).job_id == job_id

    ref = named_for_get_task.remote()
    ray.get(ref)
    task = _until(lambda: state.get_task(ref.task_id()))
    assert task is not None and task.name == "named_for_get_task"
    assert state.get_task(ref) == task  # by one of its refs too
    assert state.get_task("f" * 24) is None

    put = ray.put(b"x" * 10)
    (obj,) = state.get_objects(put.hex())
    assert obj.object_id == put.hex()
    assert state.get_objects("0" * 28) == []

    workers = state.list_workers()
    assert workers and all(w.node_id == node_id for w in workers)
    assert state.get_worker(workers[0].worker_id).worker_id == workers[0].worker_id
    assert state.get_worker("nobody") is None

    pg = ray.util.placement_group([{"CPU": 1}])
    try:
        row = state.get_placement_group(pg.id.hex())
        assert row is not None and row.placement_group_id == pg.id.hex()
        assert [r.placement_group_id for r in state.list_placement_groups()] == [pg.id.hex()]
    finally:
        ray.util.remove_placement_group(pg)
