"""Ray's API annotations (`ray.util.annotations`): `PublicAPI`, `DeveloperAPI`, `Deprecated`
as decorators that mark (and, for `Deprecated(warning=True)`, warn), and
`RayDeprecationWarning`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from taskmesh._base.deprecation import RayDeprecationWarning, warn

__all__ = ["Deprecated", "DeveloperAPI", "PublicAPI", "RayDeprecationWarning"]


def _marker(*args: Any, **kwargs: Any) -> Any:
    """`@PublicAPI` or `@PublicAPI(stability=...)`: the object, unchanged."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    return lambda obj: obj


PublicAPI = _marker
DeveloperAPI = _marker


def Deprecated(*args: Any, message: str = "", warning: bool = False) -> Any:  # noqa: N802 (Ray's name)
    """`@Deprecated` / `@Deprecated(message=..., warning=True)`: with `warning`, calling the
    function (or making the class) warns with a RayDeprecationWarning."""
    if len(args) == 1 and callable(args[0]):
        return Deprecated(message=message, warning=warning)(args[0])

    def decorate(obj: Callable) -> Callable:
        if not warning:
            return obj
        if inspect.isclass(obj):
            init = obj.__init__

            @functools.wraps(init)
            def patched_init(*a: Any, **k: Any) -> None:
                warn(message)
                init(*a, **k)

            obj.__init__ = patched_init  # type: ignore[method-assign]
            return obj

        @functools.wraps(obj)
        def wrapper(*a: Any, **k: Any) -> Any:
            warn(message)
            return obj(*a, **k)

        return wrapper

    return decorate
