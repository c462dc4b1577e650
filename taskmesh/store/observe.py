"""Observability's share of the Store: task events, worker output kept for `taskmesh
logs`, and user metrics. A mixin of `Store` (client.py); every key comes from `Keys` (keys.py).

Everything here is written in batches that ride on a round trip the writer makes anyway
(a submission pipeline, a worker's periodic output flush) or on a background thread, so
that observing a task never adds a Redis command to its own path."""

from __future__ import annotations

from collections.abc import Sequence
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

    def queue_events(self, pipe: Any, events: Sequence[dict[str, Any]]) -> None:
        """Add `events` to a pipeline being built: one capped stream entry per
        EVENTS_PER_ENTRY events (one for all but the largest batches)."""
        maxlen = config.TASK_EVENTS_MAXLEN.get()  # once per batch, read when used
        for i in range(0, len(events), EVENTS_PER_ENTRY):
            chunk = list(events[i:i + EVENTS_PER_ENTRY])
            pipe.xadd(self.keys.events(), dict(_fields(wire.events_entry(chunk))), maxlen=maxlen,
                      approximate=True)

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
                      events: Sequence[dict[str, Any]]) -> None:
        """A worker's periodic flush in one round trip: printed lines to the job's driver
        (pub/sub) and to the job's log stream, and task events."""
        pipe = self.redis.pipeline(transaction=False)
        if log_payload is not None and job_id is not None:
            pipe.publish(self.keys.chan_log(job_id), log_payload)
            pipe.xadd(self.keys.logs(job_id), dict(_fields(wire.log_entry(log_payload))), maxlen=LOGS_MAXLEN,
                      approximate=True)
            pipe.expire(self.keys.logs(job_id), LOGS_TTL_S)
        self.queue_events(pipe, events)
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
        names = sorted(definitions)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.metric(name))
        return [(name, definitions[name], {_text(k): float(v) for k, v in raw.items()})
                for name, raw in zip(names, pipe.execute(), strict=True)]
