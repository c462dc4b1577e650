"""The state API with Ray's names (`ray.util.state`): tasks, actors, nodes and jobs as
recorded in Redis. Task rows are folded from the task events (see `taskmesh._events`).

    from taskmesh.util.state import list_tasks, summarize_tasks
    list_tasks(filters=[("state", "=", "RUNNING")])

The filter helpers here are also what `taskmesh list --filter` uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from taskmesh._base import wire

__all__ = ["get_actor", "get_job", "get_log", "get_node", "get_objects", "get_placement_group",
           "get_task", "get_worker", "list_actors", "list_jobs", "list_nodes", "list_placement_groups",
           "list_tasks", "list_workers", "summarize_tasks"]

Filter = tuple[str, str, Any]
_PREDICATES = ("=", "!=")
# Columns compared without regard to case (Ray upper-cases states and types).
_CASELESS = {"state", "type"}


class StateRow(dict):
    """One row: a dict whose columns also read as attributes (`task.state`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def parse_filter(text: str) -> Filter:
    """`KEY=VALUE` or `KEY!=VALUE` (the CLI's --filter) as a (key, predicate, value) filter."""
    key, sep, value = text.partition("!=")
    if sep:
        predicate = "!="
    else:
        key, sep, value = text.partition("=")
        predicate = "="
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE or KEY!=VALUE, got {text!r}")
    return key, predicate, value.strip()


def apply_filters(rows: Sequence[dict[str, Any]], filters: Sequence[Filter] | None,
                  columns: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The rows matching every filter; a key that is not a column raises ValueError."""
    checked = []
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"A filter must be a (key, predicate, value) tuple, got {f!r}.")
        key, predicate, value = f
        if predicate not in _PREDICATES:
            raise ValueError(f"Unsupported filter predicate {predicate!r}: use one of {list(_PREDICATES)}.")
        if columns is not None and key not in columns:
            raise ValueError(f"Given filter key {key!r} is not supported. Supported keys: {sorted(columns)}.")
        checked.append((key, predicate, _norm(key, value)))
    return [r for r in rows
            if all((_norm(k, r.get(k)) == v) == (p == "=") for k, p, v in checked)]


def _norm(key: str, value: Any) -> str:
    text = "" if value is None else str(value)
    return text.upper() if key in _CASELESS else text


@contextlib.contextmanager
def _store(address: str | None) -> Iterator[Any]:
    """The connected runtime's store, or a new connection to `address` (or to the
    cluster started on this machine)."""
    from taskmesh._core.context import get_runtime
    from taskmesh.api import is_initialized
    from taskmesh.store import Store, connection
    from taskmesh.workers import launch

    if address is None and is_initialized():
        yield get_runtime().store
        return
    url = (connection.canonicalize_address(address) if address
           else launch.current_cluster_address(include_local=True))
    if url is None:
        raise ConnectionError("taskmesh is not initialized and no cluster runs on this machine: "
                              "call taskmesh.init() or pass address=.")
    store = Store(url)
    try:
        yield store
    finally:
        store.close()


def _listed(rows: list[dict[str, Any]], filters: Sequence[Filter] | None, limit: int) -> list[StateRow]:
    columns = set().union(*(r.keys() for r in rows)) if rows else None
    matching = apply_filters(rows, filters, columns)
    return [StateRow(r) for r in (matching[-limit:] if limit > 0 else [])]  # the newest


def task_rows(store: Any) -> list[dict[str, Any]]:
    """Every recorded task attempt (internal timing columns dropped)."""
    from taskmesh._core import events as _events

    return [{k: v for k, v in r.items() if not k.endswith("_us")}
            for r in _events.task_rows(store.task_events())]


def list_tasks(address: str | None = None, filters: Sequence[Filter] | None = None, limit: int = 100,
               timeout: int = 30, detail: bool = False,
               raise_on_missing_output: bool = True) -> list[StateRow]:
    """The newest `limit` task attempts recorded in the task events, oldest first:
    task_id, attempt_number, name, state (PENDING_NODE_ASSIGNMENT, RUNNING, FINISHED,
    FAILED), type (NORMAL_TASK, ACTOR_CREATION_TASK, ACTOR_TASK), job_id, actor_id,
    node_id, worker_pid, error_type, error_message (the traceback of a failed attempt),
    creation/start/end_time_ms. Actor method calls
    appear once they run (their submission is not recorded)."""
    with _store(address) as store:
        rows = task_rows(store)
    return _listed(rows, filters, limit)


def summarize_tasks(address: str | None = None, timeout: int = 30,
                    raise_on_missing_output: bool = True) -> dict[str, Any]:
    """Counts of tasks by function name and state (each task's latest attempt)."""
    from taskmesh._core import events as _events

    with _store(address) as store:
        return _events.summarize(_events.task_rows(store.task_events()))


def list_actors(address: str | None = None, filters: Sequence[Filter] | None = None, limit: int = 100,
                timeout: int = 30, detail: bool = False,
                raise_on_missing_output: bool = True) -> list[StateRow]:
    with _store(address) as store:
        rows = store.actors()
    return _listed(rows, filters, limit)


def list_nodes(address: str | None = None, filters: Sequence[Filter] | None = None, limit: int = 100,
               timeout: int = 30, detail: bool = False,
               raise_on_missing_output: bool = True) -> list[StateRow]:
    with _store(address) as store:
        rows = [{**n, "state": "ALIVE" if n["alive"] else "DEAD"} for n in store.nodes()]
    return _listed(rows, filters, limit)


def list_jobs(address: str | None = None, filters: Sequence[Filter] | None = None, limit: int = 100,
              timeout: int = 30, detail: bool = False,
              raise_on_missing_output: bool = True) -> list[StateRow]:
    with _store(address) as store:
        rows = store.job_infos()
    return _listed(rows, filters, limit)


def list_placement_groups(address: str | None = None, filters: Sequence[Filter] | None = None,
                          limit: int = 100, timeout: int = 30, detail: bool = False,
                          raise_on_missing_output: bool = True) -> list[StateRow]:
    with _store(address) as store:
        rows = _pg_rows(store)
    return _listed(rows, filters, limit)


def list_workers(address: str | None = None, filters: Sequence[Filter] | None = None, limit: int = 100,
                 timeout: int = 30, detail: bool = False,
                 raise_on_missing_output: bool = True) -> list[StateRow]:
    """The worker processes each node has registered (worker_id is the process's owner
    tag, the prefix of the ids of the tasks and objects it makes)."""
    with _store(address) as store:
        rows = _worker_rows(store)
    return _listed(rows, filters, limit)


def _pg_rows(store: Any) -> list[dict[str, Any]]:
    return [{**info, "placement_group_id": info.get("pg_id")} for info in store.pg_infos()]


def _worker_rows(store: Any) -> list[dict[str, Any]]:
    return [{"worker_id": tag, "node_id": node["node_id"], "is_alive": node["alive"],
             "worker_type": "WORKER"}
            for node in store.nodes() for tag in store.node_processes(node["node_id"])]


# ---- one entity by id (None when there is none) ------------------------------------------

def _one(rows: list[dict[str, Any]], column: str, value: str) -> StateRow | None:
    return next((StateRow(r) for r in rows if r.get(column) == value), None)


def get_actor(id: str, address: str | None = None, timeout: int = 30,
              _explain: bool = False) -> StateRow | None:
    with _store(address) as store:
        return _one(store.actors(), "actor_id", id)


def get_node(id: str, address: str | None = None, timeout: int = 30,
             _explain: bool = False) -> StateRow | None:
    with _store(address) as store:
        rows = [{**n, "state": "ALIVE" if n["alive"] else "DEAD"} for n in store.nodes()]
    return _one(rows, "node_id", id)


def get_job(id: str, address: str | None = None, timeout: int = 30,
            _explain: bool = False) -> StateRow | None:
    with _store(address) as store:
        return _one(store.job_infos(), "job_id", id)


def get_placement_group(id: str, address: str | None = None, timeout: int = 30,
                        _explain: bool = False) -> StateRow | None:
    with _store(address) as store:
        return _one(_pg_rows(store), "placement_group_id", id)


def get_worker(id: str, address: str | None = None, timeout: int = 30,
               _explain: bool = False) -> StateRow | None:
    with _store(address) as store:
        return _one(_worker_rows(store), "worker_id", id)


def get_task(id: Any, address: str | None = None, timeout: int = 30,
             _explain: bool = False) -> StateRow | list[StateRow] | None:
    """The recorded attempts of a task (its id, or a ref it returns): None when none is
    recorded, the row when there is one attempt, else the list of attempts, oldest
    first."""
    task_id = id.task_id() if hasattr(id, "task_id") else id
    with _store(address) as store:
        rows = [StateRow(r) for r in task_rows(store) if r.get("task_id") == task_id]
    if not rows:
        return None
    return rows[0] if len(rows) == 1 else rows


def get_objects(id: str, address: str | None = None, timeout: int = 30,
                _explain: bool = False) -> list[StateRow]:
    """The object with this id as a list of rows (Ray lists one per reference to it;
    here one row: its kind, size, owner tag, nodes and holders), empty when it is gone."""
    with _store(address) as store:
        return [StateRow(r) for r in store.object_summaries() if r["object_id"] == id]


def log_lines(store: Any, job_id: str | None = None, node_id: str | None = None,
              actor_id: str | None = None, pid: int | None = None) -> list[tuple[int, str, str, str]]:
    """(pid, task name, stream, line) of what a job's workers printed (the latest job's
    by default), oldest first, optionally only one node's, actor's or worker's."""
    if job_id is None:
        jobs = store.log_jobs()
        if not jobs:
            return []
        job_id = jobs[-1]
    return batch_lines(store.job_logs(job_id), node_id, actor_id, pid)


def batch_lines(batches: Sequence[dict[str, Any]], node_id: str | None = None,
                actor_id: str | None = None, pid: int | None = None) -> list[tuple[int, str, str, str]]:
    """(pid, task name, stream, line) of recorded output batches (`Store.job_logs`),
    optionally only one node's, actor's or worker's. The lines that carry a progress
    bar's state (experimental.tqdm_ray, drawn by the driver) are left out."""
    lines: list[tuple[int, str, str, str]] = []
    for batch in batches:
        if ((node_id and batch.get("node") != node_id) or (actor_id and batch.get("actor") != actor_id)
                or (pid is not None and batch.get("pid") != pid)):
            continue
        lines += [(batch.get("pid", 0), name, stream, line) for name, stream, line in batch.get("lines", [])
                  if not line.startswith(wire.PROGRESS_MARKER)]
    return lines


def resource_usage(nodes: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """resource -> (used, total) over the live nodes among `nodes` (`Store.nodes`)."""
    total: dict[str, float] = {}
    avail: dict[str, float] = {}
    for n in nodes:
        if not n["alive"]:
            continue
        for k, v in n["resources_total"].items():
            total[k] = total.get(k, 0.0) + v
        for k, v in n["resources_available"].items():
            avail[k] = avail.get(k, 0.0) + v
    return {k: (total[k] - avail.get(k, 0.0), total[k]) for k in sorted(total)}


def get_log(address: str | None = None, node_id: str | None = None, actor_id: str | None = None,
            pid: int | None = None, job_id: str | None = None, tail: int = -1,
            timeout: int = 30) -> Iterator[str]:
    """The lines a job's workers printed (Ray's `get_log`, for worker output kept in
    Redis): of the given job (default: the latest), node, actor or worker pid."""
    with _store(address) as store:
        lines = log_lines(store, job_id, node_id, actor_id, pid)
    if tail >= 0:
        lines = lines[-tail:] if tail else []
    for _, _, _, line in lines:
        yield line
