"""`taskmesh job submit|status|logs|stop|list|delete`: Ray's `ray job` commands over
taskmesh.job_submission. They parse and print; the client does the work."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from taskmesh.cli.commands import _address_option, _connect, _json_object, _parse_resources, _print_table


def _errors(fn: Callable) -> Callable:
    """An unknown job, or a request the job's state refuses, as one line."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from taskmesh.job_submission import JobNotFoundError

        try:
            return fn(*args, **kwargs)
        except (JobNotFoundError, ValueError, TypeError, NotImplementedError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


class _Client:
    """A JobSubmissionClient on `_connect`'s store (its one-line errors), closed after."""

    def __init__(self, address: str | None):
        self.address = address

    def __enter__(self) -> Any:
        from taskmesh.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(_store=_connect(self.address))
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()


@click.group()
def job() -> None:
    """Run a driver on the cluster and follow it (Ray's `ray job`)."""


@job.command(context_settings={"ignore_unknown_options": True})
@_address_option(required=False)
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local directory uploaded to the cluster; the entrypoint runs in it.")
@click.option("--runtime-env-json", callback=_json_object, default=None,
              help='The job\'s runtime_env as JSON, e.g. \'{"env_vars": {"A": "1"}}\'.')
@click.option("--metadata-json", callback=_json_object, default=None,
              help="Metadata of the job (a JSON object of strings).")
@click.option("--submission-id", default=None, help="The job's id (default: a new one).")
@click.option("--entrypoint-num-cpus", type=click.FloatRange(min=0), default=None,
              help="CPUs the entrypoint holds on its node (default 0).")
@click.option("--entrypoint-num-gpus", type=click.FloatRange(min=0), default=None,
              help="GPUs the entrypoint holds on its node.")
@click.option("--entrypoint-memory", type=click.IntRange(min=0), default=None,
              help="Bytes of memory the entrypoint reserves.")
@click.option("--entrypoint-resources", callback=_parse_resources, default=None,
              help='Custom resources the entrypoint holds, as JSON, e.g. \'{"disk": 1}\'.')
@click.option("--no-wait", is_flag=True, help="Return once submitted, without following the logs.")
@click.argument("entrypoint", nargs=-1, required=True, type=click.UNPROCESSED)
@_errors
def submit(address: str | None, working_dir: str | None, runtime_env_json: dict | None,
           metadata_json: dict | None, submission_id: str | None, entrypoint_num_cpus: float | None,
           entrypoint_num_gpus: float | None, entrypoint_memory: int | None,
           entrypoint_resources: dict | None, no_wait: bool, entrypoint: tuple[str, ...]) -> None:
    """Run ENTRYPOINT (after `--`: `-- python script.py args...`) on a node of the
    cluster, then follow its output until it ends; the exit status is 0 only when the
    job succeeded. One argument is taken as a whole shell command line; several are
    quoted for the shell."""
    command = entrypoint[0] if len(entrypoint) == 1 else shlex.join(entrypoint)
    runtime_env = dict(runtime_env_json or {})
    if working_dir is not None:
        runtime_env["working_dir"] = working_dir
    with _Client(address) as client:
        sid = client.submit_job(
            entrypoint=command, runtime_env=runtime_env or None, metadata=metadata_json,
            submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus, entrypoint_memory=entrypoint_memory,
            entrypoint_resources=entrypoint_resources)
        click.echo(f"Job '{sid}' submitted successfully")
        if no_wait:
            click.echo(f"  Query the logs of the job:   taskmesh job logs {sid}\n"
                       f"  Query the status of the job: taskmesh job status {sid}\n"
                       f"  Request the job to be stopped: taskmesh job stop {sid}")
            return
        click.echo("Tailing logs until the job exits (disable with --no-wait):")
        _echo_chunks(client.tail_job_logs(sid))
        info = client.get_job_info(sid)
    click.echo("-" * 40)
    if info.status.value == "SUCCEEDED":
        click.echo(f"Job '{sid}' succeeded")
        return
    click.echo(f"Job '{sid}' {info.status.value.lower()}"
               + (f": {info.message.splitlines()[0]}" if info.message else ""), err=True)
    raise SystemExit(1)


def _echo_chunks(chunks: Iterator[str]) -> None:
    for chunk in chunks:
        click.echo(chunk, nl=False)


@job.command()
@_address_option(required=False)
@click.argument("submission_id")
@_errors
def status(address: str | None, submission_id: str) -> None:
    """Print the status of a job."""
    with _Client(address) as client:
        info = client.get_job_info(submission_id)
    click.echo(f"Status for job '{submission_id}': {info.status.value}")
    if info.message:
        click.echo(f"Status message: {info.message}")


@job.command()
@_address_option(required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing the output until the job ends.")
@click.argument("submission_id")
@_errors
def logs(address: str | None, follow: bool, submission_id: str) -> None:
    """Print the output (stdout and stderr) of a job's entrypoint."""
    with _Client(address) as client:
        if follow:
            _echo_chunks(client.tail_job_logs(submission_id))
        else:
            click.echo(client.get_job_logs(submission_id), nl=False)


@job.command()
@_address_option(required=False)
@click.option("--no-wait", is_flag=True, help="Return once asked, without waiting for the job to end.")
@click.argument("submission_id")
@_errors
def stop(address: str | None, no_wait: bool, submission_id: str) -> None:
    """Stop a job: SIGTERM to its entrypoint's processes, SIGKILL after a grace period;
    its tasks and actors end."""
    with _Client(address) as client:
        stopping = client.stop_job(submission_id)
        click.echo(f"Attempting to stop job '{submission_id}'")
        if not stopping:
            click.echo(f"Job '{submission_id}' has already ended: "
                       f"{client.get_job_status(submission_id).value}")
            return
        if no_wait:
            return
        click.echo(f"Waiting for job '{submission_id}' to exit (disable with --no-wait):")
        while not (state := client.get_job_status(submission_id)).is_terminal():
            time.sleep(0.2)
    click.echo(f"Job '{submission_id}' has exited: {state.value}")


@job.command(name="list")
@_address_option(required=False)
@_errors
def list_(address: str | None) -> None:
    """List the submitted jobs, oldest first."""
    with _Client(address) as client:
        rows = [info.dict() for info in client.list_jobs()]
    for r in rows:
        r.update(status=r["status"].value, job_id=r["job_id"] or "-",
                 **{k: _when(r[k]) for k in ("start_time", "end_time")})
    _print_table(rows, ["submission_id", "status", "job_id", "entrypoint", "start_time", "end_time"], "jobs")


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


@job.command()
@_address_option(required=False)
@click.argument("submission_id")
@_errors
def delete(address: str | None, submission_id: str) -> None:
    """Delete an ended job's record and output."""
    with _Client(address) as client:
        client.delete_job(submission_id)
    click.echo(f"Job '{submission_id}' deleted successfully")
