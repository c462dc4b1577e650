"""Object refs, ids and serialization.

Values are serialized with cloudpickle (pickle protocol 5). In this version every object
lives inline in Redis (`tm:{owner}:obj:{id}`); the per-node shared-memory store plugs in
behind `serialize`/`deserialize` and the store's object methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Protocol

import cloudpickle

KIND_VALUE = b"value"
KIND_ERROR = b"error"

# Arguments and values larger than this are stored as separate objects (Ray: 100 KiB).
INLINE_ARG_LIMIT = 100 * 1024


def new_owner_tag() -> str:
    return os.urandom(4).hex()


def new_task_id(owner: str) -> str:
    return owner + os.urandom(8).hex()


def object_id(task_id: str, index: int) -> str:
    return f"{task_id}{index:04x}"


class RefTracker(Protocol):
    """What the runtime does when refs are created, dropped and passed on."""

    def incref(self, object_id: str) -> None: ...

    def decref(self, object_id: str) -> None: ...

    def escaped(self, object_id: str) -> None: ...

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future: ...


class _NoTracker:
    def incref(self, object_id: str) -> None:
        pass

    def decref(self, object_id: str) -> None:
        pass

    def escaped(self, object_id: str) -> None:
        pass

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future:
        raise RuntimeError("taskmesh is not initialized: call taskmesh.init() first.")


_tracker: RefTracker = _NoTracker()
_tracker_lock = threading.Lock()


def set_tracker(tracker: RefTracker | None) -> None:
    global _tracker
    with _tracker_lock:
        _tracker = tracker or _NoTracker()


class ObjectRef:
    """A reference to a value in the cluster; `get` it, pass it to tasks, await it."""

    __slots__ = ("_id", "__weakref__")

    def __init__(self, object_id: str):
        self._id = object_id
        _tracker.incref(object_id)

    def __del__(self) -> None:
        try:
            _tracker.decref(self._id)
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def hex(self) -> str:
        return self._id

    def binary(self) -> bytes:
        return bytes.fromhex(self._id)

    def task_id(self) -> str:
        return self._id[:-4]

    def owner_tag(self) -> str:
        return self._id[:8]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"

    def __reduce__(self) -> tuple:
        _tracker.escaped(self._id)
        return (ObjectRef, (self._id,))

    def __copy__(self) -> ObjectRef:
        return self

    def __deepcopy__(self, memo: dict) -> ObjectRef:
        return self

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that resolves to the value (or raises its error)."""
        return _tracker.future_for(self)

    def __await__(self) -> Any:
        return asyncio.wrap_future(self.future()).__await__()


def serialize(value: Any) -> bytes:
    return cloudpickle.dumps(value, protocol=5)


def deserialize(data: bytes) -> Any:
    return cloudpickle.loads(data)
