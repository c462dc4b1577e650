"""Resource shapes and lease decisions, as pure functions over plain values.

A task's resource demand is named by its *shape* (`CPU=1`, `CPU=0.5,GPU=1`, `none` for
a zero demand; shapes and the other queue names are built and parsed in
`_base/queues.py`); each shape has one queue stream. A node agent reads the queues of the
shapes that fit its total resources, as many entries as fit what it has free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from taskmesh._base.queues import parse_shape

Resources = Mapping[str, float]

# How many zero-demand tasks an agent holds at once (they need a worker, not resources).
ZERO_DEMAND_SLOTS = 16


def fits(demand: Resources, available: Resources) -> bool:
    return all(available.get(k, 0.0) + 1e-9 >= v for k, v in demand.items() if v > 0)


def fit_count(demand: Resources, available: Resources) -> int:
    """How many tasks of `demand` fit into `available` at once."""
    counts = [math.floor((available.get(k, 0.0) + 1e-9) / v) for k, v in demand.items() if v > 0]
    return max(min(counts), 0) if counts else ZERO_DEMAND_SLOTS


def subtract(a: Resources, b: Resources) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) - v
    return out


def add(a: Resources, b: Resources) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def lease_counts(
    shapes: Iterable[str], total: Resources, available: Resources, held: Resources
) -> dict[str, int]:
    """How many new entries to lease per shape queue.

    An agent keeps at most one node's worth of tasks waiting locally beyond what runs:
    enough that a finishing worker finds its next task without a round trip to Redis,
    few enough that other nodes still get a share. `held` is the demand of tasks
    already leased and waiting here.
    """
    budget = subtract(add(available, total), held)
    counts = {}
    for shape in shapes:
        demand = parse_shape(shape)
        if not fits(demand, total):
            continue
        n = fit_count(demand, budget)
        if n > 0:
            counts[shape] = n
    return counts


def read_left_out(reading: Iterable[str], counts: Mapping[str, int]) -> bool:
    """Whether a lease read blocked on the queues `reading` leaves out a queue that now
    has room (`counts`, as lease_counts computes them now): then the read must be woken.
    Queues that need no room (the 0-CPU shape) are read whatever the room, so reading
    them says nothing about the room that just opened."""
    return bool(set(counts) - set(reading))


# ---- placement-group planning -------------------------------------------------------------

PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def plan_bundles(
    bundles: Mapping[int, Resources], strategy: str, free: Mapping[str, Resources],
    fixed: Mapping[int, str] | None = None,
) -> dict[int, str] | None:
    """Nodes for the bundles of a placement group, or None when they do not fit now.

    `free` is what each live node can still reserve; `fixed` holds bundles of the group
    already placed (their nodes constrain STRICT_PACK and STRICT_SPREAD). Deterministic:
    nodes are tried in order of their id, after the preference of each strategy."""
    fixed = dict(fixed or {})
    left = {n: dict(r) for n, r in free.items()}
    order = sorted(bundles, key=lambda i: -sum(bundles[i].values()))
    if strategy == "STRICT_PACK":
        nodes = set(fixed.values())
        candidates = sorted(nodes) if nodes else sorted(left)
        total: dict[str, float] = {}
        for i in bundles:
            total = add(total, bundles[i])
        for node in candidates:
            if node in left and fits(total, left[node]):
                return {i: node for i in bundles}
        return None
    if strategy == "STRICT_SPREAD":
        return _spread_exact(order, bundles, left, set(fixed.values()))
    plan: dict[int, str] = {}
    used: dict[str, int] = {}
    for node in fixed.values():
        used[node] = used.get(node, 0) + 1
    for i in order:
        fitting = [n for n in sorted(left) if fits(bundles[i], left[n])]
        if not fitting:
            return None
        if strategy == "PACK":  # the node already used most, then the fullest
            node = max(fitting, key=lambda n: (used.get(n, 0), -sum(left[n].values())))
        else:  # SPREAD: the node used least, then the emptiest
            node = min(fitting, key=lambda n: (used.get(n, 0), -sum(left[n].values())))
        plan[i] = node
        used[node] = used.get(node, 0) + 1
        left[node] = subtract(left[node], bundles[i])
    return plan


def _spread_exact(
    order: list[int], bundles: Mapping[int, Resources], left: dict[str, dict[str, float]],
    taken: set[str],
) -> dict[int, str] | None:
    """Every bundle on a node of its own (backtracking; groups are small)."""
    if not order:
        return {}
    first, rest = order[0], order[1:]
    for node in sorted(left):
        if node in taken or not fits(bundles[first], left[node]):
            continue
        plan = _spread_exact(rest, bundles, left, taken | {node})
        if plan is not None:
            return {first: node, **plan}
    return None


def feasible_anywhere(demand: Resources, totals: Iterable[Resources]) -> bool:
    return any(fits(demand, t) for t in totals)
