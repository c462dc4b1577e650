"""Finding what makes an object unpicklable (Ray's `ray.util.check_serialize`).

`inspect_serializability(obj)` tries to pickle `obj` as taskmesh does; when that fails
it looks, up to `depth` levels down, at what the object refers to: a function's globals
and closure variables, an object's attributes, a container's items. It prints a report
and returns (serializable, the failing leaves as FailureTuples)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

from taskmesh.objects import ref as _ref

__all__ = ["FailureTuple", "inspect_serializability"]

_RULE = "=" * 80


class FailureTuple:
    """One object that failed to pickle: `name` is how its parent refers to it."""

    def __init__(self, obj: Any, name: str, parent: Any):
        self.obj = obj
        self.name = name
        self.parent = parent

    def __repr__(self) -> str:
        return f"FailTuple({self.name} [obj={self.obj}, parent={self.parent}])"


class _Printer:
    def __init__(self, print_file: Any):
        self.level = 0
        self.print_file = print_file

    @contextlib.contextmanager
    def indent(self) -> Iterator[None]:
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1

    def print(self, text: str) -> None:
        print("    " * self.level + text, file=self.print_file)


def inspect_serializability(base_obj: Any, name: str | None = None, depth: int = 3,
                            print_file: Any = None) -> tuple[bool, set[FailureTuple]]:
    """Whether `base_obj` pickles, and the objects found to prevent it (printed too)."""
    printer = _Printer(print_file)
    printer.print(_RULE)
    printer.print(f"Checking Serializability of {base_obj}")
    printer.print(_RULE)
    failures: set[FailureTuple] = set()
    ok = _inspect(base_obj, name or str(base_obj), depth, None, failures, printer)
    printer.print(_RULE)
    if ok:
        printer.print("Nothing failed the inspect_serialization test.")
    else:
        printer.print("Variable: \n")
        for failure in failures:
            printer.print(f"\t{failure}\n")
        printer.print("was found to be non-serializable. There may be multiple other "
                      "undetected variables that were non-serializable. ")
        printer.print("Consider either removing the instantiation/imports of these "
                      "variables or moving the instantiation into the scope of the "
                      "function/class. ")
    printer.print(_RULE)
    return ok, failures


def _pickles(obj: Any, printer: _Printer) -> bool:
    try:
        _ref.serialize(obj)
        return True
    except Exception as e:
        printer.print(f"!!! FAIL serialization: {e}")
        return False


def _inspect(obj: Any, name: str, depth: int, parent: Any, failures: set[FailureTuple],
             printer: _Printer) -> bool:
    """False when `obj` does not pickle; the deepest failing parts found are added to
    `failures` (`obj` itself when none of its parts fails, or at the depth limit)."""
    if _pickles(obj, printer):
        return True
    found = False
    if depth > 0:
        for label, members in _parts(obj):
            if not members:
                continue
            printer.print(f"Detected {len(members)} {label}. Checking serializability...")
            with printer.indent():
                for member_name, member in members.items():
                    printer.print(f"Serializing {member_name!r} {member}...")
                    if not _inspect(member, member_name, depth - 1, obj, failures, printer):
                        found = True
    if not found:
        if depth > 0:
            printer.print(f"WARNING: Did not find non-serializable object in {obj}. "
                          "This may be an oversight.")
        failures.add(FailureTuple(obj, name, parent))
    return False


def _parts(obj: Any) -> list[tuple[str, dict[str, Any]]]:
    """What `obj` refers to, by kind, each as {name: value}."""
    if inspect.isfunction(obj):
        closure = inspect.getclosurevars(obj)
        return [("global variables", dict(closure.globals)),
                ("nonlocal variables", dict(closure.nonlocals))]
    if isinstance(obj, dict):
        return [("items", {repr(k): v for k, v in obj.items()})]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [("items", {f"[{i}]": v for i, v in enumerate(obj)})]
    if inspect.isclass(obj):
        members = {k: v for k, v in vars(obj).items() if not k.startswith("__")}
        return [("class members", members)]
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        return [("attributes", dict(attributes))]
    return []
