"""`@remote` functions: option handling, export and task submission."""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import cloudpickle

from taskmesh import objects, runtime_env
from taskmesh._base import config, queues
from taskmesh._base.wire import QueueEntry, TaskSpec
from taskmesh._core import generators as _generator
from taskmesh._core import options as _options
from taskmesh._core import signatures
from taskmesh.objects import ObjectRef

if TYPE_CHECKING:
    from taskmesh.dag import FunctionNode

P = ParamSpec("P")
R = TypeVar("R")


class RemoteFunction(Generic[P, R]):
    """A function that runs as a task: call `.remote(...)` to get ObjectRefs."""

    def __init__(self, function: Callable[P, R], options: dict[str, Any]):
        if not callable(function):
            raise TypeError(f"remote() expects a function or a class, got {type(function).__name__}")
        if inspect.iscoroutinefunction(function):
            raise ValueError("'async def' should not be used for remote tasks. You can wrap the "
                             "async function with `asyncio.run(f())`.")
        self._function = function
        self._options = _options.validate(options, _options.TASK_OPTIONS, "remote functions")
        _options.check_task_options(self._options, in_options=False)
        if (self._options.get("num_gpus") or 0) > 0 and self._options.get("max_calls") is None:
            self._options["max_calls"] = 1  # as Ray: a GPU task's worker is not reused
        _options.validate_num_returns(_generator.is_generator_function(function),
                                      self._options.get("num_returns"))
        self._plan = _TaskPlan(function, self._options)
        self.__name__ = getattr(function, "__name__", "remote_function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__module__ = getattr(function, "__module__", __name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Remote functions cannot be called directly. Instead of running "
            f"'{self.__module__}.{self.__name__}()', try '{self.__module__}.{self.__name__}.remote()'."
        )

    def options(self, **options: Any) -> _BoundOptions[P, R]:
        """The same function with some options overridden for the next calls."""
        given = _options.validate(options, _options.TASK_OPTIONS, "remote functions")
        _options.check_task_options(given, in_options=True)
        if "num_returns" in given:
            _options.validate_num_returns(_generator.is_generator_function(self._function),
                                          given["num_returns"])
        merged = {**self._options, **given}
        return _BoundOptions(self, _TaskPlan(self._function, merged, parent=self._plan))

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef[R]:
        """Submit a call: a ref to its result (with `num_returns`, a list of refs or a
        generator of refs; typed for the common case). Arguments are `Any`: each may be
        a value or an ObjectRef of one."""
        return self._plan.invoke(args, kwargs)

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        """A DAG node for this call, submitted by its DAG's `execute()` (Ray's DAG API)."""
        from taskmesh.dag import FunctionNode

        return FunctionNode(self, args, kwargs, self._plan.given)

    def __getstate__(self) -> dict[str, Any]:
        return {"function": self._function, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["function"], state["options"])  # type: ignore[misc]


class _BoundOptions(Generic[P, R]):
    def __init__(self, parent: RemoteFunction[P, R], plan: _TaskPlan):
        self._parent = parent
        self._plan = plan

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef[R]:
        """Submit a call: a ref to its result (with `num_returns`, a list of refs or a
        generator of refs; typed for the common case). Arguments are `Any`: each may be
        a value or an ObjectRef of one."""
        return self._plan.invoke(args, kwargs)

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        """A DAG node for this call that keeps these options."""
        from taskmesh.dag import FunctionNode

        return FunctionNode(self, args, kwargs, self._plan.given)


class _TaskPlan:
    """What every call with one set of options shares: resolved options, shape, the
    exported function (pickled once per process) and the static part of the spec."""

    def __init__(self, function: Callable, options: dict[str, Any], parent: _TaskPlan | None = None):
        self.function = function
        self.given = dict(options)  # as set by the user: a DAG node's get_options()
        self.options = _options.resolved(options, _options.TASK_OPTIONS)
        self.name = self.options["name"] or getattr(function, "__name__", "task")
        num_returns = self.options["num_returns"]
        if num_returns is None:  # as Ray: a generator function streams by default
            num_returns = "streaming" if _generator.is_generator_function(function) else 1
        # A generator call has one return of its own, its generator ref (generators.py).
        self.generator: str | None = _generator.WIRE_MODE.get(num_returns)
        self.streaming = num_returns == "streaming"
        backpressure = self.options["_generator_backpressure_num_objects"] or 0
        self.backpressure = backpressure if self.streaming and backpressure > 0 else 0
        self.num_returns: int = 1 if self.generator else num_returns
        self.demand = _options.task_demand(self.options)
        self.shape = queues.shape_name(self.demand)
        self.strategy = _options.strategy_of(self.options)
        self.decorator = getattr(function, "__ray_invocation_decorator__", None)
        retry = self.options["retry_exceptions"]
        self.retry_exceptions = retry if isinstance(retry, bool) else cloudpickle.dumps(tuple(retry))
        self._export: _Export = parent._export if parent is not None else _Export(function)
        self.signature: inspect.Signature | None = (parent.signature if parent is not None
                          else signatures.signature_of(function))
        self._spec_wires: dict[tuple, bytes] = {}  # see submit

    def invoke(self, args: tuple, kwargs: dict) -> Any:
        """`submit`, through the function's __ray_invocation_decorator__ when it has one
        (Ray's: it wraps the invocation(args, kwargs) on the caller's side)."""
        if self.decorator is None:
            return self.submit(args, kwargs)
        return self.decorator(lambda a, k: self.submit(tuple(a), k))(args, kwargs)

    def submit(self, args: tuple, kwargs: dict) -> Any:
        from taskmesh._core.context import get_runtime

        # Refused before anything starts (auto-init included): a wrong call, a definition
        # too large to export.
        signatures.check(self.signature, args, kwargs)
        fn_id = self._export.fn_id()
        runtime = get_runtime(auto_init=True)
        runtime.export_function(fn_id, self._export.blob)
        task_id = objects.new_task_id(runtime.owner)
        returns = [objects.object_id(task_id, i + 1) for i in range(self.num_returns)]
        args_blob, deps, holds, _sent = _pack_args(runtime, args, kwargs)
        route = runtime.route(self.strategy, self.demand, self.shape, deps, actor=False)
        renv = runtime_env.resolve(runtime.runtime_env, self.options["runtime_env"], runtime.store)
        spec = TaskSpec(
            fn_id, args_blob, self.num_returns, runtime.owner, runtime.job_id, runtime.namespace,
            max_retries=self.options["max_retries"], retry_exceptions=self.retry_exceptions,
            max_calls=self.options["max_calls"], resources=self.demand, generator=self.generator,
            backpressure=self.backpressure, pg=route.pg, runtime_env=renv or None,
            detached=runtime.detached)
        # The spec's bytes leave the arguments out: the same for every call from here with
        # the same placement (a runtime_env is packed each time).
        wire_key = None if renv else (fn_id, runtime.owner, runtime.job_id, runtime.namespace,
                                      runtime.detached, None if route.pg is None else tuple(route.pg))
        spec_wire = self._spec_wires.get(wire_key) if wire_key is not None else None
        if spec_wire is None:
            spec_wire = spec.to_wire()
            if wire_key is not None:
                if len(self._spec_wires) >= 64:
                    self._spec_wires.clear()
                self._spec_wires[wire_key] = spec_wire
        entry = QueueEntry(task_id, self.name, 0, spec, shape=route.shape, soft=route.soft,
                           events=self.options["enable_task_events"], spec_wire=spec_wire)
        refs: list[ObjectRef[Any]] = [ObjectRef(oid) for oid in returns]
        if self.streaming:
            runtime.open_stream(task_id, self.backpressure)
        if route.unschedulable:
            runtime.fail_unschedulable(entry, returns, route.unschedulable)
        else:
            runtime.submit(route.queue, entry, deps, returns, holds=holds,
                           locality=(self.demand, self.shape)
                           if route.queue == self.shape and self.strategy in (None, "DEFAULT") else None)
        if self.streaming:
            return _generator.ObjectRefGenerator(refs[0], runtime)
        if self.num_returns == 1:
            return refs[0]
        return refs if self.num_returns > 1 else None


class _Export:
    """The function (or actor class) pickled once, and its content-addressed id."""

    def __init__(self, function: Callable, what: str = "remote function"):
        self._function = function
        self._what = what
        self._lock = threading.Lock()
        self._blob: bytes | None = None
        self._fn_id: str | None = None

    def fn_id(self) -> str:
        """The id; ValueError (each time) when the pickled definition is too large."""
        if self._fn_id is None:
            with self._lock:
                if self._fn_id is None:
                    blob = objects.serialize_definition(self._function)
                    _check_size(len(blob), getattr(self._function, "__name__", "?"), self._what)
                    self._blob = blob
                    self._fn_id = hashlib.sha1(blob).hexdigest()
        return self._fn_id

    def blob(self) -> bytes:
        assert self._blob is not None
        return self._blob


def _check_size(size: int, name: str, what: str) -> None:
    """Ray's refusal of a definition that captured something large (every worker that
    runs it loads it from Redis)."""
    limit = config.FUNCTION_SIZE_ERROR_THRESHOLD.get()
    if size > limit:
        mib = 1024 * 1024
        raise ValueError(
            f"The {what} '{name}' is too large ({size // mib} MiB > "
            f"FUNCTION_SIZE_ERROR_THRESHOLD={limit // mib} MiB). Check that its definition is "
            "not implicitly capturing a large array or other object in scope. Tip: use "
            "taskmesh.put() to put large objects in the object store.")


def _pack_args(runtime: Any, args: tuple, kwargs: dict) -> tuple[bytes, list[str], list[str], tuple]:
    """Serialize the arguments; large top-level ones are put as objects first (as Ray
    does above 100 KiB) so that specs in the queues stay small. Returns the blob, the
    top-level refs (dependencies), every ref in the arguments (held while the task is
    pending) and the arguments as sent: the caller keeps them until the task is
    submitted, or the refs of promoted arguments could be dropped, and their objects
    freed, before the task holds them."""
    plain = objects.plain_call_pickle(args, kwargs)
    if plain is not None and len(plain) <= objects.INLINE_ARG_LIMIT:  # no refs in it
        return plain, [], [], (args, kwargs)
    with objects.collecting_refs() as found:
        blob = objects.serialize((list(args), kwargs))
    if len(blob) > objects.INLINE_ARG_LIMIT:
        args = tuple(_promote(runtime, a) for a in args)
        kwargs = {k: _promote(runtime, v) for k, v in kwargs.items()}
        with objects.collecting_refs() as found:
            blob = objects.serialize((list(args), kwargs))
    deps = [a.hex() for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
    return blob, deps, list(dict.fromkeys(found)), (args, kwargs)


def _promote(runtime: Any, value: Any) -> Any:
    if isinstance(value, ObjectRef):
        return value
    with objects.collecting_refs():  # only measuring: the refs inside are not sent
        size = objects.serialize_oob(value).size
    return runtime.put(value) if size > objects.INLINE_ARG_LIMIT else value
