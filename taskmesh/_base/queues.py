"""The queue-name grammar, in one place: how a queue is named (what follows `tm:q:` in its
key, see store/keys.py) and how a placement-group bundle's resource pool is named.

| name                 | example          | queue of                                                         |
|----------------------|------------------|------------------------------------------------------------------|
| a shape              | `CPU=1`,         | tasks of one resource demand: sorted `name=amount` pairs, zero   |
|                      | `CPU=0.5,GPU=1`, | amounts dropped (`none`: no demand)                              |
|                      | `none`           |                                                                  |
| `node:<node_id>`     | `node:3f2a...`   | tasks and actor creations pinned to one node (node affinity,     |
|                      |                  | SPREAD, data locality)                                           |
| `pg:<pg_id>:<index>` | `pg:9c1e...:0`   | tasks and actor creations for one bundle of a placement group    |
| `pg:<pg_id>:any`     | `pg:9c1e...:any` | ... for any bundle of the group (read by every node hosting one) |

Entries of a node or bundle queue carry their demand in a `shape` field (their queue's
name says nothing of it) and `soft` = 1 when the node is a preference: such an entry goes
back to its shape queue when the node cannot start it soon or dies (see wire.QueueEntry).

A bundle's resource pool on its node is named `<pg_id>:<index>` (the field names of
`tm:node_reserved:{node_id}`, written by reserve_pg.lua); its queue is `pg:` + that name.
Node and placement-group ids are hex, so `:` never occurs inside one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NO_DEMAND = "none"
ANY_BUNDLE = "any"
_NODE = "node:"
_BUNDLE = "pg:"


# ---- shapes -----------------------------------------------------------------------------

def _fmt(value: float) -> str:
    return f"{value:.12g}"  # exact for byte counts (memory) up to a terabyte


def shape_name(demand: Mapping[str, float]) -> str:
    """Canonical, order-independent name of a demand; zero entries are dropped."""
    parts = [f"{k}={_fmt(v)}" for k, v in sorted(demand.items()) if v]
    return ",".join(parts) if parts else NO_DEMAND


def parse_shape(name: str) -> dict[str, float]:
    """The demand a shape names; ValueError when `name` is not a shape: every amount is a
    finite number >= 0 (a negative one would add to a node's resources as it is taken)."""
    if name == NO_DEMAND:
        return {}
    out = {}
    for part in name.split(","):
        key, eq, value = part.partition("=")
        try:
            amount = float(value) if key and eq else math.nan
        except ValueError:
            amount = math.nan
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"{name!r} is not a resource shape (expected name=amount,... "
                             "with amounts >= 0)")
        out[key] = amount
    return out


def is_shape_queue(name: str) -> bool:
    return not name.startswith((_NODE, _BUNDLE))


# ---- node queues ------------------------------------------------------------------------

def node_queue(node_id: str) -> str:
    return f"{_NODE}{node_id}"


def node_of(queue: str) -> str | None:
    """The node whose queue this is, or None for a shape or bundle queue."""
    return queue[len(_NODE):] if queue.startswith(_NODE) else None


# ---- bundle queues and pools ------------------------------------------------------------

def bundle_queue(pg_id: str, index: int | str) -> str:
    """The queue of bundle `index` of a group (index < 0: any of its bundles)."""
    if isinstance(index, int) and index < 0:
        index = ANY_BUNDLE
    return f"{_BUNDLE}{pg_id}:{index}"


def bundle_queues(pg_id: str, count: int) -> list[str]:
    """Every queue of a group of `count` bundles: one per bundle, then the `any` one."""
    return [bundle_queue(pg_id, i) for i in range(count)] + [bundle_queue(pg_id, -1)]


def is_bundle_queue(queue: str) -> bool:
    return queue.startswith(_BUNDLE)


def parse_bundle_queue(queue: str) -> tuple[str, str]:
    """(pg_id, bundle index or "any") of a bundle queue."""
    pg_id, _, index = queue[len(_BUNDLE):].partition(":")
    return pg_id, index


def group_of_queue(queue: str) -> str | None:
    """The placement group a bundle queue belongs to, or None for other queues."""
    return parse_bundle_queue(queue)[0] if is_bundle_queue(queue) else None


def bundle_pool(pg_id: str, index: int | str) -> str:
    """The name of a bundle's resource pool on its node."""
    return f"{pg_id}:{index}"


def parse_bundle_pool(pool: str) -> tuple[str, str]:
    """(pg_id, bundle index) of a bundle's pool name."""
    pg_id, _, index = pool.partition(":")
    return pg_id, index


def pool_queue(pool: str) -> str:
    """The queue of the one bundle whose pool this is."""
    return f"{_BUNDLE}{pool}"


# ---- consumers --------------------------------------------------------------------------
# The queues' consumer group has one consumer per node agent (named by its node id) and
# one per worker holding a lease grant (`<node_id>:<pid>`, see workers/agent.py): a
# consumer's entries belong to its node, whichever process read them.

def worker_consumer(node_id: str, pid: int) -> str:
    return f"{node_id}:{pid}"


def consumer_node(consumer: str) -> str:
    """The node a consumer belongs to (a node id is its own agent's consumer name)."""
    return consumer.partition(":")[0]
