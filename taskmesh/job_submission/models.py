"""What a submitted job is, in Ray's names (`ray.job_submission.JobStatus`, `JobInfo`,
`JobDetails`), and the pure reading of its record: the hash `tm:submission:{id}` as a
row, with the status a dead supervisor implies."""

from __future__ import annotations

import enum
import json
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# A submission id names Redis keys and travels in the environment: no spaces, no colons.
SUBMISSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
SUPERVISOR_DIED = "JOB_SUPERVISOR_ACTOR_DIED"
ENTRYPOINT_FAILED = "JOB_ENTRYPOINT_COMMAND_ERROR"


class JobStatus(str, enum.Enum):
    """The status of a submitted job (Ray's)."""

    PENDING = "PENDING"      # submitted; its supervisor is not running it yet
    RUNNING = "RUNNING"      # its entrypoint runs
    STOPPED = "STOPPED"      # stopped by `stop_job` (or `taskmesh job stop`)
    SUCCEEDED = "SUCCEEDED"  # its entrypoint exited with 0
    FAILED = "FAILED"        # its entrypoint exited otherwise, or could not run, or its supervisor died

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        """Whether the job's status can change no more."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


ACTIVE = (JobStatus.PENDING.value, JobStatus.RUNNING.value)


class JobType(str, enum.Enum):
    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


class JobNotFoundError(RuntimeError):
    """No submitted job has this submission id."""

    def __init__(self, submission_id: str):
        super().__init__(f"Job '{submission_id}' does not exist.")
        self.submission_id = submission_id


@dataclass(frozen=True)
class JobInfo:
    """A submitted job's record (Ray's `JobInfo`); times are Unix ms."""

    status: JobStatus
    entrypoint: str
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None


@dataclass(frozen=True)
class JobDetails(JobInfo):
    """A submitted job as `JobSubmissionClient.get_job_info` and `list_jobs` return it
    (Ray's `JobDetails`): its record plus its ids. `job_id` is the taskmesh job of its
    driver (once the entrypoint called `init()`)."""

    type: JobType = JobType.SUBMISSION
    job_id: str | None = None
    submission_id: str | None = None
    driver_info: dict[str, str] | None = None
    driver_pid: int | None = None

    def dict(self) -> dict[str, Any]:  # pydantic's name, which Ray's JobDetails has
        return asdict(self)


def new_submission_id() -> str:
    """A fresh id in Ray's shape (`raysubmit_` + 16 letters and digits)."""
    return "tmsubmit_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))


def check_submission_id(submission_id: Any) -> str:
    if not isinstance(submission_id, str) or not SUBMISSION_ID_RE.fullmatch(submission_id):
        raise ValueError(f"submission_id must be 1-128 letters, digits, '_', '.' or '-' (starting "
                         f"with a letter or digit), got {submission_id!r}")
    return submission_id


def resolve(record: Mapping[str, str], actor: Mapping[str, str] | None) -> dict[str, str]:
    """The record with the status a dead supervisor implies: a job still PENDING or
    RUNNING whose supervisor actor is DEAD will never end otherwise, so it reads as
    FAILED, with the actor's death cause as its message. `actor`: the supervisor's
    actor hash (None when not looked up)."""
    row = dict(record)
    if row.get("status") in ACTIVE and actor and actor.get("state") == "DEAD":
        cause = actor.get("death_cause") or "it died"
        row.update(status=JobStatus.FAILED.value, error_type=SUPERVISOR_DIED,
                   message=f"Job supervisor actor died: {cause}")
    return row


def row(record: Mapping[str, str]) -> dict[str, Any]:
    """A job's hash as a row of typed values (the fields `list_submitted_jobs` documents)."""
    def number(name: str, kind: type = int) -> Any:
        value = record.get(name)
        try:
            return kind(value) if value not in (None, "") else None
        except ValueError:
            return None

    def decoded(name: str) -> Any:
        value = record.get(name)
        try:
            return json.loads(value) if value else None
        except ValueError:
            return None

    return {
        "submission_id": record.get("submission_id"),
        "job_id": record.get("job_id") or None,
        "status": record.get("status"),
        "entrypoint": record.get("entrypoint", ""),
        "message": record.get("message") or None,
        "error_type": record.get("error_type") or None,
        "start_time": number("start_time"),
        "end_time": number("end_time"),
        "metadata": decoded("metadata") or {},
        "runtime_env": decoded("runtime_env"),
        "entrypoint_num_cpus": number("entrypoint_num_cpus", float),
        "entrypoint_num_gpus": number("entrypoint_num_gpus", float),
        "entrypoint_memory": number("entrypoint_memory"),
        "entrypoint_resources": decoded("entrypoint_resources"),
        "driver_node_id": record.get("driver_node_id") or None,
        "driver_pid": number("driver_pid"),
        "driver_exit_code": number("driver_exit_code"),
        "actor_id": record.get("actor_id") or None,
    }


def details(values: Mapping[str, Any]) -> JobDetails:
    """A row (see `row`) as JobDetails."""
    fields = {k: v for k, v in values.items() if k != "actor_id"}
    return JobDetails(**{**fields, "status": JobStatus(fields["status"])})
