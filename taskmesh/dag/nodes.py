"""The DAG nodes (Ray's `ray.dag`): `.bind()` records a call instead of making it, and
`dag.execute(...)` submits the recorded graph as tasks and actor calls, returning refs.

A node's upstream nodes reach it as the refs they returned, so, as for any `.remote()`
call, a top-level one is resolved to its value before the task runs and one nested in a
list, tuple or dict stays a ref. Within one `execute()` each node runs once however many
nodes use it; every `execute()` runs the whole graph again, creating its actors anew.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["ClassMethodNode", "ClassNode", "DAGInputData", "DAGNode", "FunctionNode",
           "InputAttributeNode", "InputNode", "MultiOutputNode"]


class DAGNode:
    """A recorded call: its arguments may hold other nodes (also inside lists, tuples
    and dicts), which run first and are replaced by their results."""

    def __init__(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None):
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs or {})
        self._bound_options = dict(options or {})

    def get_args(self) -> tuple[Any, ...]:
        return self._bound_args

    def get_kwargs(self) -> dict[str, Any]:
        return dict(self._bound_kwargs)

    def get_options(self) -> dict[str, Any]:
        return dict(self._bound_options)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Submit this node and everything it depends on; `args`/`kwargs` feed the
        InputNode. Returns what this node's `.remote()` returns (refs, a handle)."""
        return _Execution(args, kwargs).run(self)

    def _upstream(self) -> list[DAGNode]:
        """The nodes that must be submitted before this one, in submission order."""
        return list(_nodes_in((self._bound_args, self._bound_kwargs)))

    def _submit(self, run: _Execution) -> Any:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        if name == "remote":
            raise AttributeError(f".remote() cannot be used on a {type(self).__name__}: "
                                 "run the graph with .execute().")
        if name == "bind":
            raise AttributeError(f".bind() cannot be used again on a {type(self).__name__}.")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(args={self._bound_args!r}, kwargs={self._bound_kwargs!r})"


class FunctionNode(DAGNode):
    """A remote function call: runs as a task (with the options it was bound with)."""

    def __init__(self, function: Any, args: Sequence[Any], kwargs: dict[str, Any],
                 options: dict[str, Any]):
        super().__init__(args, kwargs, options)
        self._function = function

    def _submit(self, run: _Execution) -> Any:
        args, kwargs = run.arguments(self)
        return self._function.remote(*args, **kwargs)


class ClassNode(DAGNode):
    """An actor creation: each execute creates a new actor; `node.method.bind(...)`
    records a call on it."""

    def __init__(self, actor_class: Any, method_names: Collection[str], args: Sequence[Any],
                 kwargs: dict[str, Any], options: dict[str, Any]):
        super().__init__(args, kwargs, options)
        if any(isinstance(n, (InputNode, InputAttributeNode)) for n in self._upstream()):
            raise ValueError("An InputNode cannot be an argument of an actor's constructor: "
                             "the DAG's input is only known at execute time. Pass it to a "
                             "method instead (node.method.bind(inp)).")
        self._actor_class = actor_class
        self._method_names = frozenset(method_names)
        self._last_call: ClassMethodNode | None = None

    def _submit(self, run: _Execution) -> Any:
        args, kwargs = run.arguments(self)
        return self._actor_class.remote(*args, **kwargs)

    def __getattr__(self, name: str) -> _UnboundMethod:
        # Looked up only when normal lookup failed; dunders are protocol probes (copy,
        # pickle), never methods, and __dict__ may not be filled yet.
        if not name.startswith("__") and name in self.__dict__.get("_method_names", ()):
            return _UnboundMethod(self, name, {})
        return super().__getattr__(name)


class _UnboundMethod:
    """`class_node.method`: waits for `.bind(...)` (optionally after `.options(...)`)."""

    def __init__(self, actor: ClassNode, method_name: str, options: dict[str, Any]):
        self._actor = actor
        self._method_name = method_name
        self._options = options

    def options(self, **options: Any) -> _UnboundMethod:
        return _UnboundMethod(self._actor, self._method_name, {**self._options, **options})

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        """Record the call; it runs after every call bound earlier on the same ClassNode,
        so the actor sees its calls in the order they were bound (as Ray does)."""
        node = ClassMethodNode(self._actor, self._method_name, args, kwargs, self._options,
                               previous=self._actor._last_call)
        self._actor._last_call = node
        return node

    @property
    def remote(self) -> Any:
        raise AttributeError(".remote() cannot be used on a method of a ClassNode: use "
                             ".bind() to record the call, then .execute() the graph.")


class ClassMethodNode(DAGNode):
    """An actor method call, on the actor of a ClassNode or on a live actor handle."""

    def __init__(self, actor: Any, method_name: str, args: Sequence[Any], kwargs: dict[str, Any],
                 options: dict[str, Any], previous: ClassMethodNode | None = None):
        super().__init__(args, kwargs, options)
        self._actor = actor
        self._method_name = method_name
        self._previous = previous

    def _upstream(self) -> list[DAGNode]:
        extra = [n for n in (self._actor, self._previous) if isinstance(n, DAGNode)]
        return super()._upstream() + extra

    def _submit(self, run: _Execution) -> Any:
        actor = run.result(self._actor) if isinstance(self._actor, DAGNode) else self._actor
        method = getattr(actor, self._method_name)
        if self._bound_options:
            method = method.options(**self._bound_options)
        args, kwargs = run.arguments(self)
        return method.remote(*args, **kwargs)


_Input = TypeVar("_Input", bound="InputNode")  # typing.Self is Python 3.11+


class InputNode(DAGNode):
    """The DAG's input. With `dag.execute(x)` the node stands for `x` and `inp[k]` /
    `inp.k` for `x[k]` / `x.k`; with several arguments or keywords, `inp[i]` is the i-th
    positional one and `inp["k"]` / `inp.k` the keyword `k`."""

    def __init__(self, *args: Any, input_type: Any = None, **kwargs: Any):
        if args or kwargs:
            raise ValueError("InputNode takes no arguments: pass the input to dag.execute(...).")
        super().__init__()
        self.input_type = input_type
        self._fields: dict[tuple[str, int | str], InputAttributeNode] = {}

    def __enter__(self: _Input) -> _Input:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise TypeError(f"Select a DAG input with an int index or a str key, not {key!r}.")
        return self._field("item", key)

    def __getattr__(self, name: str) -> InputAttributeNode:
        # Private and protocol names (copy, pickle, IPython probes) are never input fields.
        if name.startswith("_"):
            raise AttributeError(f"'InputNode' object has no attribute '{name}'")
        return self._field("attr", name)

    def _field(self, how: str, key: int | str) -> InputAttributeNode:
        if (how, key) not in self._fields:
            self._fields[(how, key)] = InputAttributeNode(self, key, how)
        return self._fields[(how, key)]

    def _submit(self, run: _Execution) -> Any:
        return run.input_value()


class InputAttributeNode(DAGNode):
    """One part of the DAG's input: `inp[key]` (how="item") or `inp.key` (how="attr")."""

    def __init__(self, input_node: InputNode, key: int | str, how: str):
        super().__init__()
        self._input = input_node
        self._key = key
        self._how = how

    def _upstream(self) -> list[DAGNode]:
        return [self._input]

    def _submit(self, run: _Execution) -> Any:
        source = run.result(self._input)
        if isinstance(source, DAGInputData) or self._how == "item":
            return source[self._key]
        return getattr(source, self._key)  # type: ignore[arg-type]


class MultiOutputNode(DAGNode):
    """Several outputs at once: `execute()` returns the list of their results."""

    def __init__(self, outputs: Sequence[Any]):
        if not isinstance(outputs, (list, tuple)):
            raise ValueError(f"MultiOutputNode takes a list of nodes, got {type(outputs).__name__}.")
        super().__init__(outputs)

    def _submit(self, run: _Execution) -> list[Any]:
        return [run.resolve(output) for output in self._bound_args]


class DAGInputData:
    """The input of an execute() given several arguments or keywords: an int selects a
    positional argument, a str a keyword one."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._args = args
        self._kwargs = kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self._args[key]
        return self._kwargs[key]

    def __repr__(self) -> str:
        return f"DAGInputData(args={self._args!r}, kwargs={self._kwargs!r})"


class _Execution:
    """One execute(): its input and the result of each node submitted so far, so that a
    node used by several others is submitted once."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._args = args
        self._kwargs = kwargs
        self._results: dict[int, Any] = {}

    def run(self, root: DAGNode) -> Any:
        order = _upstream_first(root)
        self._check_input([n for n in order if isinstance(n, InputNode)])
        for node in order:
            self._results[id(node)] = node._submit(self)
        return self._results[id(root)]

    def result(self, node: DAGNode) -> Any:
        return self._results[id(node)]

    def resolve(self, value: Any) -> Any:
        """`value` with every node in it replaced by that node's result."""
        if isinstance(value, DAGNode):
            return self._results[id(value)]
        if type(value) in (list, tuple):
            return type(value)(self.resolve(v) for v in value)
        if type(value) is dict:
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def arguments(self, node: DAGNode) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self.resolve(node._bound_args), self.resolve(node._bound_kwargs)

    def input_value(self) -> Any:
        if len(self._args) == 1 and not self._kwargs:
            return self._args[0]
        return DAGInputData(self._args, self._kwargs)

    def _check_input(self, inputs: list[InputNode]) -> None:
        """Raised before anything is submitted, so that a wrong call leaves no task behind."""
        if len(inputs) > 1:
            raise ValueError("A DAG can use only one InputNode; select several values from "
                             "the same one with inp[0], inp[1] or inp.key.")
        if inputs and not self._args and not self._kwargs:
            raise ValueError("This DAG reads an InputNode but execute() got no input: pass "
                             "it as dag.execute(value) (or several values, or keywords).")


def _nodes_in(value: Any) -> Iterator[DAGNode]:
    """The nodes in `value`, looking inside the containers that `resolve` rebuilds."""
    if isinstance(value, DAGNode):
        yield value
    elif type(value) in (list, tuple):
        for v in value:
            yield from _nodes_in(v)
    elif type(value) is dict:
        for v in value.values():
            yield from _nodes_in(v)


def _upstream_first(root: DAGNode) -> list[DAGNode]:
    """Every node `root` depends on, each once, upstream before downstream (a depth-first
    post-order, iterative so that long chains do not hit the recursion limit)."""
    order: list[DAGNode] = []
    seen: set[int] = set()
    stack: list[tuple[DAGNode, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node._upstream()))
    return order
