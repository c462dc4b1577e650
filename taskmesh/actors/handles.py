"""Actors: `@remote` classes, their handles and method calls (Ray's `ray.actor`).

Creating an actor registers `tm:actor:{id}` (and its name) in one script and queues a
creation entry in the shape queue like a task; the agent that leases it turns one of its
workers into the actor's dedicated process. Method calls are appended to the actor's own
stream `tm:actor:{id}:calls` and read by that process directly, in order.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
import msgpack

from taskmesh import objects, runtime_env
from taskmesh._base import ids, queues
from taskmesh._base.wire import ACTOR, READY, TERMINATE, ActorSpec, CallSpec, QueueEntry
from taskmesh._core import failure as _failure
from taskmesh._core import generators as _generator
from taskmesh._core import options as _options
from taskmesh._core import signatures
from taskmesh._core.remote_function import _Export, _pack_args
from taskmesh.exceptions import ActorExitRequest
from taskmesh.objects import ObjectRef

if TYPE_CHECKING:
    from taskmesh.dag import ClassMethodNode, ClassNode


@dataclass(frozen=True, slots=True)
class MethodMeta:
    num_returns: int | str = 1  # or "streaming" / "dynamic" for generator methods
    concurrency_group: str | None = None
    is_async: bool = False
    is_generator: bool = False
    backpressure: int = 0  # _generator_backpressure_num_objects (> 0: on)
    params: signatures.Params | None = None  # to check calls; None: unchecked
    max_task_retries: int | None = None  # None: the actor's
    retry_exceptions: bool | bytes = False  # bytes: the cloudpickled tuple of types (CallSpec)
    # The method's __ray_invocation_decorator__ (Ray's): wraps its invocation(args, kwargs)
    # on the caller's side; cloudpickled on the wire.
    decorator: Callable | None = None

    def to_wire(self) -> list:
        fields = [self.num_returns, self.concurrency_group, self.is_async, self.is_generator,
                  self.backpressure, self.params, self.max_task_retries, self.retry_exceptions]
        return fields if self.decorator is None else [*fields, cloudpickle.dumps(self.decorator)]

    @classmethod
    def from_wire(cls, raw: list) -> MethodMeta:
        fields = list(raw)
        if len(fields) > 5:
            fields[5] = signatures.params_from_wire(fields[5])
        if len(fields) > 8:
            fields[8] = cloudpickle.loads(fields[8])
        return cls(*fields)


def exit_actor() -> None:
    """Stop the current actor: no restart, the calls queued behind fail with
    RayActorError, atexit handlers run. Called from a method, it ends that method (whose
    caller sees the actor's death); from a background asyncio task of an async actor, the
    actor ends as soon as its serving loop sees it."""
    from taskmesh._core.context import get_runtime

    runtime = get_runtime()
    if runtime.context.actor_id is None:
        where = "a task's worker" if runtime.context.task_id else "the driver"
        raise TypeError(f"exit_actor API is called on a non-actor worker, {where}. Call this API "
                        "inside an actor method if you'd like to exit the actor gracefully.")
    if runtime.on_exit_actor is not None:
        runtime.on_exit_actor()
    raise ActorExitRequest()


# Ray's @ray.method keywords; the ones taskmesh does not implement raise NotImplementedError.
_METHOD_OPTIONS = ["num_returns", "concurrency_group", "max_task_retries", "retry_exceptions",
                   "_generator_backpressure_num_objects", "_num_objects_per_yield",
                   "enable_task_events", "tensor_transport"]
_METHOD_SUPPORTED = {"num_returns", "concurrency_group", "enable_task_events", "max_task_retries",
                     "retry_exceptions", "_generator_backpressure_num_objects"}
_BACKPRESSURE = "_generator_backpressure_num_objects"


def _check_retry_options(options: dict[str, Any]) -> None:
    """max_task_retries and retry_exceptions of a method, checked as the actor's and a
    task's are (TypeError or ValueError naming the option)."""
    if "max_task_retries" in options:
        _options.ACTOR_OPTIONS["max_task_retries"].validate("max_task_retries",
                                                            options["max_task_retries"])
    if "retry_exceptions" in options:
        _options.TASK_OPTIONS["retry_exceptions"].validate("retry_exceptions",
                                                           options["retry_exceptions"])


def _retry_wire(retry: bool | list | tuple | None) -> bool | bytes:
    """retry_exceptions as a call carries it: a bool, or the pickled exception types."""
    if retry is None or isinstance(retry, bool):
        return bool(retry)
    return cloudpickle.dumps(tuple(retry))


def method(*args: Any, **options: Any) -> Any:
    """`@taskmesh.method(num_returns=2, concurrency_group="io")` on an actor method
    (also bare, `@taskmesh.method`). As Ray, a wrong keyword fails an assertion."""
    if len(args) == 1 and callable(args[0]) and not options:
        return args[0]
    assert not args, ("The @taskmesh.method decorator must be applied using no arguments or "
                      f"at least one of the arguments in the list {_METHOD_OPTIONS}, for "
                      "example '@taskmesh.method(num_returns=2)'.")
    for key in options:
        assert key in _METHOD_OPTIONS, (f"Unexpected keyword argument to @taskmesh.method: "
                                        f"'{key}'. The supported keyword arguments are "
                                        f"{_METHOD_OPTIONS}")
        if key not in _METHOD_SUPPORTED:
            raise NotImplementedError(f"The @method keyword '{key}' is valid in Ray, but taskmesh "
                                      "does not support it yet; remove it to run this program.")

    if _BACKPRESSURE in options:
        _options.TASK_OPTIONS[_BACKPRESSURE].validate(_BACKPRESSURE, options[_BACKPRESSURE])
    _check_retry_options(options)

    def decorate(fn: Callable) -> Callable:
        if "num_returns" in options:
            _options.validate_num_returns(_generator.is_generator_function(fn), options["num_returns"])
        fn.__taskmesh_method__ = dict(options)  # type: ignore[attr-defined]
        return fn

    return decorate


def _methods_of(cls: type) -> dict[str, MethodMeta]:
    out = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name not in ("__call__",):
            continue
        opts = getattr(fn, "__taskmesh_method__", {})
        generator = _generator.is_generator_function(fn)
        num_returns = opts.get("num_returns")
        if num_returns is None:  # as Ray: a generator method streams by default
            num_returns = "streaming" if generator else 1
        # A plain function in the class takes self; a static method does not, and a
        # class method arrives bound.
        unbound = inspect.isfunction(fn) and not isinstance(inspect.getattr_static(cls, name, None),
                                                            staticmethod)
        out[name] = MethodMeta(num_returns, opts.get("concurrency_group"),
                               inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
                               generator, max(opts.get(_BACKPRESSURE) or 0, 0),
                               signatures.to_params(signatures.signature_of(fn, drop_first=unbound)),
                               opts.get("max_task_retries"), _retry_wire(opts.get("retry_exceptions")),
                               getattr(fn, "__ray_invocation_decorator__", None))
    out[TERMINATE] = MethodMeta(1)  # as Ray's: a ref, whose get raises RayActorError
    out[READY] = MethodMeta(1)
    return out


class ActorClassInheritanceException(TypeError):
    """A class statement tried to subclass an actor class (Ray's `ray.actor` name)."""


class ActorClass:
    """A class decorated with `@remote`: `Cls.remote(...)` creates an actor. The user's
    class attributes, class methods and static methods are reachable through it, as
    Ray's actor class (which derives from the user's class) has them."""

    def __init__(self, cls: type, options: dict[str, Any]):
        self._cls = cls
        self._options = _options.validate(options, _options.ACTOR_OPTIONS, "actors")
        _options.check_actor_options(self._options, in_options=False)
        self._methods = _methods_of(cls)
        self._export = _Export(cls, "actor")
        self._signature = signatures.constructor_signature(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __mro_entries__(self, bases: tuple) -> tuple:
        """`class Sub(ActorCls)`: refused, as Ray does."""
        raise ActorClassInheritanceException(
            f"Attempted to define a subclass of actor class '{self.__name__}'. Inheriting from "
            "actor classes is not currently supported. You can instead inherit from a "
            "non-actor base class and make the derived class an actor class (with "
            "@taskmesh.remote).")

    def __getattr__(self, name: str) -> Any:
        # Only names ActorClass lacks arrive here: the user's class attributes, static
        # and class methods (inherited ones too). Dunder names are not forwarded, so
        # pickling and copying see an ActorClass.
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"'ActorClass' object has no attribute '{name}'")
        try:
            value = getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"Actor class '{cls.__name__}' has no attribute '{name}'") from None
        if inspect.isfunction(value):
            # A copy, not the function itself: cloudpickle pickles a function by
            # reference when its module's `Cls.name` *is* it, and the workers need not
            # be able to import the module that defines the class.
            return _forwarded(value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self._cls)))

    def __getstate__(self) -> dict[str, Any]:
        return {"class": self._cls, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["class"], state["options"])  # type: ignore[misc]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
                        f"use '{self.__name__}.remote()'.")

    def options(self, **options: Any) -> _ActorOptions:
        given = _options.validate(options, _options.ACTOR_OPTIONS, "actors")
        merged = {**self._options, **given}
        _options.check_actor_options(given, in_options=True, merged=merged)
        return _ActorOptions(self, merged)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._create(self._options, args, kwargs)

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode:
        """A DAG node that creates this actor on each `execute()` (Ray's DAG API)."""
        from taskmesh.dag import ClassNode

        return ClassNode(self, self._methods, args, kwargs, self._options)

    def _create(self, options: dict[str, Any], args: tuple, kwargs: dict) -> ActorHandle:
        from taskmesh._core.context import get_runtime

        # Refused before anything starts (auto-init included).
        signatures.check(self._signature, args, kwargs)
        fn_id = self._export.fn_id()
        runtime = get_runtime(auto_init=True)
        opts = _options.resolved(options, _options.ACTOR_OPTIONS)
        placement, held = actor_demand(opts)
        shape = queues.shape_name(placement)
        runtime.export_function(fn_id, self._export.blob)
        actor_id = ids.new_actor_id(runtime.owner)
        is_async = any(m.is_async for m in self._methods.values())
        max_concurrency = opts["max_concurrency"] or (1000 if is_async else 1)
        args_blob, deps, holds, _sent = _pack_args(runtime, args, kwargs)
        route = runtime.route(_options.strategy_of(opts), placement, shape, deps, actor=True)
        renv = runtime_env.resolve(runtime.runtime_env, opts["runtime_env"], runtime.store)
        events = opts["enable_task_events"]  # for the creation and every method call
        detached = opts["lifetime"] == "detached"
        spec = ActorSpec(
            fn_id, args_blob, runtime.owner, runtime.job_id, self.__name__, runtime.namespace,
            held=held, max_concurrency=max_concurrency, is_async=is_async,
            max_task_retries=opts["max_task_retries"],
            concurrency_groups=opts["concurrency_groups"] or {}, pg=route.pg,
            runtime_env=renv or None, events=events, detached=detached)
        entry = QueueEntry(actor_id, f"{self.__name__}.__init__", 0, spec, kind=ACTOR,
                           shape=route.shape, soft=route.soft, events=events)
        name = opts["name"] or ""
        namespace = opts["namespace"] or runtime.namespace or ""
        methods = msgpack.packb({k: v.to_wire() for k, v in self._methods.items()})
        fields = {
            "class_name": self.__name__, "state": "PENDING", "restarts": 0,
            "max_restarts": opts["max_restarts"], "name": name, "namespace": namespace,
            "shape": shape, "spec": entry.spec_wire, "init_name": entry.name,
            "job_id": runtime.job_id or "", "detached": int(detached), "methods": methods,
            "node_id": "", "pid": "",
            **({"queue": route.queue, "soft": int(route.soft)} if route.queue != shape else {}),
        }
        status, found = runtime.store.create_actor(
            actor_id, job_id=runtime.job_id or "", namespace=namespace, name=name,
            get_if_exists=opts["get_if_exists"], fields=fields, token=not detached)
        if status == "existing":
            return get_actor(name, namespace)
        if status == "taken":
            raise ValueError(f"The name {name} (namespace={namespace}) is already taken. Please "
                             f"use a different name or get the existing actor using "
                             f"taskmesh.get_actor('{name}', namespace='{namespace}').")
        # Held from here: dropped, it ends the actor (and frees the token) however this ends.
        token: ObjectRef | None = None if detached else ObjectRef(ids.actor_token(actor_id))
        if route.unschedulable:
            runtime.fail_unschedulable(entry, (), route.unschedulable, actor_id=actor_id)
        else:
            runtime.submit(route.queue, entry, deps, (), holds=holds)
        return ActorHandle(actor_id, self.__name__, self._methods, token)


def _forwarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return call


class _ActorOptions:
    def __init__(self, actor_class: ActorClass, options: dict[str, Any]):
        self._actor_class = actor_class
        self._opts = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._actor_class._create(self._opts, args, kwargs)

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode:
        """A DAG node that creates this actor, with these options, on each `execute()`."""
        from taskmesh.dag import ClassNode

        return ClassNode(self, self._actor_class._methods, args, kwargs, self._opts)


def actor_demand(opts: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(resources to place the actor, resources it holds while alive). As Ray: by
    default an actor needs 1 CPU to be placed and holds none; an explicit num_cpus is
    both needed and held, as are GPUs, memory and custom resources."""
    held = _options.task_demand(opts)
    if opts.get("num_cpus") is None:
        held.pop("CPU", None)
        return {**held, "CPU": 1.0}, held
    return dict(held), held


class ActorHandle:
    """A handle to an actor: `handle.method.remote(...)`; picklable into other tasks.

    As in Ray, a non-detached actor lives while a handle that counts exists in some
    process: the handle its creation returned, and every copy of it passed on (task and
    call arguments and results, `put`, objects that contain it). Such a handle holds a
    ref to the actor's token (an object its creation wrote, `ids.actor_token`) and
    pickles it along, so the object refcounting tracks the handles (borrowers, nested
    refs, a dead process's holds); when the token is freed the actor gets a terminate
    call (lifecycle.release). Handles from `get_actor` and `current_actor`, and every
    handle of a detached actor, hold none (Ray's weak handles): they do not keep it alive."""

    def __init__(self, actor_id: str, class_name: str, methods: dict[str, MethodMeta],
                 _token: ObjectRef | None = None):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._token = _token

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name not in methods:
            raise AttributeError(f"'ActorHandle' object for actor {self.__dict__.get('_class_name')} "
                                 f"has no method '{name}'")
        return ActorMethod(self, name, methods[name])

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self) -> tuple:
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._token))


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, meta: MethodMeta,
                 num_returns: int | str | None = None):
        self._handle = handle
        self._name = name
        self._meta = meta
        self._num_returns = meta.num_returns if num_returns is None else num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'object.{self._name}()', try 'object.{self._name}.remote()'.")

    def options(self, **options: Any) -> ActorMethod:
        valid = ["_generator_backpressure_num_objects", "concurrency_group", "max_task_retries",
                 "name", "num_returns", "retry_exceptions"]
        unknown = set(options) - set(valid)
        if unknown:
            raise ValueError(f"Invalid option keyword {sorted(unknown)[0]} for actor methods. "
                             f"Valid ones are {valid}.")
        if _BACKPRESSURE in options:
            _options.TASK_OPTIONS[_BACKPRESSURE].validate(_BACKPRESSURE, options[_BACKPRESSURE])
        _check_retry_options(options)
        if "num_returns" in options:
            _options.validate_num_returns(self._meta.is_generator, options["num_returns"])
        n = options.get("num_returns", self._num_returns)
        if n is None:
            n = "streaming" if self._meta.is_generator else 1
        backpressure = options.get(_BACKPRESSURE, self._meta.backpressure)
        retry = self._meta.retry_exceptions
        if "retry_exceptions" in options:
            retry = _retry_wire(options["retry_exceptions"])
        meta = MethodMeta(n, options.get("concurrency_group", self._meta.concurrency_group),
                          self._meta.is_async, self._meta.is_generator, max(backpressure or 0, 0),
                          self._meta.params,
                          options.get("max_task_retries", self._meta.max_task_retries), retry,
                          self._meta.decorator)
        return ActorMethod(self._handle, self._name, meta, n)

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        """A DAG node for a call on this live actor, made by each `execute()`."""
        from taskmesh.dag import ClassMethodNode

        options = {"num_returns": self._num_returns, "concurrency_group": self._meta.concurrency_group}
        return ClassMethodNode(self._handle, self._name, args, kwargs, options)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self._meta.decorator is not None:  # as Ray: it wraps the invocation
            return self._meta.decorator(lambda a, k: self._invoke(tuple(a), k))(args, kwargs)
        return self._invoke(args, kwargs)

    def _invoke(self, args: tuple, kwargs: dict) -> Any:
        from taskmesh._core.context import get_runtime

        signatures.check(signatures.from_params(self._meta.params), args, kwargs)
        runtime = get_runtime(auto_init=True)
        task_id = objects.new_task_id(runtime.owner)
        generator = _generator.WIRE_MODE.get(self._num_returns)  # type: ignore[arg-type]
        n: int = 1 if generator else self._num_returns  # type: ignore[assignment]
        returns = [objects.object_id(task_id, i + 1) for i in range(n)]
        args_blob, deps, holds, _sent = _pack_args(runtime, args, kwargs)
        streaming = generator == _generator.WIRE_MODE[_generator.STREAMING]
        call = CallSpec(self._name, args_blob, n, runtime.owner, runtime.job_id,
                        self._meta.concurrency_group, generator,
                        self._meta.backpressure if streaming else 0, self._meta.max_task_retries,
                        self._meta.retry_exceptions)
        entry = QueueEntry(task_id, f"{self._handle._class_name}.{self._name}", 0, call)
        refs: list[ObjectRef[Any]] = [ObjectRef(oid) for oid in returns]
        if streaming:
            runtime.open_stream(task_id, self._meta.backpressure)
            runtime.submit("", entry, deps, returns, actor_id=self._handle._actor_id, holds=holds)
            return _generator.ObjectRefGenerator(refs[0], runtime)
        runtime.submit("", entry, deps, returns, actor_id=self._handle._actor_id, holds=holds)
        if n == 1:
            return refs[0]
        return refs if n > 1 else None


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a live named actor; ValueError when there is none."""
    from taskmesh._core.context import get_runtime

    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    runtime = get_runtime(auto_init=True)
    ns = namespace if namespace is not None else (runtime.namespace or "")
    actor_id = runtime.store.named_actor(ns, name)
    info = runtime.store.actor_info(actor_id) if actor_id else {}
    if not info or info.get("state") == "DEAD":
        raise ValueError(f"Failed to look up actor with name '{name}' in namespace '{ns}'. This "
                         "could be because 1. you are trying to look up a named actor you didn't "
                         "create, 2. the named actor died, or 3. you did not use a namespace "
                         "matching the namespace of the actor.")
    return handle_for(actor_id, info)  # type: ignore[arg-type]


def handle_for(actor_id: str, info: dict[str, Any] | None = None) -> ActorHandle:
    """A (non-owning) handle of the actor `actor_id`, built from what Redis holds."""
    from taskmesh._core.context import get_runtime

    store = get_runtime().store
    info = store.actor_info(actor_id) if info is None else info
    raw = store.actor_methods(actor_id)
    methods = {k: MethodMeta.from_wire(v) for k, v in msgpack.unpackb(raw, raw=False).items()}
    return ActorHandle(actor_id, info.get("class_name", "Actor"), methods)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Kill an actor now (its process is SIGKILLed); calls in flight fail with
    RayActorError; with no_restart=False it restarts if max_restarts allows."""
    from taskmesh._core.context import get_runtime

    if not isinstance(actor, ActorHandle):
        raise ValueError(f"taskmesh.kill() only supported for actors. For tasks, try "
                         f"taskmesh.cancel(). Got: {type(actor)}.")
    runtime = get_runtime()
    state, _ = runtime.store.kill_actor(actor._actor_id, no_restart=no_restart, cause=_failure.KILLED)
    if state in ("PENDING", "RESTARTING") and no_restart:
        runtime.fail_drained_calls(actor._actor_id, _failure.KILLED)


# Reprs and pickles name the public path (Ray's), not the module that defines them.
for _cls in (ActorClass, ActorClassInheritanceException, ActorHandle, ActorMethod):
    _cls.__module__ = "taskmesh.actor"
