"""Workers: the node agent (agent.py) that owns a machine, its worker pool and leasing;
the worker process (worker_main.py) with its task and actor runners; the failure
monitor; and the launch of the node's processes (launch.py). It imports the core,
objects, the store and the leaves, never actors, the public face, util or the CLI."""

from taskmesh.workers.agent import (
    ENV_GRACE_PERIOD_S,
    NodeAgent,
    grace_period_from_env,
    object_store_config,
)

__all__ = ["ENV_GRACE_PERIOD_S", "NodeAgent", "grace_period_from_env", "object_store_config"]
