"""What becomes of a task whose worker or node died: another attempt while max_retries
allows, else a WorkerCrashedError as each of its results; and of an actor whose process
died: a restart while max_restarts allows, else ActorDiedError for its queued calls.

The agent (one of its workers died) and the monitor (a whole node died) both decide and
build the failure here, so a caller sees the same retry count and the same error type
whichever way its task was lost; the worker asks `should_retry` too when a task raised.
Entries that do not decode are set aside here, into the dead-letter stream, whoever read
them (agent, actor, monitor).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from taskmesh import objects
from taskmesh._base import queues
from taskmesh._base.wire import CallSpec, QueueEntry, TaskSpec, WireError, encode_notice
from taskmesh.exceptions import (
    ActorDiedError,
    ActorPlacementGroupRemoved,
    ActorUnschedulableError,
    RayError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from taskmesh.objects import KIND_ERROR
from taskmesh.store import CALL_GROUP, GROUP, Completion, Leased, Store, retry_transient

log = logging.getLogger("taskmesh.failure")


# ---- malformed entries ------------------------------------------------------------------

def set_aside_malformed(store: Store, leased: Sequence[Leased], *, actor_call: bool = False
                        ) -> list[tuple[Leased, QueueEntry]]:
    """Decode entries read from a queue (or, with `actor_call`, from an actor's call
    stream). One that does not decode (written by hand, or by another program: see
    _base/wire.py) goes to the dead-letter stream with the reason instead of reaching,
    and crashing, a worker or an actor; the rest come back decoded, in order."""
    good, bad = [], []
    pinned_queues: dict[str, bool] = {}
    for entry in leased:
        pinned = pinned_queues.get(entry.queue)
        if pinned is None:
            pinned = pinned_queues[entry.queue] = (
                not actor_call and not queues.is_shape_queue(store.keys.queue_name(entry.queue)))
        try:
            good.append((entry, QueueEntry.from_fields(entry.fields, actor_call=actor_call,
                                                       pinned=pinned)))
        except WireError as e:
            bad.append((entry, str(e)))
        except Exception as e:  # a check the codec lacks: still never a reader's end
            log.exception("decoding entry %s of %s failed", entry.entry_id, entry.queue)
            bad.append((entry, f"undecodable entry: {type(e).__name__}: {e}"))
    if bad:
        dead_letter(store, bad, group=CALL_GROUP if actor_call else GROUP)
    return good


def dead_letter(store: Store, bad: Sequence[tuple[Leased, str]], *, group: bytes = GROUP) -> None:
    """Move entries out of their stream into `tm:deadletter`, each with its reason (the
    one place that does; see Store.dead_letter)."""
    for entry, reason in bad:
        log.warning("malformed entry %s in %s moved to the dead-letter stream: %s",
                    entry.entry_id, entry.queue, reason)
    retry_transient(lambda: store.dead_letter(bad, group=group))


# ---- tasks ------------------------------------------------------------------------------

def should_retry(spec: TaskSpec, attempt: int, error: BaseException | None = None) -> bool:
    """Whether attempt `attempt` of a task gets another: its worker or node died
    (`error` None), or it raised `error`, retried only when its retry_exceptions say so.
    max_retries bounds both (TaskSpec.can_retry). The monitor, the agent and the worker
    all decide here."""
    if error is not None:
        retry = spec.retry_exceptions
        if not retry:
            return False
        if isinstance(retry, bytes) and not isinstance(error, _retry_types(retry)):
            return False
    return spec.can_retry(attempt)


def should_retry_call(spec: CallSpec, actor_max_task_retries: int, error: Exception,
                      retries: int) -> bool:
    """Whether an actor call that raised `error`, and ran again `retries` times already,
    runs once more: its retry_exceptions name the error and its max_task_retries (the
    method's, else the actor's) allow it. A generator call is not run again (its items
    were stored as it yielded them)."""
    retry = spec.retry_exceptions
    if not retry or spec.generator:
        return False
    if isinstance(retry, bytes) and not isinstance(error, _retry_types(retry)):
        return False
    limit = spec.max_task_retries if spec.max_task_retries is not None else actor_max_task_retries
    return limit == -1 or retries < limit


def _retry_types(retry: bytes) -> tuple[type, ...]:
    """The exception types of a retry_exceptions list. Types that do not unpickle (an
    entry written by hand) retry nothing: the task's error is then its result, where
    raising here would end its worker, and with max_retries -1 every next one."""
    try:
        types = tuple(objects.deserialize(retry))
        if all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            return types
    except Exception:
        pass
    log.warning("a task's retry_exceptions field is not a list of exception types: not retried")
    return ()


def next_attempt_fence(entry: QueueEntry) -> tuple[str, str, int]:
    """(owner, task id, attempt + 1) of a task taken from a node declared dead: the fence
    that keeps a late completion of the attempt it was running from counting (a node
    cut off from Redis, not dead, may finish it and reconnect)."""
    return entry.spec.owner, entry.task, entry.attempt + 1


def crash_completion(entry: QueueEntry, cause: str) -> Completion:
    """The Completion that stores a WorkerCrashedError as every return object of the
    task `entry` and notifies its owner; `cause` says what died."""
    spec: TaskSpec = entry.spec  # type: ignore[assignment]
    error = objects.serialize(WorkerCrashedError(
        f"({cause}; task {entry.task}, attempt {entry.attempt + 1} of {spec.max_retries + 1})"))
    objs = [(objects.object_id(entry.task, i + 1), objects.KIND_ERROR, error)
            for i in range(spec.num_returns)]
    return Completion(spec.owner, encode_notice(entry.task, objs), tuple(objs))


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
    status, drained, cause = store.actor_down(actor_id, restart=restart, cause=cause,
                                              node_id=node_id, drain=drain)
    calls = [entry for _, entry in set_aside_malformed(store, drained, actor_call=True)]
    if calls:
        store.complete_tasks(call_failures(calls, death_error(actor_id, cause)), {})
    return status


# Ray's death causes of the actors that ended on purpose (its GCS's texts, word for word:
# programs match on them).
EXITED = ("The actor is dead because its worker process has died. Worker exit type: "
          "INTENDED_USER_EXIT Worker exit detail: Worker exits by a user request. "
          "exit_actor() is called.")
OUT_OF_SCOPE = "The actor is dead because all references to the actor were removed."
KILLED = "The actor is dead because it was killed by `ray.kill`."  # Ray's words, which programs match

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


def fail_entries(store: Store, entries: Sequence[QueueEntry], *, task_error: RayError,
                 actor_cause: str) -> None:
    """Tasks and actor creations that can never run: tasks get `task_error` as their
    results, actors die with `actor_cause` (their calls then raise its error type)."""
    tasks = [e for e in entries if not e.creates_actor]
    if tasks:
        store.complete_tasks(call_failures(tasks, task_error), {})
    for entry in entries:
        if entry.creates_actor:
            actor_down(store, entry.task, restart=False, cause=actor_cause)


def fail_queued(store: Store, queues: list[str], why: str) -> None:
    """Fail every entry still waiting in these bundle queues (their group was removed)."""
    entries = [entry for _, entry in set_aside_malformed(store, store.queued_entries(queues))]
    fail_entries(store, entries, task_error=TaskPlacementGroupRemoved(f"The task's {why}."),
                 actor_cause=f"{PG_REMOVED}The actor's {why}.")


def unschedulable(why: str) -> tuple[RayError, str]:
    """(the error of a task, the death cause of an actor) that can never be placed."""
    return TaskUnschedulableError(why), f"{UNSCHEDULABLE}{why}"


def call_failures(entries: Sequence[QueueEntry], error: BaseException) -> list[Completion]:
    """Completions that fail each actor call (or task) with `error` as all its results."""
    data = objects.serialize(error)
    out = []
    for entry in entries:
        spec = entry.spec
        objs = [(objects.object_id(entry.task, i + 1), KIND_ERROR, data)
                for i in range(spec.num_returns)]  # type: ignore[union-attr]
        out.append(Completion(spec.owner, encode_notice(entry.task, objs), tuple(objs)))
    return out
