"""`JobSubmissionClient`: Ray's job submission API over the cluster's Redis.

A job is recorded in Redis (`tm:submission:{id}`, see store/keys.py) and run by a
supervisor, a detached actor created with the job's runtime_env and resources
(supervisor.py). Every reader (this client, `taskmesh job ...`, the dashboard) reads
the record from Redis, so any machine that reaches the cluster sees and follows it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis

from taskmesh import runtime_env as _renv
from taskmesh import security
from taskmesh._base import config
from taskmesh._core import context
from taskmesh.exceptions import StoreUnavailableError
from taskmesh.job_submission.models import (
    ACTIVE,
    JobDetails,
    JobNotFoundError,
    JobStatus,
    check_submission_id,
    details,
    new_submission_id,
    resolve,
    row,
)
from taskmesh.store import Store, connection
from taskmesh.workers import launch

FOLLOW_BLOCK_MS = 500  # one blocking read of a followed job's output


def list_submitted_jobs(store: Store) -> list[dict[str, Any]]:
    """Every submitted job, oldest first, as a dict per job (for the dashboard; reads
    only, so a readonly ACL user may call it). Fields:

    submission_id, job_id (the taskmesh job of its driver, once its entrypoint called
    `init()`; else None), status (PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED; a job
    whose supervisor died reads FAILED), entrypoint (the shell command), message,
    error_type, start_time and end_time (Unix ms; None until known), metadata (dict),
    runtime_env (dict, packages as `taskmesh-pkg://` URIs), entrypoint_num_cpus,
    entrypoint_num_gpus, entrypoint_memory, entrypoint_resources, driver_node_id and
    driver_pid (where the entrypoint runs), driver_exit_code (once it ended), actor_id
    (its supervisor actor)."""
    return [row(resolve(record, _supervisor(store, record))) for record in store.submissions()]


def _supervisor(store: Store, record: dict[str, str]) -> dict[str, str] | None:
    """The supervisor's actor hash, for a job that is not over (only then it matters)."""
    if record.get("status") in ACTIVE and record.get("actor_id"):
        return store.actor_info(record["actor_id"])
    return None


class JobLogTail:
    """The output of a job as it comes, in chunks of lines, until the job ends: an
    iterator (`for chunk in client.tail_job_logs(id)`) and an async iterator (`async for`,
    as Ray's `tail_job_logs`, reading in a thread)."""

    def __init__(self, chunks: Iterator[str]):
        self._chunks = chunks

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def __next__(self) -> str:
        return next(self._chunks)

    async def __aiter__(self) -> AsyncIterator[str]:
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, self._chunks, done)
            if chunk is done:
                return
            yield str(chunk)


class JobSubmissionClient:
    """Submit jobs to a cluster and follow them (Ray's `JobSubmissionClient`).

    `address`: the cluster's Redis address (as `init()` takes it); default
    $TASKMESH_ADDRESS, else the cluster running on this machine. The password comes as
    for `init()` (the address, $TASKMESH_REDIS_PASSWORD)."""

    def __init__(self, address: str | None = None, *, _store: Store | None = None):
        if _store is not None:
            self._store = _store
            return
        url = address if address not in (None, "auto") else (
            config.ADDRESS.get() or launch.current_cluster_address(include_local=True))
        if not url:
            raise ConnectionError("No taskmesh cluster to submit jobs to: pass its address, set "
                                  f"${config.ADDRESS.name}, or start one with 'taskmesh start --head'.")
        url = connection.canonicalize_address(url)
        store = Store(url)
        try:
            security.check_reachable(store)
        except StoreUnavailableError as e:
            store.close()
            raise ConnectionError(connection.failure_message(url, e)) from None
        self._store = store

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> JobSubmissionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- submitting -------------------------------------------------------------------

    def submit_job(self, *, entrypoint: str, job_id: str | None = None,
                   runtime_env: dict[str, Any] | None = None, metadata: dict[str, str] | None = None,
                   submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
                   entrypoint_num_gpus: float | None = None, entrypoint_memory: int | None = None,
                   entrypoint_resources: dict[str, float] | None = None) -> str:
        """Run `entrypoint` (a shell command) on a node of the cluster and return the
        job's submission id. `runtime_env`: the job's (a local `working_dir` is uploaded;
        the entrypoint runs in it, and its `init()` takes the job's runtime_env for its
        tasks and actors). `entrypoint_num_cpus` (default 0), `_num_gpus`, `_memory`,
        `_resources`: what the entrypoint holds on its node. `job_id`: Ray's old name of
        `submission_id`. ValueError when the submission id is taken."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError(f"entrypoint must be a non-empty shell command, got {entrypoint!r}")
        if metadata is not None and not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise TypeError(f"metadata must be a dict of str to str, got {metadata!r}")
        sid = check_submission_id(submission_id or job_id or new_submission_id())
        packaged = _renv.resolve(None, runtime_env, self._store)  # checked, packages uploaded
        resources = {"num_cpus": entrypoint_num_cpus or 0, "num_gpus": entrypoint_num_gpus,
                     "memory": entrypoint_memory, "resources": entrypoint_resources}
        fields = {"submission_id": sid, "entrypoint": entrypoint, "status": JobStatus.PENDING.value,
                  "start_time": str(int(time.time() * 1000)), "metadata": json.dumps(metadata or {}),
                  "message": "Job is waiting for its supervisor to start."}
        if packaged:
            fields["runtime_env"] = json.dumps(packaged)
        for name, value in (("entrypoint_num_cpus", entrypoint_num_cpus),
                            ("entrypoint_num_gpus", entrypoint_num_gpus),
                            ("entrypoint_memory", entrypoint_memory)):
            if value is not None:
                fields[name] = str(value)
        if entrypoint_resources:
            fields["entrypoint_resources"] = json.dumps(entrypoint_resources)
        if not self._store.new_submission(sid, fields, int(fields["start_time"])):
            raise ValueError(f"Job with submission_id {sid} already exists. Please use a "
                             "different submission_id.")
        try:
            actor_id = self._start_supervisor(sid, entrypoint, packaged, resources)
        except Exception as e:
            self._store.move_submission(sid, ACTIVE, JobStatus.FAILED.value, {
                "end_time": str(int(time.time() * 1000)),
                "message": f"Job supervisor could not be created: {e}"})
            raise
        self._store.move_submission(sid, (*ACTIVE, *_TERMINAL), "", {"actor_id": actor_id})
        return sid

    def _start_supervisor(self, sid: str, entrypoint: str, packaged: dict[str, Any] | None,
                          resources: dict[str, Any]) -> str:
        from taskmesh import api
        from taskmesh.job_submission.supervisor import JobSupervisor

        with self._runtime():
            options = {k: v for k, v in resources.items() if v is not None}
            supervisor = api.remote(JobSupervisor).options(
                lifetime="detached", max_restarts=0, runtime_env=packaged, **options)
            handle = supervisor.remote(sid, entrypoint)
            handle.run.remote()
            return str(handle._actor_id)

    @contextlib.contextmanager
    def _runtime(self) -> Iterator[None]:
        """This process's connection to the cluster, made for the call when there is
        none (creating the supervisor needs a runtime)."""
        from taskmesh import api

        current = context.current()
        if current is not None:
            if current.store.url != self._store.url:
                raise ValueError(f"This process is connected to the cluster at "
                                 f"{connection.mask_password(current.store.url)}: submit jobs "
                                 "there, or from a process not connected to another cluster.")
            yield
            return
        api.init(address=self._store.url, log_to_driver=False)
        try:
            yield
        finally:
            api.shutdown()

    # ---- reading ----------------------------------------------------------------------

    def _record(self, submission_id: str) -> dict[str, str]:
        record = self._store.submission(submission_id) if isinstance(submission_id, str) else None
        if record is None or not record.get("status"):
            raise JobNotFoundError(str(submission_id))
        resolved = resolve(record, _supervisor(self._store, record))
        if resolved["status"] != record["status"]:  # its supervisor died: record it
            with contextlib.suppress(redis.ResponseError):  # a readonly user only reads
                self._store.move_submission(submission_id, ACTIVE, resolved["status"], {
                    "end_time": str(int(time.time() * 1000)), "message": resolved["message"],
                    "error_type": resolved["error_type"]})
        return resolved

    def get_job_info(self, job_id: str) -> JobDetails:
        """The job's record; JobNotFoundError (a RuntimeError) for an unknown id."""
        return details(row(self._record(job_id)))

    def get_job_status(self, job_id: str) -> JobStatus:
        return JobStatus(self._record(job_id)["status"])

    def list_jobs(self) -> list[JobDetails]:
        """Every submitted job, oldest first."""
        return [details(r) for r in list_submitted_jobs(self._store)]

    def get_job_logs(self, job_id: str) -> str:
        """The output of the job's entrypoint so far (stdout and stderr, as one text)."""
        self._record(job_id)
        _, lines = self._store.submission_output(job_id)
        return "".join(line + "\n" for line in lines)

    def tail_job_logs(self, job_id: str) -> JobLogTail:
        """The job's output as it comes, until the job ends (the output so far first):
        iterate it (`for`), or `async for` as in Ray."""
        self._record(job_id)
        return JobLogTail(self._follow(job_id))

    def _follow(self, job_id: str) -> Iterator[str]:
        after = "0-0"
        while True:
            after, lines = self._store.submission_output(job_id, after, block_ms=FOLLOW_BLOCK_MS)
            if lines:
                yield "".join(line + "\n" for line in lines)
                continue
            if JobStatus(self._record(job_id)["status"]).is_terminal():
                # Its supervisor sends the last output before it records the end.
                after, lines = self._store.submission_output(job_id, after)
                if lines:
                    yield "".join(line + "\n" for line in lines)
                return

    # ---- stopping and deleting ----------------------------------------------------------

    def stop_job(self, job_id: str) -> bool:
        """Ask the job to stop: its entrypoint's processes get SIGTERM, then SIGKILL
        after a grace period, and its drivers' tasks and actors end. True when the job
        was pending or running, False when it had already ended."""
        moved, found = self._store.move_submission(job_id, ["PENDING"], JobStatus.STOPPED.value, {
            "end_time": str(int(time.time() * 1000)), "message": "Job was stopped before it started."})
        if not found:
            raise JobNotFoundError(job_id)
        if moved:
            return True
        moved, _ = self._store.move_submission(job_id, ["RUNNING"], "", {"stop_requested": "1"})
        return moved

    def delete_job(self, job_id: str) -> bool:
        """Delete an ended job's record and output; ValueError for one not ended."""
        status = JobStatus(self._record(job_id)["status"])
        if not status.is_terminal():
            raise ValueError(f"Attempted to delete job with submission_id {job_id}, but it is in the "
                             f"non-terminal state {status.value}. Stop it first.")
        self._store.delete_submission(job_id)
        return True


_TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())
