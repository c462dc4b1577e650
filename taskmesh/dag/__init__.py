"""Lazy task graphs (Ray's `ray.dag`). The nodes live in `nodes.py`; the other modules
are Ray's import paths (`ray.dag.input_node`, `.output_node`, `.dag_node`,
`.function_node`, `.class_node`), so programs that import from them run unchanged."""

from taskmesh.dag.nodes import (
    ClassMethodNode,
    ClassNode,
    DAGInputData,
    DAGNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
)

__all__ = ["ClassMethodNode", "ClassNode", "DAGInputData", "DAGNode", "FunctionNode",
           "InputAttributeNode", "InputNode", "MultiOutputNode"]
