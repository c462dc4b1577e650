"""Where a submitter sends a task or actor creation: the queue its scheduling strategy
picks (see _base/queues.py for the queues), decided locally from a cached view of the
live nodes, so that a DEFAULT task costs no Redis command here.

| strategy                         | queue                                                    |
|----------------------------------|----------------------------------------------------------|
| DEFAULT                          | its shape queue; the node holding its largest argument   |
|                                  | when that node fits it (soft)                            |
| "SPREAD"                         | the next live node that fits it, round robin (soft)      |
| NodeAffinity(node, soft=True)    | that node when alive (soft), else its shape queue        |
| NodeAffinity(node, soft=False)   | that node when alive, else it fails                      |
|                                  | (TaskUnschedulableError / ActorUnschedulableError)       |
| PlacementGroup(pg, bundle index) | the bundle's queue (`any` for index -1)                  |
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from taskmesh import scheduler
from taskmesh._base import queues
from taskmesh._base.wire import WireError, node_resources
from taskmesh.store import Store

log = logging.getLogger("taskmesh")

VIEW_TTL_S = 1.0
# A node whose heartbeat (every second) is older than this is not given new work here.
FRESH_HEARTBEAT_MS = 3000


@dataclass(frozen=True, slots=True)
class Route:
    queue: str  # a queue name (_base/queues.py): the shape's, a node's or a bundle's
    shape: str | None = None  # a node or bundle queue: the demand, for the entry (QueueEntry.routed)
    soft: bool = False  # ... and whether the node is only a preference
    unschedulable: str | None = None  # why the task can never run (it fails at once)
    pg: list | None = None  # PgTarget.to_wire() of a placement-group task (for its context)


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A placement-group strategy reduced to what the wire needs."""

    pg_id: str
    bundle: int
    capture: bool

    def to_wire(self) -> list:
        return [self.pg_id, self.bundle, self.capture]


class Router:
    """One per process: the live nodes (refreshed at most once per VIEW_TTL_S) and the
    SPREAD cursor."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._totals: dict[str, dict[str, float]] = {}  # node -> total, for every node seen
        self._alive: list[str] = []
        self._fetched_at = -VIEW_TTL_S
        self._spread = itertools.count()
        self._warned: set[str] = set()

    def alive(self, fresh: bool = False) -> dict[str, dict[str, float]]:
        """node id -> total resources, of the live nodes."""
        with self._lock:
            if fresh or time.monotonic() - self._fetched_at >= VIEW_TTL_S:
                self._refresh()
            return {n: self._totals[n] for n in self._alive if n in self._totals}

    def _refresh(self) -> None:
        """Nodes whose last heartbeat is recent: one that stopped beating (killed, not yet
        declared dead by the monitor) is not chosen for new work."""
        r = self.store.redis
        pipe = r.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.store.keys.nodes_alive(), 0, -1, withscores=True)
        (seconds, micros), beats = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        alive = [n.decode() for n, ms in beats if now_ms - ms <= FRESH_HEARTBEAT_MS]
        unknown = [n for n in alive if n not in self._totals]
        if unknown:
            pipe = r.pipeline(transaction=False)
            for n in unknown:
                pipe.hget(self.store.keys.node(n), "resources_total")
            for n, raw in zip(unknown, pipe.execute(), strict=True):
                if not raw:
                    continue
                try:
                    self._totals[n] = node_resources(raw, "resources_total")
                except WireError as e:  # written by hand: the node is never chosen
                    if n not in self._warned:
                        self._warned.add(n)
                        log.warning("node %s is left out of scheduling: its hash's %s", n, e)
        self._alive = sorted(alive)
        self._fetched_at = time.monotonic()

    # ---- routes -------------------------------------------------------------------------

    def route(self, strategy: Any, demand: dict[str, float], shape: str, *, actor: bool,
              pg: PgTarget | None, near: str | None = None) -> Route:
        from taskmesh._core.strategies import NodeAffinitySchedulingStrategy

        if pg is not None:
            return Route(queues.bundle_queue(pg.pg_id, pg.bundle), shape, False, pg=pg.to_wire())
        if isinstance(strategy, NodeAffinitySchedulingStrategy):
            return self._affinity(strategy, demand, shape, actor)
        if strategy == "SPREAD":
            nodes = [n for n, total in self.alive().items() if scheduler.fits(demand, total)]
            if nodes:
                node = nodes[next(self._spread) % len(nodes)]
                return Route(queues.node_queue(node), shape, True)
        elif near is not None:
            total = self.alive().get(near)
            if total is not None and scheduler.fits(demand, total):
                return Route(queues.node_queue(near), shape, True)
        return Route(shape)

    def _affinity(self, strategy: Any, demand: dict[str, float], shape: str, actor: bool) -> Route:
        node = strategy.node_id
        nodes = self.alive()
        if node not in nodes:
            nodes = self.alive(fresh=True)
        if node in nodes and scheduler.fits(demand, nodes[node]):
            return Route(queues.node_queue(node), shape, bool(strategy.soft))
        if strategy.soft:
            return Route(shape)
        what = "actor" if actor else "task"
        why = "is not alive" if node not in nodes else f"does not have the resources {demand}"
        return Route(shape, unschedulable=(
            f"The {what} is not schedulable: the node specified via NodeAffinitySchedulingStrategy "
            f"({node}) {why}, and soft=False was specified."))

    def warn_if_infeasible(self, shape: str, demand: dict[str, float]) -> None:
        """Ray's warning for a request no live node can ever fit (it waits for one)."""
        if shape in self._warned:
            return
        totals = self.alive(fresh=True).values()
        if totals and not scheduler.feasible_anywhere(demand, totals):
            self._warned.add(shape)
            log.warning(
                "The following resource request cannot be scheduled right now: %s. No node in "
                "the cluster has these resources (cluster: %s); it waits until a node that has "
                "them joins.", dict(demand), _cluster_totals(totals))

    def warn_pg_infeasible(self, pg_id: str, bundles: list[dict[str, float]], strategy: str) -> None:
        log.warning(
            "The placement group %s (bundles %s, strategy %s) cannot be placed on the live "
            "nodes (cluster: %s); it stays pending until nodes that can hold it join.",
            pg_id, bundles, strategy, _cluster_totals(self.alive(fresh=True).values()))


def _cluster_totals(totals: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in totals:
        out = scheduler.add(out, t)
    return out
