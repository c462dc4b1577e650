"""The ends of things, each in one place (as rq's job_lifecycle): a job's end, and a
process's end. The driver's shutdown, the failure monitor (a driver or node that stopped
heartbeating) and the node agent (a worker that exited) all call these, so a fix lands
once and every way of ending gives the same result. The retry decision and
dead-lettering are in failure.py."""

from __future__ import annotations

import collections
import logging
from collections.abc import Container, Iterable, Sequence

from taskmesh import objects
from taskmesh._base.ids import owner_of
from taskmesh._base.wire import TERMINATE, CallSpec, QueueEntry, TaskSpec
from taskmesh._core import failure
from taskmesh._core.placement import end_job_groups
from taskmesh.objects.plane import ObjectPlane
from taskmesh.store import Outgoing, Release, Store, retry_transient


def end_job(store: Store, job_id: str, cause: str) -> None:
    """The job ended: its tasks are dropped where queued and killed where running (the
    agents act on the recorded end: `dropped_with_job`), its actors die with it and its
    placement groups are removed, except detached ones (as Ray). Idempotent."""
    store.end_job(job_id)
    failure.end_job_actors(store, job_id, cause)
    end_job_groups(store, job_id)


def end_driver(store: Store, tag: str, job_id: str, cause: str = "its driver died") -> None:
    """A driver died without shutting down (the monitor): its job ends, then nothing
    more is stored for it (a task of its that finishes later would leave an object
    nobody frees: complete.lua), then what it held is released. Idempotent."""
    end_job(store, job_id, cause)
    release_process_holds(store, [tag])  # marks it gone first


def settle_driver(store: Store, tag: str, job_id: str, cause: str = "its driver died") -> None:
    """A driver is gone without shutting down (the monitor, from its stale heartbeat; a
    submitted job's supervisor, when the entrypoint exited): `end_driver`, then its
    done stream and its place among the live drivers go. Idempotent."""
    end_driver(store, tag, job_id, cause)
    store.delete_done(tag)
    store.driver_gone(tag, job_id)


log = logging.getLogger("taskmesh.lifecycle")


class EndedJobs(collections.OrderedDict):
    """The ended jobs a process knows of (oldest first, bounded by its owner), as the
    container `dropped_with_job` asks. A hit is confirmed in Redis each time (a ZSCORE,
    on the rare path of a task being dropped): job numbers start again when Redis loses
    its data (a restart without persistence, a flush), so an id remembered from before
    may now name a live job, whose tasks must run. An id Redis does not confirm is
    forgotten; when Redis cannot be asked, the hit stands."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    def __contains__(self, job_id: object) -> bool:
        if not super().__contains__(job_id):
            return False
        try:
            if self._store.job_ended(str(job_id)):
                return True
        except Exception as e:
            log.warning("could not confirm that job %s ended: %r", job_id, e)
            return True
        del self[job_id]
        return False


def dropped_with_job(entry: QueueEntry, ended: Container[str]) -> bool:
    """Whether a queue entry is a task of an ended job, never to run (or to run no
    longer): any task whose spec names such a job, except work done for a detached actor
    (submitted by its process, or by a task of that work: the spec's `detached`), which
    outlives the job as the actor does. Actors' creations are left to the actor table
    (end_job_actors kills the job's actors; a detached one is created all the same),
    and so are runs that make lost objects again, which others may still hold."""
    spec = entry.spec
    return (isinstance(spec, TaskSpec) and spec.job_id is not None and not spec.detached
            and not entry.rebuild and spec.job_id in ended)


def release_process_holds(store: Store, tags: Iterable[str], node_id: str | None = None,
                          died: bool = True) -> None:
    """Processes are gone: the refs they borrowed and their own objects' owner holds are
    released (objects others still hold live on); with `node_id`, they are also dropped
    from the node's process set. Idempotent. Processes that `died` (killed, crashed, on a
    dead node) are marked gone first: as in Ray, the objects they own are lost with them
    (a borrower's get raises OwnerDiedError, and a task of theirs that finishes later
    stores nothing). A worker that exited on its own (max_calls) leaves its objects to
    whoever still holds them: their directory is in Redis, not in the process."""
    tags = list(tags)
    if tags and died:
        store.owners_gone(tags)
    plane = ObjectPlane(store, None)
    for tag in tags:
        release(plane, store.process_holds(tag))
        if node_id is not None:
            store.remove_node_process(node_id, tag)


def release(plane: ObjectPlane, ops: Sequence[Release]) -> None:
    """Apply hold changes (`ObjectPlane.release`); an actor whose token nobody holds any
    more (its last counting handle is gone, in every process: handles.ActorHandle) ends
    as in Ray: a terminate call queued behind the calls already sent to it, which run
    first. Every process that releases holds calls this: drivers' and workers' runtimes,
    the agent and the monitor releasing a dead process's holds."""
    actors = plane.release(ops)
    if actors:
        retry_transient(lambda: plane.store.submit([terminate_call(a) for a in actors]))


def terminate_call(actor_id: str) -> Outgoing:
    """The terminate call of an actor nothing holds (no caller waits for it: no returns,
    sent as from the actor's creator)."""
    owner = owner_of(actor_id)
    call = CallSpec(TERMINATE, objects.serialize(([], {})), 0, owner, None)
    return Outgoing("", QueueEntry(objects.new_task_id(owner), TERMINATE, 0, call), actor_id)
