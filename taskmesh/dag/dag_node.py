"""Ray's path `ray.dag.dag_node`: the base of every node."""

from taskmesh.dag.nodes import DAGNode

__all__ = ["DAGNode"]
