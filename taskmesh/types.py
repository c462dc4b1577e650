"""Ray's path `ray.types`: `ObjectRef` for annotations (`def f() -> ObjectRef[int]`).

It is the real ObjectRef class, subscriptable, so `isinstance` checks against it work too."""

from taskmesh.objects import ObjectRef

__all__ = ["ObjectRef"]
