"""Ray's job submission (`ray.job_submission`): a job's driver, an entrypoint shell
command, runs on a node of the cluster under a supervisor actor, with its working dir
uploaded as a runtime_env package; its record, status and output live in Redis, so
`taskmesh job ...` and `JobSubmissionClient` follow and stop it from any machine."""

from taskmesh.job_submission.models import (
    JobDetails,
    JobInfo,
    JobNotFoundError,
    JobStatus,
    JobType,
)
from taskmesh.job_submission.sdk import JobLogTail, JobSubmissionClient, list_submitted_jobs

__all__ = ["JobDetails", "JobInfo", "JobLogTail", "JobNotFoundError", "JobStatus", "JobSubmissionClient",
           "JobType", "list_submitted_jobs"]
