"""Checking a call's arguments against the callable's signature when `.remote()` is
called, as Ray does: a missing, extra or duplicated argument raises TypeError in the
caller at once, instead of failing the task on a worker.

Signatures are taken once, when a function or class is decorated. An actor's method
signatures travel with its handle (in the actor's record, for `get_actor`) as a compact
form: (name, kind, has_default) per parameter; annotations and defaults are not needed
to check a call."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

# (name, kind as inspect's int, has a default)
Params = tuple[tuple[str, int, bool], ...]

_KINDS = {int(kind): kind for kind in (
    inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)}
_DEFAULT = object()  # stands for any default: binding only asks whether there is one


def signature_of(fn: Callable, drop_first: bool = False) -> inspect.Signature | None:
    """`fn`'s signature, less its first parameter (an unbound method's self) with
    `drop_first`; None when Python cannot tell (some builtins), so calls go unchecked."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if drop_first:
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD):
            return sig  # (*args) takes self too: any call binds
        params = params[1:]
    return sig.replace(parameters=params)


def constructor_signature(cls: type) -> inspect.Signature | None:
    """What `cls.remote(...)` must bind to: `__init__` less self; no arguments at all
    when the class does not define one (as Ray)."""
    init = getattr(cls, "__init__", object.__init__)
    if init is object.__init__:
        return inspect.Signature()
    return signature_of(init, drop_first=True)


def check(sig: inspect.Signature | None, args: tuple, kwargs: dict[str, Any]) -> None:
    """TypeError, with Python's message, when the call does not bind to `sig`."""
    if sig is None or (not kwargs and _binds_positionally(sig, len(args))):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(str(e)) from None


def _binds_positionally(sig: inspect.Signature, n: int) -> bool:
    """The common case, decided without building a binding (a tenth of its cost, on
    every `.remote()`): `n` positional arguments for a signature of plain positional
    parameters, those beyond `n` with defaults. False means: let `bind` decide."""
    params = tuple(sig.parameters.values())
    if n > len(params):
        return False
    for p in params:
        if p.kind > inspect.Parameter.POSITIONAL_OR_KEYWORD:
            return False
    return all(p.default is not inspect.Parameter.empty for p in params[n:])


def to_params(sig: inspect.Signature | None) -> Params | None:
    if sig is None:
        return None
    return tuple((p.name, int(p.kind), p.default is not inspect.Parameter.empty)
                 for p in sig.parameters.values())


@functools.lru_cache(maxsize=4096)
def from_params(params: Params | None) -> inspect.Signature | None:
    if params is None:
        return None
    return inspect.Signature([
        inspect.Parameter(name, _KINDS[kind], default=_DEFAULT if has_default else inspect.Parameter.empty)
        for name, kind, has_default in params])


def params_from_wire(raw: Any) -> Params | None:
    """The msgpack'd form back as hashable tuples (None: unknown, calls go unchecked)."""
    if raw is None:
        return None
    return tuple((str(name), int(kind), bool(has_default)) for name, kind, has_default in raw)
