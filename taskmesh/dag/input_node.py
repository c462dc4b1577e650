"""Ray's path `ray.dag.input_node`: the DAG's input and the parts selected from it."""

from taskmesh.dag.nodes import DAGInputData, InputAttributeNode, InputNode

__all__ = ["DAGInputData", "InputAttributeNode", "InputNode"]
