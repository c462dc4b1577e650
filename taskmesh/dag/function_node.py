"""Ray's path `ray.dag.function_node`: a remote function call in a DAG."""

from taskmesh.dag.nodes import FunctionNode

__all__ = ["FunctionNode"]
