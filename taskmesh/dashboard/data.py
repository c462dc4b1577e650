"""What the dashboard's pages show, read from Redis alone and returned as plain JSON-able
dicts (the `/api/...` endpoints). Every reader here takes a `Store` and reuses the readers
of the CLI and the state API (`taskmesh.util.state`, `taskmesh._core.events`), so that
`taskmesh status`/`list`/`logs`/`timeline` and the pages never disagree."""

from __future__ import annotations

import time
from typing import Any

from taskmesh._base import ids
from taskmesh._core import events as _events
from taskmesh.util import state

# A job page lists at most this many task attempts (the newest): a page is for reading.
TASKS_SHOWN = 1_000
# Task filters a job page offers, as columns of `state.task_rows`.
TASK_FILTERS = {"state": "state", "name": "name", "node": "node_id"}
_NODE_STORE_FIELDS = ("store_used", "store_capacity", "store_objects", "store_spilled",
                      "store_spilled_objects")


def _int(value: Any) -> int:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return 0


def cluster(store: Any) -> dict[str, Any]:
    """Nodes (resources used/total, state, heartbeat age, object store), the queues of
    each resource shape and of each node or bundle, and the dead letters."""
    nodes = store.nodes()
    now_ms = time.time() * 1000
    rows = []
    for n in nodes:
        total, avail = n["resources_total"], n["resources_available"]
        beat = n.get("last_heartbeat_ms")
        rows.append({
            "node_id": n["node_id"], "state": "ALIVE" if n["alive"] else "DEAD",
            "ip": n.get("ip", ""), "hostname": n.get("hostname", ""), "pid": n.get("pid", ""),
            "heartbeat_age_s": None if beat is None else round(max(now_ms - beat, 0) / 1000, 1),
            "resources": [{"name": k, "used": total[k] - avail.get(k, 0.0), "total": total[k]}
                          for k in sorted(total)],
            **{f: _int(n.get(f)) for f in _NODE_STORE_FIELDS},
        })
    pinned = store.pinned_queues()
    return {
        "nodes": rows,
        "resources": [{"name": k, "used": used, "total": total}
                      for k, (used, total) in state.resource_usage(nodes).items()],
        "queues": _queue_rows(store.queue_stats()),
        "pinned_queues": _queue_rows(store.queue_stats(pinned) if pinned else {}),
        "dead_letters": store.dead_letter_count(),
    }


def _queue_rows(stats: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"queue": name, "queued": queued, "running": running}
            for name, (queued, running) in sorted(stats.items())]


def _submitted_jobs(store: Any) -> list[dict[str, Any]]:
    """Jobs submitted with `taskmesh job submit`, the newest first (the rows of
    `job_submission.list_submitted_jobs`: submission_id, status, entrypoint, job_id,
    start_time, end_time, message, ...)."""
    from taskmesh.job_submission import list_submitted_jobs

    return list_submitted_jobs(store)[::-1]


def jobs(store: Any) -> dict[str, Any]:
    """Every job (driver jobs, as `taskmesh list jobs`) with its tasks counted by state
    (each task's latest attempt), and the submitted jobs."""
    counts: dict[str, dict[str, int]] = {}
    for row in _events.latest_attempts(state.task_rows(store)):
        per_job = counts.setdefault(row["job_id"], {})
        per_job[row["state"]] = per_job.get(row["state"], 0) + 1
    rows = [{**job, "tasks": counts.get(job["job_id"], {})} for job in store.job_infos()]
    return {"jobs": rows[::-1], "submitted": _submitted_jobs(store)}  # the newest first


def job(store: Any, job_id: str, filters: dict[str, str] | None = None) -> dict[str, Any] | None:
    """One job: its record, tasks (filtered by state, name, node; the newest
    TASKS_SHOWN), actors, placement groups and objects. None when there is no such job."""
    info = next((j for j in store.job_infos() if j["job_id"] == job_id), None)
    if info is None:
        return None
    every = [r for r in state.task_rows(store) if r["job_id"] == job_id]
    wanted = [(TASK_FILTERS[k], "=", v) for k, v in (filters or {}).items() if v and k in TASK_FILTERS]
    tasks = state.apply_filters(every, wanted)
    return {
        "job": info,
        "tasks": tasks[-TASKS_SHOWN:][::-1],  # the newest first
        "tasks_matching": len(tasks),
        "task_names": sorted({r["name"] for r in every if r["name"]}),
        "task_nodes": sorted({r["node_id"] for r in every if r["node_id"]}),
        "actors": _actors(store, job_id),
        "placement_groups": _placement_groups(store, job_id),
        "objects": _objects(store, job_id, {r["task_id"] for r in every}),
    }


def _actors(store: Any, job_id: str) -> list[dict[str, Any]]:
    columns = ("actor_id", "class_name", "name", "state", "node_id", "pid", "restarts",
               "max_restarts", "death_cause")
    return [{c: a.get(c, "") for c in columns} for a in store.actors() if a.get("job_id") == job_id]


def _placement_groups(store: Any, job_id: str) -> list[dict[str, Any]]:
    out = []
    for g in store.pg_infos():
        if g.get("job_id") != job_id:
            continue
        bundles = [{"index": i, "resources": b, "node_id": g["bundle_nodes"].get(i, "")}
                   for i, b in enumerate(g["bundles"])]
        out.append({"pg_id": g.get("pg_id", ""), "name": g.get("name", ""),
                    "strategy": g.get("strategy", ""), "state": g.get("state", ""),
                    "bundles": bundles})
    return out


def _objects(store: Any, job_id: str, task_ids: set[str]) -> list[dict[str, Any]]:
    """The objects the job's driver put or its tasks returned."""
    drivers = {tag for tag, job in store.drivers() if job == job_id}
    return [o for o in store.object_summaries()
            if o["owner"] in drivers or ids.task_of(o["object_id"]) in task_ids]


def logs(store: Any, job_id: str, actor_id: str | None = None,
         after: str | None = None) -> dict[str, Any]:
    """The lines a job's workers printed (one actor's only, with `actor_id`) recorded
    after the batch `after`, and the id to ask for the next ones with."""
    batches = store.job_logs(job_id, after)
    lines = [{"pid": pid, "name": name, "stream": stream, "line": line}
             for pid, name, stream, line in state.batch_lines(batches, actor_id=actor_id)]
    return {"lines": lines, "after": batches[-1]["id"] if batches else after}


def timeline(store: Any, job_id: str) -> dict[str, Any]:
    """The job's share of `taskmesh timeline`'s trace: one bar per attempt that ran to
    its end, on a row per node and worker."""
    bars = [{"name": t["name"], "node": t["pid"], "worker": t["tid"], "start_us": t["ts"],
             "dur_us": t["dur"], "state": t["args"]["state"], "task_id": t["args"]["task_id"]}
            for t in _events.timeline(store) if t["args"]["job_id"] == job_id]
    return {"bars": sorted(bars, key=lambda b: b["start_us"])}

