"""Resource shapes and lease decisions, as pure functions over plain values.

A task's resource demand is named by its *shape* (`"CPU=1"`, `"CPU=0.5,GPU=1"`,
`"none"` for a zero demand); each shape has one queue stream. A node agent reads the
queues of the shapes that fit its total resources, as many entries as fit what it has free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Resources = Mapping[str, float]

NO_DEMAND = "none"
# How many zero-demand tasks an agent holds at once (they need a worker, not resources).
ZERO_DEMAND_SLOTS = 16


def _fmt(value: float) -> str:
    return f"{value:g}"


def shape_name(demand: Resources) -> str:
    """Canonical, order-independent name of a demand; zero entries are dropped."""
    parts = [f"{k}={_fmt(v)}" for k, v in sorted(demand.items()) if v]
    return ",".join(parts) if parts else NO_DEMAND


def parse_shape(name: str) -> dict[str, float]:
    if name == NO_DEMAND:
        return {}
    out = {}
    for part in name.split(","):
        key, _, value = part.partition("=")
        out[key] = float(value)
    return out


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
