"""taskmesh: Ray Core's programming model with Redis as the whole control plane.

`import taskmesh as ray` runs typical Ray Core task programs unchanged.
"""

from taskmesh import dag, exceptions, util
from taskmesh._base import versions as _versions
from taskmesh._core.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from taskmesh._core.remote_function import RemoteFunction
from taskmesh.actor import ActorClass, ActorHandle, get_actor, kill, method
from taskmesh.api import (
    ClientContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from taskmesh.objects import ObjectRef

__version__ = _versions.TASKMESH_VERSION

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ClientContext",
    "DynamicObjectRefGenerator",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cluster_resources",
    "dag",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "util",
    "wait",
]
