"""A node agent's resource book: what its own pool has free, the placement-group bundles
reserved on it (each a pool of its own), and which GPU ids are free. Plain values, no
Redis: the agent's lock guards it, and it is tested without processes.

Pools are named None (the node's) or by their bundle, `<pg>:<bundle index>` (see
_base/queues.py). A bundle's reserved
resources leave the node's pool when the reservation arrives, even if tasks still use
them (the pool goes below zero until they finish), and come back when it is removed;
what a task of a removed bundle gives back then goes to the node's pool.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from taskmesh import scheduler
from taskmesh._base import queues

Resources = Mapping[str, float]


class NodeResources:
    def __init__(self, total: Resources):
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)  # the node's own pool
        self.bundles: dict[str, dict[str, float]] = {}  # bundle -> free
        self.reserved: dict[str, dict[str, float]] = {}  # bundle -> reserved total
        self.gpu_free: dict[int, float] = {i: 1.0 for i in range(int(self.total.get("GPU", 0)))}

    # ---- pools --------------------------------------------------------------------------

    def give(self, pool: str | None, resources: Resources) -> None:
        """Resources back to their bundle, or to the node when the bundle is gone."""
        if pool is not None and pool in self.bundles:
            self.bundles[pool] = scheduler.add(self.bundles[pool], resources)
        else:
            self.available = scheduler.add(self.available, resources)

    def take(self, pool: str | None, resources: Resources) -> None:
        if pool is not None and pool in self.bundles:
            self.bundles[pool] = scheduler.subtract(self.bundles[pool], resources)
        else:
            self.available = scheduler.subtract(self.available, resources)

    def fits_in(self, pool: str | None, resources: Resources) -> bool:
        """Whether `resources` can be taken from `pool` now (a bundle, or the node's)."""
        free = self.bundles[pool] if pool is not None and pool in self.bundles else self.available
        return scheduler.fits(resources, free)

    def pool_for(self, queue: str, demand: Resources) -> str | None | bool:
        """The pool a task from `queue` can start in now: None (the node's), a bundle,
        or False when none has room."""
        if not queues.is_bundle_queue(queue):
            return None if scheduler.fits(demand, self.available) else False
        for name in self._bundles_of(queue):
            if scheduler.fits(demand, self.bundles[name]):
                return name
        return False

    def _bundles_of(self, queue: str) -> list[str]:
        pg_id, index = queues.parse_bundle_queue(queue)
        if index != queues.ANY_BUNDLE:
            name = queues.bundle_pool(pg_id, index)
            return [name] if name in self.bundles else []
        return sorted(b for b in self.bundles if queues.parse_bundle_pool(b)[0] == pg_id)

    def unreserved(self) -> dict[str, float]:
        """The node's resources less what bundles reserve."""
        out = dict(self.total)
        for reserved in self.reserved.values():
            out = scheduler.subtract(out, reserved)
        return out

    # ---- reservations -------------------------------------------------------------------

    def set_reservations(self, reserved: Mapping[str, Resources]) -> None:
        """Take up newly reserved bundles and let go of removed ones."""
        for name in [n for n in self.reserved if n not in reserved]:
            self.available = scheduler.add(self.available, self.bundles.pop(name, {}))
            del self.reserved[name]
        for name, res in reserved.items():
            if name not in self.reserved:
                self.reserved[name] = dict(res)
                self.bundles[name] = dict(res)
                self.available = scheduler.subtract(self.available, res)

    def groups(self) -> list[str]:
        return sorted({queues.parse_bundle_pool(name)[0] for name in self.bundles})

    def pinned_queues(self, node_id: str) -> list[str]:
        """The queues this node reads besides the shape queues: its own first, then one
        per bundle it hosts and one "any bundle" queue per group."""
        return ([queues.node_queue(node_id)] + [queues.pool_queue(name) for name in sorted(self.bundles)]
                + [queues.bundle_queue(g, -1) for g in self.groups()])

    # ---- how much to lease --------------------------------------------------------------

    def pinned_counts(self, pinned: list[str], held: Resources, waiting: Mapping[str, int]) -> dict[str, int]:
        """Entries to read from the node's own queue (pinned[0]) and its bundles' queues.

        From the same budget as the shape queues (what can run, plus one pool's worth
        waiting; `held`: the demand of node-pool tasks already waiting here): as many
        1-CPU tasks as fit. Nothing is read without room, so the lease read never blocks
        on these queues while the node is full."""
        counts = {}
        node_waiting = sum(n for q, n in waiting.items() if not queues.is_bundle_queue(q))
        budget = scheduler.subtract(scheduler.add(self.available, self.unreserved()), held)
        node_room = _room(budget, node_waiting, has_cpus=self.total.get("CPU", 0) > 0)
        if node_room:
            counts[pinned[0]] = node_room
        for queue in pinned[1:]:
            names = self._bundles_of(queue)
            budget = {}
            for name in names:
                budget = scheduler.add(budget, scheduler.add(self.bundles[name], self.reserved[name]))
            has_cpus = any(self.reserved[n].get("CPU", 0) > 0 for n in names)
            room = _room(budget, waiting.get(queue, 0), has_cpus=has_cpus, per_task=2)
            if room:
                counts[queue] = room
        return counts

    # ---- GPU ids ------------------------------------------------------------------------

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpu_free)

    def assign_gpus(self, amount: float) -> list[int]:
        """GPU ids for a demand: whole GPUs for 1 and more, a shared one for a fraction."""
        if amount <= 0 or not self.gpu_free:
            return []
        if amount < 1:
            gpu = min((g for g, f in self.gpu_free.items() if f + 1e-9 >= amount),
                      key=lambda g: self.gpu_free[g], default=None)
            if gpu is None:
                return []
            self.gpu_free[gpu] -= amount
            return [gpu]
        ids = sorted(g for g, f in self.gpu_free.items() if f >= 1 - 1e-9)[:int(amount)]
        for g in ids:
            self.gpu_free[g] = 0.0
        return ids

    def free_gpus(self, ids: Iterable[int], amount: float | None = None) -> None:
        share = 1.0 if amount is None or amount >= 1 else amount
        for g in ids:
            self.gpu_free[g] = min(self.gpu_free.get(g, 0.0) + share, 1.0)


# ---- when to wake the lease read ---------------------------------------------------------

def starved_pools(pinned: Iterable[str], counts: Mapping[str, int], running: Collection[str | None]) -> bool:
    """Whether a lease read of `counts` leaves out a pinned queue (the node's own, or a
    bundle's) whose pool has tasks running (`running`: their pools, None for the node's).
    Such a queue gets room when one of them ends, so the read should not block for long."""
    for queue in pinned:
        if queue in counts:
            continue
        if not queues.is_bundle_queue(queue):
            if None in running:
                return True
            continue
        pg_id, index = queues.parse_bundle_queue(queue)
        for pool in running:
            if pool is not None:
                group, bundle = queues.parse_bundle_pool(pool)
                if group == pg_id and index in (queues.ANY_BUNDLE, bundle):
                    return True
    return False


def _room(budget: Resources, waiting: int, *, has_cpus: bool, per_task: int = 1) -> int:
    """How many more entries to take for a budget: its whole free CPUs (over per_task),
    or a fixed number of slots for a pool without CPUs (zero-CPU tasks), less those
    already waiting there."""
    if has_cpus:
        return max(int(budget.get("CPU", 0.0) + 1e-9) // per_task, 0)
    return max(scheduler.ZERO_DEMAND_SLOTS - waiting, 0)
