"""The parts of taskmesh depend one way (docs/architecture.md, "Parts and their one-way
rule"). This walks every import of the package, function-local and TYPE_CHECKING ones
included, and fails on a dependency circle or on an arrow the rule does not list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "taskmesh"

# Part of each module, by longest matching prefix.
PARTS = {
    "taskmesh.exceptions": "leaves",
    "taskmesh.dag": "leaves",
    "taskmesh.runtime_env": "leaves",
    "taskmesh.scheduler": "leaves",
    "taskmesh._base": "leaves",
    "taskmesh.store": "store",
    "taskmesh.security": "security",
    "taskmesh.objects": "objects",
    "taskmesh._core": "core",
    "taskmesh.actors": "actors",
    "taskmesh.workers": "workers",
    "taskmesh": "face",  # api, actor, remote_function, types, cloudpickle
    "taskmesh.util": "util",
    "taskmesh.experimental": "util",
    "taskmesh.job_submission": "jobs",
    "taskmesh.dashboard": "dashboard",
    "taskmesh.cli": "cli",
    "taskmesh.tools": "tools",
}

# Which parts each part may import (besides itself).
ALLOWED = {
    "top": {"face", "util", "actors", "core", "objects", "security", "store", "workers", "leaves"},
    "leaves": set(),
    "store": {"leaves"},
    "security": {"store", "leaves"},
    "objects": {"security", "store", "leaves"},
    "core": {"objects", "security", "store", "leaves"},
    "actors": {"core", "objects", "leaves"},
    "workers": {"core", "objects", "security", "store", "leaves"},
    "face": {"actors", "core", "objects", "security", "store", "workers", "leaves"},
    "util": {"face", "actors", "core", "objects", "store", "workers", "leaves"},
    "jobs": {"top", "face", "util", "actors", "core", "objects", "security", "store", "workers", "leaves"},
    "dashboard": {"top", "jobs", "face", "util", "actors", "core", "objects", "security", "store", "workers",
                  "leaves"},
    "tools": {"top", "face", "util", "core", "objects", "security", "store", "workers", "leaves"},
    "cli": {"top", "face", "util", "jobs", "dashboard", "tools", "actors", "core", "objects", "security",
            "store", "workers", "leaves"},
}

# Within the leaves, the order is fixed too: exceptions imports nothing; dag imports nothing
# of taskmesh's; scheduler only _base (the queue-name grammar); _base and runtime_env
# import exceptions and _base only.
LEAF_ALLOWED = {
    "top": {"face", "util", "actors", "core", "objects", "security", "store", "workers", "leaves"},
    "taskmesh.exceptions": set(),
    "taskmesh.dag": set(),
    "taskmesh.scheduler": {"taskmesh._base"},
    "taskmesh._base": {"taskmesh.exceptions", "taskmesh._base"},
    "taskmesh.runtime_env": {"taskmesh.exceptions", "taskmesh._base"},
}


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the taskmesh modules it imports (a `from package import name` counts as
    importing the submodule when `name` is one, else the package)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_package) in mods.items():
        base = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = base[: len(base) - node.level + 1]
                    module = ".".join(parent + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if sub in mods else module)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def part_of(module: str) -> str:
    if module == "taskmesh":  # the package's __init__: the public names, re-exported
        return "top"
    best = max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len)
    return PARTS[best]


def leaf_of(module: str) -> str:
    return max((p for p in LEAF_ALLOWED if module == p or module.startswith(p + ".")), key=len)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_dependency_circle():
    assert circles(import_graph()) == []


def test_every_import_follows_the_one_way_rule():
    wrong = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            src, dst = part_of(module), part_of(target)
            if src == "leaves" and dst == "leaves":
                if leaf_of(target) not in LEAF_ALLOWED[leaf_of(module)] | {leaf_of(module)}:
                    wrong.append(f"{module} -> {target}")
            elif src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{module} ({src}) -> {target} ({dst})")
    assert wrong == []


def test_the_walker_sees_function_local_and_type_checking_imports(tmp_path):
    """The graph above must not miss the imports that hide circles."""
    graph = import_graph()
    assert "taskmesh._core.runtime" in graph["taskmesh._core.context"]  # TYPE_CHECKING only


def test_at_most_fourteen_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 14, top


@pytest.mark.parametrize("path", ["taskmesh.actor", "taskmesh.exceptions", "taskmesh.util.actor_pool",
                                  "taskmesh.util.queue", "taskmesh.util.placement_group",
                                  "taskmesh.util.scheduling_strategies", "taskmesh.util.state",
                                  "taskmesh.util.metrics", "taskmesh.dag", "taskmesh.runtime_env",
                                  "taskmesh.remote_function", "taskmesh.api", "taskmesh.dag.input_node",
                                  "taskmesh.dag.output_node", "taskmesh.dag.dag_node",
                                  "taskmesh.dag.function_node", "taskmesh.dag.class_node",
                                  "taskmesh.cloudpickle", "taskmesh.types", "taskmesh.util.serialization",
                                  "taskmesh.util.check_serialize"])
def test_ray_import_paths_keep_working(path):
    import importlib

    assert importlib.import_module(path) is not None


def test_public_names_keep_their_paths():
    from taskmesh.actor import ActorClass, ActorHandle, exit_actor, get_actor, kill, method
    from taskmesh.objects import ObjectRef
    from taskmesh.remote_function import RemoteFunction
    from taskmesh.runtime_env import RuntimeEnv
    from taskmesh.util.placement_group import PlacementGroup, placement_group
    from taskmesh.util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    assert all((ActorClass, ActorHandle, exit_actor, get_actor, kill, method, ObjectRef, RemoteFunction,
                RuntimeEnv, PlacementGroup, placement_group, NodeAffinitySchedulingStrategy,
                PlacementGroupSchedulingStrategy))
