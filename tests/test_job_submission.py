"""Job submission, Ray's shape: a driver submitted with its working dir runs on a node
under a supervisor actor; its status, output and stop go through Redis, from the API
(`JobSubmissionClient`) and the CLI (`taskmesh job ...`)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from conftest import TestCluster, wait_until
from taskmesh.cli import main
from taskmesh.job_submission import JobNotFoundError, JobStatus, JobSubmissionClient, list_submitted_jobs
from taskmesh.job_submission.models import resolve
from taskmesh.store import Store

PY = sys.executable


@pytest.fixture
def client(shared_cluster: TestCluster) -> JobSubmissionClient:
    with JobSubmissionClient(shared_cluster.url) as c:
        yield c


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def _wait_status(client: JobSubmissionClient, sid: str, *wanted: JobStatus,
                 timeout_s: float = 20) -> JobStatus:
    return wait_until(lambda: (s := client.get_job_status(sid)) in wanted and s, timeout_s,
                      f"job {sid} to reach {wanted}")


# ---- without processes ----------------------------------------------------------------

def test_a_live_job_whose_supervisor_died_reads_failed() -> None:
    record = {"submission_id": "a", "status": "RUNNING", "actor_id": "x"}
    assert resolve(record, {"state": "ALIVE"})["status"] == "RUNNING"
    dead = resolve(record, {"state": "DEAD", "death_cause": "its node died"})
    assert dead["status"] == "FAILED" and "its node died" in dead["message"]
    assert resolve({**record, "status": "SUCCEEDED"}, {"state": "DEAD"})["status"] == "SUCCEEDED"


def test_a_status_moves_only_from_the_statuses_given(store: Store) -> None:
    assert store.new_submission("j1", {"submission_id": "j1", "status": "PENDING", "entrypoint": "true"}, 1)
    assert not store.new_submission("j1", {"submission_id": "j1", "status": "PENDING"}, 2)
    assert store.move_submission("j1", ["PENDING"], "STOPPED") == (True, "PENDING")
    assert store.move_submission("j1", ["PENDING"], "RUNNING") == (False, "STOPPED")  # too late to start
    assert store.move_submission("nope", ["PENDING"], "RUNNING") == (False, "")
    assert [r["submission_id"] for r in store.submissions()] == ["j1"]
    assert list_submitted_jobs(store)[0]["status"] == "STOPPED"
    store.delete_submission("j1")
    assert store.submissions() == [] and store.submission("j1") is None


# ---- on a cluster -----------------------------------------------------------------------

@pytest.mark.cluster
def test_a_job_runs_its_script_from_its_working_dir(client: JobSubmissionClient, tmp_path: Path) -> None:
    work = _write(tmp_path / "work", {
        "helper.py": """
            def square(x):
                return x * x
        """,
        "script.py": """
            import sys
            import taskmesh
            import helper  # from the working dir, here and in the tasks

            @taskmesh.remote
            def sq(x):
                return helper.square(x)

            taskmesh.init()
            print("squares", taskmesh.get([sq.remote(i) for i in range(4)]))
            print("args", sys.argv[1:], file=sys.stderr)
        """,
    })
    sid = client.submit_job(entrypoint=f"{PY} script.py one two", runtime_env={"working_dir": str(work)},
                            metadata={"owner": "tests"}, submission_id="job-workdir")
    assert _wait_status(client, sid, JobStatus.SUCCEEDED, JobStatus.FAILED) == JobStatus.SUCCEEDED, \
        client.get_job_logs(sid)
    logs = client.get_job_logs(sid)
    assert "squares [0, 1, 4, 9]" in logs and "args ['one', 'two']" in logs
    info = client.get_job_info(sid)
    assert info.driver_exit_code == 0 and info.metadata == {"owner": "tests"}
    assert info.job_id and info.start_time and info.end_time and info.submission_id == sid
    assert info.runtime_env and info.runtime_env["working_dir"].startswith("taskmesh-pkg://")
    assert sid in [j.submission_id for j in client.list_jobs()]

    async def tail() -> str:  # Ray's way: an async iterator
        return "".join([chunk async for chunk in client.tail_job_logs(sid)])
    assert asyncio.run(tail()) == logs
    with pytest.raises(ValueError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id=sid)
    assert client.delete_job(sid)
    with pytest.raises(JobNotFoundError):
        client.get_job_status(sid)


@pytest.mark.cluster
def test_a_failing_entrypoint_fails_the_job_and_the_submit_command(client: JobSubmissionClient) -> None:
    result = CliRunner().invoke(main, [
        "job", "submit", "--address", client._store.url, "--submission-id", "job-fails", "--",
        PY, "-c", "import sys; print('going down'); sys.exit(3)"])
    assert result.exit_code == 1, result.output
    assert "going down" in result.output and "Job 'job-fails' failed" in result.output
    info = client.get_job_info("job-fails")
    assert info.status == JobStatus.FAILED and info.driver_exit_code == 3
    assert "exit code 3" in (info.message or "") and "going down" in (info.message or "")


@pytest.mark.cluster
def test_logs_follow_prints_the_output_until_the_job_ends(client: JobSubmissionClient,
                                                         tmp_path: Path) -> None:
    work = _write(tmp_path / "slow", {"slow.py": """
        import time
        for i in range(4):
            print("line", i)
            time.sleep(0.3)
    """})
    submitted = CliRunner().invoke(main, ["job", "submit", "--no-wait", "--address", client._store.url,
                                          "--working-dir", str(work), "--", PY, "slow.py"])
    assert submitted.exit_code == 0, submitted.output
    sid = re.search(r"Job '(\S+)' submitted successfully", submitted.output).group(1)
    listed = CliRunner().invoke(main, ["job", "list", "--address", client._store.url])
    assert sid in listed.output
    result = CliRunner().invoke(main, ["job", "logs", "--follow", "--address", client._store.url, sid])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("line")] == \
        [f"line {i}" for i in range(4)]
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED
    status = CliRunner().invoke(main, ["job", "status", "--address", client._store.url, sid])
    assert f"Status for job '{sid}': SUCCEEDED" in status.output


@pytest.mark.cluster
def test_stop_ends_the_jobs_tasks_and_actors(client: JobSubmissionClient, tmp_path: Path) -> None:
    pid_file = tmp_path / "task.pid"
    work = _write(tmp_path / "long", {"long.py": """
        import os, sys, time
        import taskmesh

        @taskmesh.remote(num_cpus=0)
        class Keeper:
            def ready(self):
                return True

        @taskmesh.remote
        def long(path):
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(120)

        taskmesh.init()
        keeper = Keeper.remote()
        taskmesh.get(keeper.ready.remote())
        ref = long.remote(sys.argv[1])
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
        print("actor", keeper._actor_id, flush=True)
        time.sleep(600)
    """})
    sid = client.submit_job(entrypoint=f"{PY} long.py {pid_file}", runtime_env={"working_dir": str(work)})
    logs = wait_until(lambda: "actor " in (text := client.get_job_logs(sid)) and text, 20, "the job to start")
    actor_id = re.search(r"actor (\S+)", logs).group(1)
    task_pid = int(pid_file.read_text())
    store = client._store
    job_id = client.get_job_info(sid).job_id
    assert job_id and store.actor_info(actor_id)["state"] == "ALIVE"

    result = CliRunner().invoke(main, ["job", "stop", "--address", store.url, sid])
    assert result.exit_code == 0, result.output
    assert "has exited: STOPPED" in result.output
    assert client.get_job_info(sid).message == "Job was intentionally stopped."
    assert store.job_ended(job_id)
    wait_until(lambda: store.actor_info(actor_id).get("state") == "DEAD", 10, "the job's actor to die")
    wait_until(lambda: not _running(task_pid), 10, "the job's task to be killed")
    assert not client.stop_job(sid)  # already over


@pytest.mark.cluster
def test_a_job_whose_supervisor_dies_is_failed(client: JobSubmissionClient) -> None:
    sid = client.submit_job(entrypoint=f"{PY} -c 'import time; time.sleep(120)'")
    _wait_status(client, sid, JobStatus.RUNNING)
    info = wait_until(lambda: (i := client.get_job_info(sid)).driver_pid and i, 10, "the entrypoint")
    actor = wait_until(lambda: (a := client._store.actor_info(
        client._store.submission(sid)["actor_id"])).get("pid") and a, 10, "the supervisor's pid")
    os.kill(int(actor["pid"]), signal.SIGKILL)
    assert _wait_status(client, sid, JobStatus.FAILED) == JobStatus.FAILED
    assert "supervisor" in (client.get_job_info(sid).message or "")
    wait_until(lambda: not _running(info.driver_pid), 10, "the entrypoint to die with its supervisor")


@pytest.mark.cluster
def test_an_unknown_job_is_one_clear_line(client: JobSubmissionClient) -> None:
    with pytest.raises(JobNotFoundError, match="Job 'no-such-job' does not exist"):
        client.get_job_status("no-such-job")
    for args in (["status", "no-such-job"], ["logs", "no-such-job"], ["stop", "no-such-job"]):
        result = CliRunner().invoke(main, ["job", *args, "--address", client._store.url])
        assert result.exit_code == 1
        assert result.output == "Error: Job 'no-such-job' does not exist.\n"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
