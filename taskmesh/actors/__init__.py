"""Actors, the caller's side: actor classes, handles and methods, `get_actor`, `kill`
and `exit_actor` (the design card's `actors.py`; `taskmesh.actor` is Ray's path to
the same names). The actor's own side, which runs the methods, is
`taskmesh.workers.actor_runner`."""

from taskmesh.actors.handles import (
    ActorClass,
    ActorClassInheritanceException,
    ActorHandle,
    ActorMethod,
    MethodMeta,
    actor_demand,
    exit_actor,
    get_actor,
    kill,
    method,
)
from taskmesh.exceptions import ActorExitRequest

__all__ = ["ActorClass", "ActorClassInheritanceException", "ActorExitRequest", "ActorHandle",
           "ActorMethod", "MethodMeta",
           "actor_demand", "exit_actor", "get_actor", "kill", "method"]
