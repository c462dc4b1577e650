"""Custom serializers (Ray's `ray.util.serialization`): how instances of a class that
cannot be pickled, or should be pickled differently, travel as arguments, results and
`put` values.

As in Ray, a registration applies in the process that made it (a driver's serializer
does not apply to the values its tasks return; register it in the task too), and the
deserializer travels pickled with each value, so the process that loads it needs none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskmesh.objects import ref as _ref

__all__ = ["deregister_serializer", "register_serializer"]


def register_serializer(cls: type, *, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None:
    """Serialize instances of exactly `cls` (not its subclasses) as
    `serializer(obj)`, which must be picklable, and rebuild them with
    `deserializer(serialized)`. Registering again replaces the previous pair."""
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("serializer and deserializer must be callables.")
    _ref.register_serializer(cls, serializer, deserializer)


def deregister_serializer(cls: type) -> None:
    """Stop using the serializer registered for `cls` in this process."""
    _ref.deregister_serializer(cls)
