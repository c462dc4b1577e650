"""Ray's `ray.actor` path: the actor classes, handles and methods live in
`taskmesh.actors`."""

from taskmesh.actors import (
    ActorClass,
    ActorClassInheritanceException,
    ActorExitRequest,
    ActorHandle,
    ActorMethod,
    exit_actor,
    get_actor,
    kill,
    method,
)

__all__ = ["ActorClass", "ActorClassInheritanceException", "ActorExitRequest", "ActorHandle",
           "ActorMethod", "exit_actor",
           "get_actor", "kill", "method"]
