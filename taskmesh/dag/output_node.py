"""Ray's path `ray.dag.output_node`: several outputs returned by one `execute()`."""

from taskmesh.dag.nodes import MultiOutputNode

__all__ = ["MultiOutputNode"]
