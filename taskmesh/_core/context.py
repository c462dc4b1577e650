"""The process's runtime slot: set by `init()` in a driver and by the worker's main in a
worker, read by everything that needs the runtime (`get_runtime()`)."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskmesh._core.runtime import Runtime

_runtime: Runtime | None = None
_auto_init: Callable[[], object] | None = None

# The actor call running in this thread or asyncio task: (task id, name, function name).
# A context variable, since a threaded or async actor runs several calls at once.
current_call: ContextVar[tuple[str, str, str] | None] = ContextVar("taskmesh_current_call", default=None)


def get_runtime(auto_init: bool = False) -> Runtime:
    """The process's runtime; raises before `init()` unless `auto_init` (as Ray's
    `.remote()`/`put` do, which start a local cluster on first use)."""
    runtime = _runtime
    if runtime is None:
        if not auto_init or _auto_init is None:
            raise RuntimeError("taskmesh is not initialized: call taskmesh.init() first.")
        _auto_init()
        runtime = _runtime
        assert runtime is not None
    return runtime


def current() -> Runtime | None:
    """The runtime, or None before `init()` (and after `shutdown()`)."""
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def set_auto_init(init: Callable[[], object]) -> None:
    """What `get_runtime(auto_init=True)` calls when there is no runtime yet: the public
    `init()`, registered by `taskmesh.api` when it is imported."""
    global _auto_init
    _auto_init = init


def is_initialized() -> bool:
    return _runtime is not None
