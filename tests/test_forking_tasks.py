"""A task that forks cannot wedge its node. A forked child that returns from the task
instead of exiting ends in the worker's code, and it never holds the worker's socket
to its agent; a child forked below Python (where the worker's fork hook does not run)
may hold it, and the agent then learns the worker ended from its process."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskmesh
from conftest import wait_until
from taskmesh.exceptions import WorkerCrashedError


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def one_cpu_node(cluster_factory: Any) -> Any:
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            yield cluster
        finally:
            taskmesh.shutdown()


@taskmesh.remote
def one() -> int:
    return 1


def test_a_forked_child_that_returns_does_not_wedge_the_node(one_cpu_node: Any) -> None:
    @taskmesh.remote(max_retries=0)
    def forks() -> int:
        return os.fork()  # the child returns 0 into the worker's code

    child = taskmesh.get(forks.remote(), timeout=30)
    try:
        assert child > 0  # the parent's result
        # The child ended where it came back, rather than living on as a second worker
        # on the same socket (sending results, leasing under the parent's grant).
        wait_until(lambda: _ended(child), what="the forked child's end")
        assert taskmesh.get(one.remote(), timeout=20) == 1  # the node's one CPU came back
        assert taskmesh.get([one.remote() for _ in range(3)], timeout=20) == [1, 1, 1]
    finally:
        _kill(child)


def test_a_forked_child_that_lingers_does_not_hide_its_worker_s_end(
        one_cpu_node: Any, tmp_path: Path) -> None:
    """The worker dies while its child sleeps: the child's copy of the socket was
    replaced at the fork, so the agent sees EOF and the task fails as a crash."""
    pid_file = tmp_path / "child"

    @taskmesh.remote(max_retries=0)
    def forks_and_dies(path: str) -> None:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        Path(path).write_text(str(pid))
        os._exit(1)

    ref = forks_and_dies.remote(str(pid_file))
    try:
        with pytest.raises(WorkerCrashedError):
            taskmesh.get(ref, timeout=20)
        assert taskmesh.get(one.remote(), timeout=20) == 1
    finally:
        if pid_file.exists():
            _kill(int(pid_file.read_text()))


def test_a_child_forked_below_python_does_not_hide_its_worker_s_end(
        one_cpu_node: Any, tmp_path: Path) -> None:
    """libc's fork skips the worker's fork hook: the child keeps the socket open, so no
    EOF comes when the worker dies; the agent sees the process end instead."""
    pid_file = tmp_path / "child"

    @taskmesh.remote(max_retries=0)
    def forks_in_c(path: str) -> None:
        import ctypes

        libc = ctypes.CDLL(None)
        pid = libc.fork()
        if pid == 0:
            while True:
                libc.pause()
        Path(path).write_text(str(pid))
        os._exit(1)

    ref = forks_in_c.remote(str(pid_file))
    try:
        with pytest.raises(WorkerCrashedError):
            taskmesh.get(ref, timeout=20)
        assert taskmesh.get(one.remote(), timeout=20) == 1
    finally:
        if pid_file.exists():
            _kill(int(pid_file.read_text()))
