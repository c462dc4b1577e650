"""Task events: what happened to each task attempt, as Ray's state API reports it.

Writers append small dicts to one capped stream (`Keys.events`) in batches, never with a
command per task:

  submitter  PENDING_NODE_ASSIGNMENT  in a later submission pipeline (Runtime._flush_once:
             every ~0.2 s or 500 events, so single submissions add no command)
  worker     RUNNING, then FINISHED or FAILED (with start/end), for tasks, actor creations
             and actor calls  from its output thread every ~0.2 s, in one pipeline with
             the lines the tasks printed; a task or actor call that ends before that
             sends only its end (kept as a tuple until then: EventBuffer.ended)
  agent      PENDING_NODE_ASSIGNMENT of the next attempt when it requeues a task (_flush)

An event is {"task_id", "attempt", "state", "ts" (µs since the epoch), ...} plus what
the writer knows: name, job, type, node, pid, actor_id, error, tb (a failed attempt's
traceback, its last 8,000 characters), start, end. Readers fold
them per attempt (`task_rows`); the order in the stream does not matter, and a duplicate
(a batch sent twice after a lost reply) changes nothing. Tasks submitted with
`enable_task_events=False` carry `ev=0` in their queue entry (QueueEntry.events; an
actor's in its ActorSpec, for its calls too) and record nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from taskmesh._base import wire
from taskmesh._base.wire import QueueEntry

PENDING, RUNNING, FINISHED, FAILED = (wire.EVENT_PENDING, wire.EVENT_RUNNING, wire.EVENT_FINISHED,
                                      wire.EVENT_FAILED)
_RANK = {PENDING: 0, RUNNING: 1, FINISHED: 2, FAILED: 2}
TERMINAL = (FINISHED, FAILED)

NORMAL_TASK = "NORMAL_TASK"
ACTOR_TASK = "ACTOR_TASK"
ACTOR_CREATION_TASK = "ACTOR_CREATION_TASK"


def now_us() -> int:
    return time.time_ns() // 1000


def event(task_id: str, attempt: int, state: str, **info: Any) -> dict[str, Any]:
    out = {"task_id": task_id, "attempt": int(attempt), "state": state, "ts": now_us()}
    for k, v in info.items():
        if v is not None:
            out[k] = v
    return out


def submitted(entry: QueueEntry, job_id: str | None) -> dict[str, Any]:
    """The PENDING event of a task or actor creation being submitted."""
    if entry.creates_actor:
        kind, actor_id = ACTOR_CREATION_TASK, entry.task
    else:
        kind, actor_id = NORMAL_TASK, None
    return event(entry.task, entry.attempt, PENDING, name=entry.name, job=job_id, type=kind,
                 actor_id=actor_id)


class EventBuffer:
    """Events of one process waiting for its next flush (append from any thread).

    A worker's tasks and actor calls are recorded by `started` and `ended` as tuples,
    made event dicts only when the buffer is drained: a worker runs thousands of them
    between two flushes, and one that ends before the flush needs no RUNNING event (its
    end event carries its start)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        # (task id, attempt) -> (name, job, node, pid, start µs, actor id) of what runs
        # now, and those of them whose RUNNING event a drain made.
        self._running: dict[tuple[str, int], tuple] = {}
        self._running_sent: set[tuple[str, int]] = set()
        self._ends: list[tuple] = []  # see `ended`

    def add(self, ev: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(ev)

    def started(self, task_id: str, attempt: int, name: str, job: str | None, node: str, pid: int,
                start_us: int, actor_id: str | None = None) -> None:
        """A task attempt (or, with `actor_id`, an actor's method call) started here: its
        RUNNING event is made by the next drain if it still runs then."""
        with self._lock:
            self._running[(task_id, attempt)] = (name, job, node, pid, start_us, actor_id)

    def ended(self, task_id: str, attempt: int, end_us: int, tb: str | None, *, failed: bool) -> None:
        """What `started` recorded ended: its FINISHED or FAILED event, with its start and
        end (a failed one's traceback `tb`). Nothing for an attempt not started here."""
        key = (task_id, attempt)
        with self._lock:
            running = self._running.pop(key, None)
            if running is None:
                return
            running_sent = key in self._running_sent
            self._running_sent.discard(key)
            self._ends.append((task_id, attempt, *running[:5], end_us, tb, failed, running_sent, running[5]))

    def __len__(self) -> int:
        return len(self._events) + len(self._ends) + len(self._running) - len(self._running_sent)

    def drain(self, counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Everything buffered; a RUNNING event whose attempt also ended in this batch is
        dropped (the end event carries the start time). `counts` receives what the whole
        batch adds to the task counters (wire.task_counts), the starts of ends whose
        RUNNING event was never made included."""
        with self._lock:
            events, self._events = self._events, []
            ends, self._ends = self._ends, []
            for key, (name, job, node, pid, start_us, actor_id) in self._running.items():
                if key not in self._running_sent:
                    self._running_sent.add(key)
                    ev = event(*key, RUNNING, name=name, job=job, node=node, pid=pid,
                               type=ACTOR_TASK if actor_id is not None else None, actor_id=actor_id)
                    ev["ts"] = start_us
                    events.append(ev)
        if counts is not None:
            counts.update(wire.task_counts(events))
            for end in ends:
                name, failed, running_sent = end[2] or "?", end[9], end[10]
                field_ = f"{'failed' if failed else 'finished'} {name}"
                counts[field_] = counts.get(field_, 0) + 1
                if not running_sent:
                    field_ = f"started {name}"
                    counts[field_] = counts.get(field_, 0) + 1
        for task_id, attempt, name, job, node, pid, start_us, end_us, tb, failed, _, actor_id in ends:
            ev = {"task_id": task_id, "attempt": attempt, "state": FAILED if failed else FINISHED,
                  "ts": end_us, "name": name, "node": node, "pid": pid, "start": start_us, "end": end_us}
            if job is not None:
                ev.update(job=job)
            if actor_id is not None:
                ev.update(type=ACTOR_TASK, actor_id=actor_id)
            if failed:
                ev.update(error="TASK_EXECUTION_EXCEPTION")
                if tb is not None:
                    ev.update(tb=tb)
            events.append(ev)
        ended = {(e["task_id"], e["attempt"]) for e in events if e["state"] in TERMINAL}
        if not ended:
            return events
        return [e for e in events if e["state"] != RUNNING or (e["task_id"], e["attempt"]) not in ended]


# ---- reading -------------------------------------------------------------------------------

_COLUMNS = {"name": "name", "job": "job_id", "type": "type", "node": "node_id", "pid": "worker_pid",
            "actor_id": "actor_id", "error": "error_type", "tb": "error_message"}


def task_rows(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task attempt, with Ray's `list_tasks` column names, oldest first. An
    attempt that was followed by a later one and has no end of its own (its worker
    died, the agent requeued it) is FAILED."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for ev in events:
        try:
            key = (str(ev["task_id"]), int(ev["attempt"]))
            state, ts = str(ev["state"]), int(ev["ts"])
        except (KeyError, TypeError, ValueError):
            continue
        row = rows.get(key)
        if row is None:
            row = rows[key] = {"task_id": key[0], "attempt_number": key[1], "state": state,
                               "name": "", "job_id": "", "type": NORMAL_TASK, "node_id": "",
                               "worker_pid": "", "actor_id": "", "error_type": "", "error_message": "",
                               "creation_time_ms": None, "start_time_ms": None, "end_time_ms": None,
                               "start_us": None, "end_us": None}
        elif _RANK.get(state, 0) >= _RANK.get(row["state"], 0):
            row["state"] = state
        for field, column in _COLUMNS.items():
            if ev.get(field) not in (None, ""):
                row[column] = ev[field]
        if state == PENDING:
            row["creation_time_ms"] = ts // 1000
        elif state == RUNNING and row["start_us"] is None:
            row["start_us"] = ts
        if "start" in ev:
            row["start_us"] = int(ev["start"])
        if "end" in ev:
            row["end_us"] = int(ev["end"])
    latest: dict[str, int] = {}
    for task_id, attempt in rows:
        latest[task_id] = max(latest.get(task_id, 0), attempt)
    for (task_id, attempt), row in rows.items():
        if attempt < latest[task_id] and row["state"] not in TERMINAL:
            row["state"] = FAILED
        row["func_or_class_name"] = row["name"]
        for us, ms in (("start_us", "start_time_ms"), ("end_us", "end_time_ms")):
            row[ms] = None if row[us] is None else row[us] // 1000
        # Attempts after the first are known from the agent's retry event only.
        if not row["name"] and (task_id, 0) in rows:
            row["name"] = row["func_or_class_name"] = rows[(task_id, 0)]["name"]
    return sorted(rows.values(), key=lambda r: (r["creation_time_ms"] or r["start_time_ms"] or 0,
                                                r["task_id"], r["attempt_number"]))


def latest_attempts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["attempt_number"] >= out.get(row["task_id"], {}).get("attempt_number", -1):
            out[row["task_id"]] = row
    return list(out.values())


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts by function name and state, of each task's latest attempt (the shape of
    Ray's `summarize_tasks()`)."""
    summary: dict[str, dict[str, Any]] = {}
    latest = latest_attempts(rows)
    for row in latest:
        name = row["func_or_class_name"] or "?"
        entry = summary.setdefault(name, {"func_or_class_name": name, "type": row["type"],
                                          "state_counts": {}})
        entry["state_counts"][row["state"]] = entry["state_counts"].get(row["state"], 0) + 1
    return {"cluster": {"summary": summary, "total_tasks": len(latest), "summary_by": "func_name",
                        "total_actor_tasks": sum(1 for r in latest if r["type"] == ACTOR_TASK),
                        "total_actor_scheduled": sum(1 for r in latest if r["type"] == ACTOR_CREATION_TASK)}}


def chrome_trace(rows: Sequence[dict[str, Any]],
                 node_ips: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Chrome tracing ("X" complete events, as `ray.timeline()` writes them) of every
    attempt that ran to its end: one process per node, one thread per worker."""
    node_ips = node_ips or {}
    trace = []
    for row in rows:
        start, end = row["start_us"], row["end_us"]
        if start is None or end is None:
            continue
        node = row["node_id"]
        trace.append({
            "cat": f"task::{row['name']}", "name": row["name"],
            "pid": f"Node {node_ips.get(node, node)}", "tid": f"worker {row['worker_pid']}",
            "ts": start, "dur": max(end - start, 0), "ph": "X",
            "cname": "rail_response" if row["state"] == FINISHED else "terrible",
            "args": {"task_id": row["task_id"], "attempt_number": row["attempt_number"],
                     "job_id": row["job_id"], "state": row["state"], "node_id": node,
                     "actor_id": row["actor_id"], "error_type": row["error_type"]},
        })
    return trace


def write_trace(trace: list[dict[str, Any]], filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(trace, f)


def timeline(store: Any) -> list[dict[str, Any]]:
    """The cluster's trace from the events in Redis (for `timeline()` and the CLI); a
    node is labelled with its IP and the start of its id (several nodes may share an IP)."""
    labels = {n["node_id"]: f"{n.get('ip', '?')} {n['node_id'][:8]}" for n in store.nodes()}
    return chrome_trace(task_rows(store.task_events()), labels)
