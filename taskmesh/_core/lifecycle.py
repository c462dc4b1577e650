"""The ends of things, each in one place (as rq's job_lifecycle): a job's end, and a
process's end. The driver's shutdown, the failure monitor (a driver or node that stopped
heartbeating) and the node agent (a worker that exited) all call these, so a fix lands
once and every way of ending gives the same result. The retry decision and
dead-lettering are in failure.py."""

from __future__ import annotations

from collections.abc import Iterable

from taskmesh._core import failure
from taskmesh._core.placement import end_job_groups
from taskmesh.objects.plane import ObjectPlane
from taskmesh.store import Store


def end_job(store: Store, job_id: str, cause: str) -> None:
    """The job ended: its actors die with it and its placement groups are removed,
    except detached ones (as Ray). Idempotent."""
    failure.end_job_actors(store, job_id, cause)
    end_job_groups(store, job_id)


def release_process_holds(store: Store, tags: Iterable[str], node_id: str | None = None) -> None:
    """Processes are gone: the refs they borrowed and their own objects' owner holds are
    released (objects others still hold live on); with `node_id`, they are also dropped
    from the node's process set. Idempotent."""
    plane = ObjectPlane(store, None)
    for tag in tags:
        plane.release(store.process_holds(tag))
        if node_id is not None:
            store.remove_node_process(node_id, tag)
