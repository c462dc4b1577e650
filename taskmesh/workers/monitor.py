"""The failure monitor: declares nodes dead when their heartbeats stop, and settles the
tasks they had leased (another attempt elsewhere, or a WorkerCrashedError), their actors
(restarted or dead) and the refs their workers held.

Every agent calls `Monitor.tick()` once per heartbeat; only the holder of the monitor
lease (`tm:monitor`, SET NX PX, renewed by its holder each tick) does anything, so there
is one monitor per cluster, and another agent takes over when the holder dies.

Crash safety. The tick derives all its work from Redis, never from memory: a queue
consumer that is not in `tm:nodes:alive` belongs to a dead (or departed) node, whoever
declared it dead and whenever; and entries are moved to the consumer `monitor` before
being settled, and that consumer is drained on every tick. So a monitor killed at any
point leaves work that the next tick of the next holder finds and finishes.

Why XPENDING (filtered by consumer) + XCLAIM rather than XAUTOCLAIM: XAUTOCLAIM takes
every entry idle for long enough from any consumer, and an entry whose task runs for an
hour on a live node is idle for an hour; only the consumer filter tells a dead node's
entries from a live node's long tasks. XCLAIM's min-idle-time also fences the claim: it
resets the idle time, so two monitors that overlap (a holder stalled past its lease) can
never both claim, and so both re-queue, one entry.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Collection, Mapping

from taskmesh import security
from taskmesh._base import config, queues
from taskmesh._base.wire import QueueEntry
from taskmesh._core import failure as _failure
from taskmesh._core import lifecycle
from taskmesh._core.placement import try_place
from taskmesh.exceptions import StoreUnavailableError
from taskmesh.store import Completion, Leased, Store

log = logging.getLogger("taskmesh.monitor")

ENV_NODE_TIMEOUT_MS = config.NODE_TIMEOUT_MS.name
DEFAULT_NODE_TIMEOUT_MS = config.NODE_TIMEOUT_MS.default
# A driver that stops heartbeating this long (it crashed without shutdown()) has its refs
# released and its job's actors ended. Longer than a node's: a driver busy in native code
# may starve its heartbeat thread for a while.
ENV_DRIVER_TIMEOUT_MS = config.DRIVER_TIMEOUT_MS.name
DEFAULT_DRIVER_TIMEOUT_MS = config.DRIVER_TIMEOUT_MS.default
DEFAULT_LEASE_MS = 5_000
# The consumer that holds entries taken from dead nodes until they are settled.
MONITOR_CONSUMER = "monitor"
# An entry claimed less than this long ago is left alone (see XCLAIM in the docstring).
CLAIM_MIN_IDLE_MS = 1_000
CLAIM_BATCH = 100


class Action(str, enum.Enum):
    RETRY = "retry"  # re-queue with attempt + 1
    FAIL = "fail"  # store WorkerCrashedError as its results and ack it
    HAND_BACK = "hand_back"  # not a plain task: re-queue unchanged, lose nothing


def stale_nodes(heartbeats: Mapping[str, int], now_ms: int, timeout_ms: int) -> list[str]:
    """Nodes whose last heartbeat is more than timeout_ms before now_ms, oldest first."""
    stale = [(ms, node) for node, ms in heartbeats.items() if now_ms - ms > timeout_ms]
    return [node for _, node in sorted(stale)]


def dead_consumers(
    consumers: Mapping[str, Mapping[str, int]], alive: Collection[str]
) -> dict[str, list[str]]:
    """shape -> its consumers whose node is not alive (the monitor's own excluded; a
    worker's consumer, `<node>:<pid>`, is its node's): their entries are to be settled
    and the consumers deleted."""
    out: dict[str, list[str]] = {}
    for shape, by_name in consumers.items():
        dead = sorted(c for c in by_name
                      if queues.consumer_node(c) not in alive and c != MONITOR_CONSUMER)
        if dead:
            out[shape] = dead
    return out


def decide(entry: QueueEntry) -> Action:
    """What to do with a queue entry whose node died."""
    if entry.creates_actor:  # its restarts are the actor code's to count
        return Action.HAND_BACK
    return Action.RETRY if _failure.should_retry(entry.spec, entry.attempt) else Action.FAIL  # type: ignore[arg-type]


def node_timeout_from_env() -> int:
    return config.NODE_TIMEOUT_MS.get()


class Monitor:
    """One agent's share of failure monitoring: acts only while it holds the lease."""

    def __init__(
        self, store: Store, node_id: str, *, node_timeout_ms: int | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
    ):
        self.store = store
        self.node_id = node_id
        self.node_timeout_ms = node_timeout_ms or node_timeout_from_env()
        self.lease_ms = lease_ms
        self.driver_timeout_ms = config.DRIVER_TIMEOUT_MS.get()
        self.holding = False
        self._closed = False
        # After this monitor could not reach Redis (a restart, a failover), no node is
        # declared dead until every node has had a node timeout to heartbeat again: the
        # heartbeats are old because Redis was away, not because the nodes were.
        self._unreachable = False
        self._quiet_until = 0.0
        self._eviction = security.EvictionWatch()

    def tick(self) -> None:
        """Renew or take the lease; while holding it, settle dead nodes' work."""
        if self._closed:
            return
        try:
            self._tick()
        except StoreUnavailableError:
            self._unreachable = True
            raise

    def _tick(self) -> None:
        holding = self._hold()
        if self._unreachable:
            self._unreachable = False
            self._quiet_until = time.monotonic() + self.node_timeout_ms / 1000
        if not holding:
            return
        self._eviction.check(self.store)  # an evicting policy set since the agents joined
        queue_names = self.store.shapes() + self.store.pinned_queues()
        seen = self.store.liveness(queue_names)
        now_ms = seen.now_ms
        alive = set(seen.heartbeats)
        quiet = time.monotonic() < self._quiet_until
        for node in [] if quiet else stale_nodes(seen.heartbeats, now_ms, self.node_timeout_ms):
            age_ms = now_ms - seen.heartbeats[node]
            if self.store.mark_node_dead(node, now_ms - self.node_timeout_ms,
                                         f"no heartbeat for {age_ms} ms"):
                log.warning("node %s declared dead: no heartbeat for %d ms", node, age_ms)
                alive.discard(node)
        for node in self.store.lost_nodes():
            self._recover_actors(node)
        for tag, job_id in [] if quiet else self.store.silent_drivers(now_ms, self.driver_timeout_ms):
            self._settle_driver(tag, job_id)
        for shape, by_name in seen.consumers.items():
            if by_name.get(MONITOR_CONSUMER):  # left over by a monitor that died mid-way
                self._settle_consumer(shape, MONITOR_CONSUMER, "its node died")
        for shape, names in dead_consumers(seen.consumers, alive).items():
            for name in names:
                if seen.consumers[shape][name]:
                    self._settle_consumer(shape, name, f"node {name} died")
                self.store.drop_consumer(shape, name)
        for queue in queue_names:
            pinned_to = queues.node_of(queue)
            if pinned_to is not None and pinned_to not in alive and self.holding:
                self._drain_node_queue(queue, pinned_to)
        for pg_id in self.store.pending_pgs():
            if self.holding:
                try_place(self.store, pg_id)

    def release(self) -> None:
        """Give the lease up (graceful stop), so another agent takes over at once."""
        self._closed = True
        if self.holding:
            self.holding = False
            self.store.renew_monitor_lease(self.node_id, 0)

    def _hold(self) -> bool:
        if self.holding:
            if self.store.renew_monitor_lease(self.node_id, self.lease_ms):
                return True
            log.warning("node %s lost the monitor lease", self.node_id)
        self.holding = self.store.acquire_monitor_lease(self.node_id, self.lease_ms)
        if self.holding:
            log.info("node %s holds the monitor lease", self.node_id)
        return self.holding

    def _recover_actors(self, node: str) -> None:
        """Actors that were alive on a dead node restart elsewhere (max_restarts) or die,
        their queued calls failed. Derived from Redis each tick until done, so a monitor
        that dies half-way leaves the rest to the next one."""
        cause = f"its node {node} died"
        for actor_id, info in self.store.actors_on_node(node):
            if info["state"] != "ALIVE" or info["node_id"] != node:
                continue  # already restarted, dead, or moved on
            status = _failure.actor_down(self.store, actor_id, restart=True,
                                         cause=f"The actor died: {cause}", node_id=node)
            log.warning("actor %s: %s; %s", actor_id, cause, status)
        # The node's worker processes died with it.
        lifecycle.release_process_holds(self.store, self.store.node_processes(node), node)
        for pg in self.store.pg_infos():
            if node in pg["bundle_nodes"].values() and self.store.unplace_bundles(pg["pg_id"], node):
                log.warning("placement group %s lost bundles on node %s; placing them again",
                            pg["pg_id"], node)
        self.store.node_settled(node)

    def _settle_driver(self, tag: str, job_id: str) -> None:
        """A driver died without shutting down: end its job (its tasks are dropped or
        killed, its actors but detached ones end), release its refs (objects others hold
        live on; results that come later are not stored), and forget it. Idempotent,
        so a monitor that dies half-way leaves the rest to the next one."""
        log.warning("driver %s of job %s stopped heartbeating: releasing its refs and actors",
                    tag, job_id)
        lifecycle.settle_driver(self.store, tag, job_id)

    def _drain_node_queue(self, queue: str, node: str) -> None:
        """Entries waiting in the queue of a node that is gone: soft ones go to their
        shape queue, the others (node affinity with soft=False) can never run and fail
        (TaskUnschedulableError / ActorUnschedulableError). The queue is dropped once
        empty. Only for nodes recorded DEAD (a node registering has no hash yet)."""
        if self.store.node_state(node) != "DEAD":
            return
        while self.holding:
            taken = self.store.take_entries(queue, MONITOR_CONSUMER, CLAIM_BATCH)
            if not taken:
                break
            entries = _failure.set_aside_malformed(self.store, taken)
            hard = []
            for leased, entry in entries:
                if entry.soft and entry.shape:
                    self.store.requeue(leased.queue, leased.entry_id, entry.to_fields(),
                                       self.store.keys.queue(entry.shape))
                else:
                    hard.append((leased, entry))
            if hard:
                why = (f"the node specified via NodeAffinitySchedulingStrategy ({node}) died, "
                       "and soft=False was specified")
                task_error, actor_cause = _failure.unschedulable(why)
                _failure.fail_entries(self.store, [entry for _, entry in hard],
                                      task_error=task_error, actor_cause=actor_cause)
                done = {self.store.keys.queue(queue): [leased.entry_id for leased, _ in hard]}
                self.store.complete_tasks([], done)  # acks them
            log.warning("node %s is gone: %d entries of its queue moved, %d failed", node,
                        len(entries) - len(hard), len(hard))
        if self.holding and self.store.queue_empty(queue):
            self.store.drop_pinned([queue])

    def _settle_consumer(self, shape: str, consumer: str, cause: str) -> None:
        """Claim the consumer's entries in batches and settle each batch; entries that
        could not be claimed yet (claimed too recently) wait for a later tick."""
        while self.holding:
            ids = self.store.pending_ids(shape, consumer, CLAIM_BATCH)
            if not ids:
                return
            claimed = self.store.claim(shape, ids, MONITOR_CONSUMER, CLAIM_MIN_IDLE_MS)
            self._settle(claimed, cause)
            if len(claimed) < len(ids) or len(ids) < CLAIM_BATCH:
                return
            self.holding = self.store.renew_monitor_lease(self.node_id, self.lease_ms)

    def _settle(self, claimed: list[Leased], cause: str) -> None:
        completions: list[Completion] = []
        acks: dict[str, list[bytes]] = {}
        counts = {action: 0 for action in Action}
        entries = _failure.set_aside_malformed(self.store, claimed)
        actions = [decide(entry) for _, entry in entries]
        fences = [_failure.next_attempt_fence(entry) for (_, entry), a in zip(entries, actions, strict=True)
                  if a is not Action.HAND_BACK]
        if fences:  # before the retry exists: the old attempt may still complete
            self.store.fence_tasks(fences)
        for (leased, entry), action in zip(entries, actions, strict=True):
            counts[action] += 1
            if action is Action.FAIL:
                completions.append(_failure.crash_completion(entry, cause))
                acks.setdefault(leased.queue, []).append(leased.entry_id)
                continue
            if action is Action.RETRY:
                entry = entry.with_attempt(entry.attempt + 1)
            self.store.requeue(leased.queue, leased.entry_id, entry.to_fields())
        if completions:
            self.store.complete_tasks(completions, acks)
        if entries:
            log.warning("%s: %d tasks retried, %d failed, %d handed back", cause,
                        counts[Action.RETRY], counts[Action.FAIL], counts[Action.HAND_BACK])
