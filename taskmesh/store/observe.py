"""Observability's share of the Store: task events, worker output kept for `taskmesh
logs`, and user metrics. A mixin of `Store` (client.py); every key comes from `Keys` (keys.py).

Everything here is written in batches that ride on a round trip the writer makes anyway
(a submission pipeline, a worker's periodic output flush) or on a background thread, so
that observing a task never adds a Redis command to its own path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskmesh._base import config, wire
from taskmesh.store.core import StoreCore
from taskmesh.store.records import _fields, _text, stream_entries, translate_errors

# Entries kept in the capped streams (MAXLEN ~). An events entry holds one flushed batch
# of at most EVENTS_PER_ENTRY events (~100-150 bytes each), so the events stream keeps the
# last TASKMESH_TASK_EVENTS_MAXLEN (2,000) batches: up to 200,000 events (~25 MB) under
# load, fewer when batches are small.
ENV_EVENTS_MAXLEN = config.TASK_EVENTS_MAXLEN.name
EVENTS_PER_ENTRY = 100
LOGS_MAXLEN = 5_000
LOGS_TTL_S = 7 * 24 * 3600  # a job's output is dropped a week after its last line


class ObserveMethods(StoreCore):
    """Task events, worker output and metrics (mixed into Store)."""

    def queue_events(self, pipe: Any, events: Sequence[dict[str, Any]],
                     counts: dict[str, int] | None = None) -> None:
        """Add `events` to a pipeline being built: one capped stream entry per
        EVENTS_PER_ENTRY events (one for all but the largest batches), and one HINCRBY
        of the task counters per function and counter the batch touches (`counts`, or
        what the events add: wire.task_counts)."""
        maxlen = config.TASK_EVENTS_MAXLEN.get()  # once per batch, read when used
        for i in range(0, len(events), EVENTS_PER_ENTRY):
            chunk = list(events[i:i + EVENTS_PER_ENTRY])
            pipe.xadd(self.keys.events(), dict(_fields(wire.events_entry(chunk))), maxlen=maxlen,
                      approximate=True)
        for field, n in (wire.task_counts(events) if counts is None else counts).items():
            pipe.hincrby(self.keys.task_counts(), field, n)

    @translate_errors
    def add_events(self, events: Sequence[dict[str, Any]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.queue_events(pipe, events)
        pipe.execute()

    @translate_errors
    def task_events(self, count: int | None = None) -> list[dict[str, Any]]:
        """Every recorded event, oldest first (the newest `count` stream entries' worth)."""
        if count is None:
            entries = stream_entries(self.redis.xrange(self.keys.events()))
        else:
            entries = stream_entries(self.redis.xrevrange(self.keys.events(), count=count))[::-1]
        out: list[dict[str, Any]] = []
        for _, fields in entries:
            try:
                out += wire.events_of(fields)
            except wire.WireError:
                continue  # not written by taskmesh
        return out

    @translate_errors
    def worker_output(self, job_id: str | None, log_payload: bytes | None,
                      events: Sequence[dict[str, Any]], counts: dict[str, int] | None = None) -> None:
        """A worker's periodic flush in one round trip: printed lines to the job's driver
        (pub/sub) and to the job's log stream, and task events (with their `counts`)."""
        pipe = self.redis.pipeline(transaction=False)
        if log_payload is not None and job_id is not None:
            pipe.publish(self.keys.chan_log(job_id), log_payload)
            pipe.xadd(self.keys.logs(job_id), dict(_fields(wire.log_entry(log_payload))), maxlen=LOGS_MAXLEN,
                      approximate=True)
            pipe.expire(self.keys.logs(job_id), LOGS_TTL_S)
        self.queue_events(pipe, events, counts)
        if len(pipe):
            pipe.execute()

    @translate_errors
    def log_jobs(self) -> list[str]:
        """Jobs that have worker output recorded."""
        prefix = len(self.keys.logs(""))
        return sorted(_text(k)[prefix:] for k in self.redis.scan_iter(match=self.keys.logs("*"), count=1000))

    @translate_errors
    def job_logs(self, job_id: str, after: str | None = None) -> list[dict[str, Any]]:
        """The job's recorded output batches, oldest first: {pid, node, actor, lines,
        id}; with `after` (an `id`), only the batches recorded after that one."""
        out = []
        start = "-" if after is None else f"({after}"
        for entry_id, fields in stream_entries(self.redis.xrange(self.keys.logs(job_id), start)):
            try:
                batch = wire.log_of(fields)
            except wire.WireError:
                continue
            batch["id"] = _text(entry_id)
            out.append(batch)
        return out

    # ---- metrics ------------------------------------------------------------------------

    @translate_errors
    def record_metrics(
        self, definitions: dict[str, str], increments: dict[tuple[str, str], float],
        values: dict[tuple[str, str], float],
    ) -> None:
        """One round trip for everything a process recorded since its last flush:
        definitions (name -> JSON), increments (counters, histogram buckets) and last
        values (gauges), keyed by (metric name, series field)."""
        pipe = self.redis.pipeline(transaction=False)
        if definitions:
            pipe.hset(self.keys.metrics(), mapping=_fields(definitions))
        for (name, series), delta in increments.items():
            pipe.hincrbyfloat(self.keys.metric(name), series, delta)
        by_name: dict[str, dict[str, float]] = {}
        for (name, series), value in values.items():
            by_name.setdefault(name, {})[series] = value
        for name, mapping in by_name.items():
            pipe.hset(self.keys.metric(name), mapping=_fields(mapping))
        if len(pipe):
            pipe.execute()

    @translate_errors
    def metrics(self) -> list[tuple[str, str, dict[str, float]]]:
        """(name, JSON definition, series -> value) of every recorded metric."""
        definitions = {_text(k): _text(v) for k, v in self.redis.hgetall(self.keys.metrics()).items()}
        pipe = self.redis.pipeline(transaction=False)
        return _user_metrics(definitions, self._queue_series(pipe, definitions), pipe.execute())

    def _queue_series(self, pipe: Any, definitions: dict[str, str]) -> list[str]:
        names = sorted(definitions)
        for name in names:
            pipe.hgetall(self.keys.metric(name))
        return names

    @translate_errors
    def metrics_snapshot(self) -> MetricsSnapshot:
        """What the cluster's built-in metrics show, in two pipelined round trips whatever
        the number of tasks: the sets of queues, nodes and actors, the task counters, the
        dead letters and the users' metric definitions; then the length of each queue,
        each node's hash, each actor's state and each user metric's series."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(k.shapes())
        pipe.smembers(k.pinned())
        pipe.smembers(k.nodes_all())
        pipe.zrange(k.nodes_alive(), 0, -1)
        pipe.smembers(k.actors())
        pipe.hgetall(k.task_counts())
        pipe.xlen(k.deadletter())
        pipe.hgetall(k.metrics())
        shapes, pinned, nodes, alive, actors, counts, dead_letters, defs = pipe.execute()
        queue_names = sorted(_text(q) for q in shapes | pinned)
        node_ids, actor_ids = sorted(_text(n) for n in nodes), sorted(_text(a) for a in actors)
        definitions = {_text(n): _text(d) for n, d in defs.items()}
        for name in queue_names:
            pipe.xlen(k.queue(name))
        for node_id in node_ids:
            pipe.hmget(k.node(node_id), *NODE_METRIC_FIELDS)
        for actor_id in actor_ids:
            pipe.hget(k.actor(actor_id), "state")
        names = self._queue_series(pipe, definitions)
        replies = pipe.execute()
        depths, replies = replies[:len(queue_names)], replies[len(queue_names):]
        node_rows, replies = replies[:len(node_ids)], replies[len(node_ids):]
        states, replies = replies[:len(actor_ids)], replies[len(actor_ids):]
        alive_ids = {_text(n) for n in alive}
        return MetricsSnapshot(
            queue_depths={name: int(n) for name, n in zip(queue_names, depths, strict=True)},
            nodes={node_id: {**{f: _text(v, "replace") for f, v in zip(NODE_METRIC_FIELDS, row, strict=True)
                                if v is not None}, "alive": node_id in alive_ids}
                   for node_id, row in zip(node_ids, node_rows, strict=True)},
            actor_states=[_text(s or b"UNKNOWN", "replace") for s in states],
            task_counts={_text(f, "replace"): int(n) for f, n in counts.items()},
            dead_letters=int(dead_letters),
            user=_user_metrics(definitions, names, replies))


# The node hash's fields the built-in metrics read (keys.py, tm:node:{node_id}).
NODE_METRIC_FIELDS = ("state", "resources_total", "resources_available", "store_capacity", "store_used",
                      "store_spilled")


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The raw values behind the built-in metrics (Store.metrics_snapshot)."""

    queue_depths: dict[str, int]  # queue name -> entries not yet done (waiting or leased)
    nodes: dict[str, dict[str, Any]]  # node id -> NODE_METRIC_FIELDS present, and alive
    actor_states: list[str]  # one per actor
    task_counts: dict[str, int]  # "<counter> <name>" -> count (wire.task_counts)
    dead_letters: int
    user: list[tuple[str, str, dict[str, float]]]  # as Store.metrics()


def _user_metrics(definitions: dict[str, str], names: list[str],
                  raws: list[Any]) -> list[tuple[str, str, dict[str, float]]]:
    return [(name, definitions[name], {_text(k): float(v) for k, v in raw.items()})
            for name, raw in zip(names, raws, strict=True)]
