"""What becomes of a task whose worker or node died: another attempt while max_retries
allows, else a WorkerCrashedError as each of its results; and of an actor whose process
died: a restart while max_restarts allows, else ActorDiedError for its queued calls.

The agent (one of its workers died) and the monitor (a whole node died) both decide and
build the failure here, so a caller sees the same retry count and the same error type
whichever way its task was lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgpack

from taskmesh import objects
from taskmesh.objects import KIND_ERROR
from taskmesh._base.wire import encode_notice
from taskmesh.exceptions import ActorDiedError, ActorPlacementGroupRemoved, ActorUnschedulableError, RayError, TaskPlacementGroupRemoved, TaskUnschedulableError, WorkerCrashedError
from taskmesh.store import Completion, Store


_HEX = frozenset("0123456789abcdef")


def entry_problem(fields: Mapping[bytes, bytes], *, actor_call: bool = False) -> str | None:
    """What is wrong with a queue entry that did not come from taskmesh (written by hand,
    or by another version), or None when it is well-formed. Such entries go to the
    dead-letter stream instead of reaching (and crashing) a worker."""
    try:
        task = fields[b"task"].decode()
        if not task or not set(task) <= _HEX:
            return f"field 'task' must be a hex id, got {task[:40]!r}"
        fields[b"name"].decode()
        int(fields[b"attempt"])
        spec = msgpack.unpackb(fields[b"spec"], raw=False)
    except KeyError as e:
        return f"missing field {e.args[0].decode()!r}"
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.exceptions.ExtraData) as e:
        return f"unreadable entry: {type(e).__name__}: {e}"
    if not isinstance(spec, dict):
        return "field 'spec' is not a msgpack map"
    wanted = {"m": str, "args": bytes} if actor_call else {"fn": str, "args": bytes}
    wanted |= {"owner": str} if fields.get(b"kind") == b"actor" else {"owner": str, "nret": int}
    for key, kind in wanted.items():
        if not isinstance(spec.get(key), kind):
            return f"spec field {key!r} missing or not a {kind.__name__}"
    return None


def should_retry(fields: Mapping[bytes, bytes]) -> bool:
    """True while the task's attempts are not used up (max_retries == -1: forever)."""
    spec = msgpack.unpackb(fields[b"spec"], raw=False)
    max_retries = spec.get("maxr", 0)
    return max_retries == -1 or int(fields[b"attempt"]) < max_retries


def next_attempt_fence(fields: Mapping[bytes, bytes]) -> tuple[str, str, int]:
    """(owner, task id, attempt + 1) of a task taken from a node declared dead: the fence
    that keeps a late completion of the attempt it was running from counting (a node
    cut off from Redis, not dead, may finish it and reconnect)."""
    spec = msgpack.unpackb(fields[b"spec"], raw=False)
    return spec["owner"], fields[b"task"].decode(), int(fields[b"attempt"]) + 1


def crash_completion(fields: Mapping[bytes, bytes], cause: str) -> Completion:
    """The Completion that stores a WorkerCrashedError as every return object of the
    task in queue entry `fields` and notifies its owner; `cause` says what died."""
    attempt = int(fields[b"attempt"])
    spec = msgpack.unpackb(fields[b"spec"], raw=False)
    task_id = fields[b"task"].decode()
    error = objects.serialize(WorkerCrashedError(
        f"({cause}; task {task_id}, attempt {attempt + 1} of {spec.get('maxr', 0) + 1})"))
    objs = [(objects.object_id(task_id, i + 1), objects.KIND_ERROR, error)
            for i in range(spec["nret"])]
    return Completion(spec["owner"], encode_notice(task_id, objs), tuple(objs))


def end_job_actors(store: Store, job_id: str, cause: str) -> None:
    """The job ended: its actors die with it, except detached ones (as Ray)."""
    for actor_id in store.job_actors(job_id):
        info = store.actor_info(actor_id)
        if info.get("detached") == "1" or info.get("state") in (None, "DEAD"):
            continue
        state, _ = store.kill_actor(actor_id, no_restart=True)
        if state in ("PENDING", "RESTARTING"):
            actor_down(store, actor_id, restart=False, cause=cause)


def actor_down(store: Store, actor_id: str, *, restart: bool, cause: str, node_id: str = "",
               drain: bool = False) -> str:
    """An actor's process is gone (or must go): restart it when `restart` and its
    max_restarts allow (`drain`: its node was drained, a restart max_restarts does not
    count, as Ray's for preempted nodes), else declare it dead and fail every call queued
    for it with ActorDiedError. Returns "restarting", "dead" or "already" (handled before)."""
    status, entries = store.actor_down(actor_id, restart=restart, cause=cause, node_id=node_id,
                                       drain=drain)
    if entries:
        store.complete_tasks(call_failures(entries, death_error(actor_id, cause)), {})
    return status


# Death causes that mean the actor could never be placed; calls to it raise these types.
UNSCHEDULABLE = "ActorUnschedulableError: "
PG_REMOVED = "ActorPlacementGroupRemoved: "


def death_error(actor_id: str, cause: str) -> RayError:
    """The error calls to a dead actor raise, by its death cause."""
    if UNSCHEDULABLE in cause:
        return ActorUnschedulableError(cause.split(UNSCHEDULABLE, 1)[1])
    if PG_REMOVED in cause:
        return ActorPlacementGroupRemoved(cause.split(PG_REMOVED, 1)[1])
    return ActorDiedError(actor_id, f"The actor {actor_id} is dead: {cause}")


def fail_entries(store: Store, entries: list[tuple[bytes, dict[bytes, bytes]]], *,
                 task_error: RayError, actor_cause: str) -> None:
    """Tasks and actor creations that can never run: tasks get `task_error` as their
    results, actors die with `actor_cause` (their calls then raise its error type)."""
    tasks = [e for e in entries if e[1].get(b"kind", b"task") != b"actor"]
    if tasks:
        store.complete_tasks(call_failures(tasks, task_error), {})
    for _, fields in entries:
        if fields.get(b"kind") == b"actor":
            actor_down(store, fields[b"task"].decode(), restart=False, cause=actor_cause)


def fail_queued(store: Store, queues: list[str], why: str) -> None:
    """Fail every entry still waiting in these bundle queues (their group was removed)."""
    entries = store.queued_entries(queues)
    fail_entries(store, entries, task_error=TaskPlacementGroupRemoved(f"The task's {why}."),
                 actor_cause=f"{PG_REMOVED}The actor's {why}.")


def unschedulable(why: str) -> tuple[RayError, str]:
    """(the error of a task, the death cause of an actor) that can never be placed."""
    return TaskUnschedulableError(why), f"{UNSCHEDULABLE}{why}"


def call_failures(
    entries: Sequence[tuple[bytes, dict[bytes, bytes]]], error: BaseException
) -> list[Completion]:
    """Completions that fail each drained actor call (or task) entry with `error`."""
    data = objects.serialize(error)
    out = []
    for _, fields in entries:
        task_id = fields[b"task"].decode()
        spec = msgpack.unpackb(fields[b"spec"], raw=False)
        objs = [(objects.object_id(task_id, i + 1), KIND_ERROR, data) for i in range(spec["nret"])]
        out.append(Completion(spec["owner"], encode_notice(task_id, objs), tuple(objs)))
    return out
