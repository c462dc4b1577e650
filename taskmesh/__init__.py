"""taskmesh: Ray Core's programming model with Redis as the whole control plane.

`import taskmesh as ray` runs typical Ray Core task programs unchanged.
"""

from taskmesh import cloudpickle, dag, exceptions, types, util
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

ObjectID = ObjectRef  # Ray's older name, still exported by Ray

__version__ = _versions.PACKAGE_VERSION

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ClientContext",
    "DynamicObjectRefGenerator",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cloudpickle",
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
    "types",
    "util",
    "wait",
]
