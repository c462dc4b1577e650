"""The supervisor of a submitted job: a detached actor (created by the submitting
client with the job's runtime_env, so its process already sits in the unpacked working
dir with the job's variables set) that runs the entrypoint as a shell command, sends
its output to Redis, and records how it ended.

The entrypoint runs in its own session (process group), so `stop` reaches everything it
started: SIGTERM, then SIGKILL after STOP_GRACE_S. Its environment carries the cluster's
address and the submission id ($TASKMESH_ADDRESS, $TASKMESH_SUBMISSION_ID: never a
command line), so its `init()` joins this cluster with the job's runtime_env and records
its driver; when the entrypoint exits, any driver of it that did not shut down (killed,
SIGTERM'd) is settled as the failure monitor settles a dead driver, at once: its tasks
are dropped or killed and its actors end."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from typing import IO

from taskmesh._base import config
from taskmesh._core import lifecycle
from taskmesh._core.context import get_runtime
from taskmesh.actors import exit_actor
from taskmesh.job_submission.models import ACTIVE, ENTRYPOINT_FAILED, JobStatus
from taskmesh.store import Store
from taskmesh.workers import process as _process

log = logging.getLogger("taskmesh.job_submission")

STOP_GRACE_S = 3.0        # between SIGTERM and SIGKILL of a stopped job (as Ray's default)
POLL_S = 0.1              # how often output is flushed and the entrypoint checked
STOP_CHECK_S = 0.25       # how often the stop request is read
LINES_PER_ENTRY = 500     # output lines in one stream entry at most
LAST_LINES = 20           # lines of output quoted in a failed job's message


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Output:
    """Lines read from the entrypoint's stdout+stderr by a thread, taken in batches."""

    def __init__(self, pipe: IO[bytes]):
        self._pipe = pipe
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self.last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.thread = threading.Thread(target=self._read, name="job-output", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for raw in iter(self._pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._lock:
                self._lines.append(line)
                self.last.append(line)

    def take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


class JobSupervisor:
    """Runs one submitted job's entrypoint (made a detached actor by the client)."""

    def __init__(self, submission_id: str, entrypoint: str):
        self.submission_id = submission_id
        self.entrypoint = entrypoint

    def run(self) -> None:
        """Run the entrypoint to its end, then leave (the actor exits: no restart)."""
        runtime = get_runtime()
        store = runtime.store
        try:
            self._run(store, runtime.node_id)
        except Exception as e:  # its own failure, not the entrypoint's: the job cannot go on
            log.exception("the supervisor of job %s failed", self.submission_id)
            with contextlib.suppress(Exception):
                store.move_submission(self.submission_id, ACTIVE, JobStatus.FAILED.value, {
                    "end_time": str(_now_ms()), "message": f"Job supervisor failed: {e!r}"})
        exit_actor()

    def _run(self, store: Store, node_id: str | None) -> None:
        sid = self.submission_id
        started, _ = store.move_submission(sid, ["PENDING"], JobStatus.RUNNING.value,
                                           {"driver_node_id": node_id or ""})
        if not started:  # stopped (or deleted) before it could start
            return
        env = {k: v for k, v in os.environ.items() if k != config.NODE_ID.name}
        env.update({config.ADDRESS.name: store.url, config.SUBMISSION_ID.name: sid,
                    "PYTHONUNBUFFERED": "1"})
        try:
            # Started by this thread, which lives as long as the entrypoint: the kernel's
            # parent-death signal follows the thread that forked.
            proc = subprocess.Popen(
                self.entrypoint, shell=True, cwd=os.getcwd(), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_process.set_pdeathsig)
        except OSError as e:
            store.move_submission(sid, ACTIVE, JobStatus.FAILED.value, {
                "end_time": str(_now_ms()), "error_type": ENTRYPOINT_FAILED,
                "message": f"Job entrypoint could not be started: {e}"})
            return
        assert proc.stdout is not None
        store.move_submission(sid, ACTIVE, "", {"driver_pid": str(proc.pid)})
        output = _Output(proc.stdout)
        stopped = self._watch(store, proc, output)
        output.thread.join(timeout=1.0)  # what a lingering child still holds open is not waited for
        self._flush(store, output)
        self._settle_drivers(store, "its job was stopped" if stopped else "its job's entrypoint exited")
        self._record_end(store, proc.returncode, stopped, list(output.last))

    def _watch(self, store: Store, proc: subprocess.Popen, output: _Output) -> bool:
        """Wait for the entrypoint's end, sending its output meanwhile and stopping it
        when asked. Returns whether it was stopped."""
        stop_at: float | None = None
        next_check = 0.0
        while proc.poll() is None:
            self._flush(store, output)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + STOP_CHECK_S
                if stop_at is None and store.submission_field(self.submission_id, "stop_requested"):
                    log.info("stopping job %s", self.submission_id)
                    self._signal(proc, signal.SIGTERM)
                    stop_at = now + STOP_GRACE_S
            if stop_at is not None and now >= stop_at:
                self._signal(proc, signal.SIGKILL)
                stop_at = float("inf")
            time.sleep(POLL_S)
        if stop_at is not None:  # what the entrypoint started goes with it
            self._signal(proc, signal.SIGKILL)
        return stop_at is not None

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # its own session: the group id is its pid

    def _flush(self, store: Store, output: _Output) -> None:
        lines = output.take()
        for i in range(0, len(lines), LINES_PER_ENTRY):
            store.add_submission_output(self.submission_id, lines[i:i + LINES_PER_ENTRY])

    def _settle_drivers(self, store: Store, cause: str) -> None:
        for tag, job_id in store.submission_drivers(self.submission_id):
            if store.driver_listed(tag, job_id):  # it did not shut down: killed, or stopped
                try:
                    lifecycle.settle_driver(store, tag, job_id, cause)
                except Exception as e:
                    log.warning("ending job %s of submission %s failed: %r", job_id, self.submission_id, e)

    def _record_end(self, store: Store, code: int, stopped: bool, last: list[str]) -> None:
        fields = {"end_time": str(_now_ms()), "driver_exit_code": str(code)}
        if stopped:
            status, fields["message"] = JobStatus.STOPPED, "Job was intentionally stopped."
        elif code == 0:
            status, fields["message"] = JobStatus.SUCCEEDED, "Job finished successfully."
        else:
            status = JobStatus.FAILED
            fields["error_type"] = ENTRYPOINT_FAILED
            fields["message"] = (f"Job entrypoint command failed with exit code {code}, last "
                                 f"available logs (truncated to {LAST_LINES} lines):\n" + "\n".join(last))
        store.move_submission(self.submission_id, ACTIVE, status.value, fields)
