"""`taskmesh stack`: the Python stacks of this machine's agents and workers."""

from __future__ import annotations

import subprocess

from click.testing import CliRunner

import taskmesh
from conftest import wait_until
from taskmesh.cli import main as cli
from taskmesh.cli.commands import _is_taskmesh_process


def test_stack_shows_what_a_running_task_is_doing(cluster_factory, tmp_path) -> None:
    with cluster_factory(nodes=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            started = tmp_path / "started"

            @taskmesh.remote
            def stuck_in_a_marked_function(path):
                import time

                open(path, "w").close()
                time.sleep(60)

            ref = stuck_in_a_marked_function.remote(str(started))
            wait_until(started.exists, 30, "the task to start")
            result = CliRunner().invoke(cli, ["stack"])
            assert result.exit_code == 0, result.output
            assert "stuck_in_a_marked_function" in result.output
            node = next(iter(cluster.agents))
            agent_pid = cluster.agents[node].pid
            assert f"==== pid {agent_pid}:" in result.output and "_io_loop" in result.output
            one = CliRunner().invoke(cli, ["stack", "--pid", str(agent_pid)])
            assert one.exit_code == 0 and "stuck_in_a_marked_function" not in one.output
            taskmesh.cancel(ref, force=True)
        finally:
            taskmesh.shutdown()


def test_stack_of_a_process_that_is_not_ours() -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        result = CliRunner().invoke(cli, ["stack", "--pid", str(other.pid)])
    finally:
        other.kill()
        other.wait()
    assert result.exit_code == 2 and f"{other.pid} is not a taskmesh node agent or worker" in result.output
    assert _is_taskmesh_process(["/venv/bin/taskmesh", "worker", "--address", "x"])
    assert _is_taskmesh_process(["python", "-m", "taskmesh.workers.worker_main", "--fd", "3"])
    assert not _is_taskmesh_process(["python", "-m", "taskmesh.cli", "status"])
