"""Ray's path `ray.dag.class_node`: an actor creation and its method calls in a DAG."""

from taskmesh.dag.nodes import ClassMethodNode, ClassNode

__all__ = ["ClassMethodNode", "ClassNode"]
