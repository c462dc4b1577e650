"""Ray's `ray.actor` path: the actor classes, handles and methods live in
`taskmesh.actors`."""

from taskmesh.actors import (
    ActorClass,
    ActorExitRequest,
    ActorHandle,
    ActorMethod,
    exit_actor,
    get_actor,
    kill,
    method,
)

__all__ = ["ActorClass", "ActorExitRequest", "ActorHandle", "ActorMethod", "exit_actor",
           "get_actor", "kill", "method"]
