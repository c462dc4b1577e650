"""`taskmesh start --head` never joins a cluster it did not start: a port another server
holds, or a temp dir where a recorded cluster still runs, fails with one line, and no
pid of a server that did not start is recorded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from taskmesh._base import config
from taskmesh.cli import main as cli
from taskmesh.workers import launch

PASSWORD = "another-users-password-0123"


@pytest.fixture
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of this test's own: pid and cluster files of the session's stay apart."""
    root = tmp_path / "temp"
    monkeypatch.setenv(config.ENV_TEMP_DIR, str(root))
    monkeypatch.delenv(config.REDIS_PASSWORD.name, raising=False)
    return config.temp_root()


@pytest.fixture
def other_server(tmp_path: Path) -> launch.RedisServer:
    server = launch.start_redis(data_dir=tmp_path / "other", password=PASSWORD)
    yield server
    server.stop()


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_a_busy_port_fails_with_one_line_naming_its_holder(own_temp_dir: Path,
                                                           other_server: launch.RedisServer) -> None:
    result = CliRunner().invoke(cli, ["start", "--head", "--port", str(other_server.port),
                                      "--num-cpus", "1"])
    assert result.exit_code == 1
    lines = _lines(result.output)
    assert len(lines) == 1, lines
    assert f"Port {other_server.port} on 127.0.0.1 is in use by pid {other_server.proc.pid}" in lines[0]
    assert not (own_temp_dir / "started_pids.json").exists()
    assert not (own_temp_dir / "current_cluster").exists()
    assert other_server.proc.poll() is None


def test_a_server_that_answers_is_the_one_just_started(tmp_path: Path, other_server: launch.RedisServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The port taken between the check and the bind, by a server with the same password:
    it answers PING, but its process_id is not the new server's."""
    monkeypatch.setattr(launch, "port_holder", lambda host, port: None)
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(RuntimeError, match="did not start"):
        launch.start_redis(data_dir=tmp_path / "second", port=other_server.port, password=PASSWORD)
    assert {p.pid for p in psutil.Process().children()} - before == set()  # the failed one reaped
    assert other_server.proc.poll() is None


def test_a_second_head_in_the_same_temp_dir_is_refused(own_temp_dir: Path,
                                                       other_server: launch.RedisServer) -> None:
    launch.record_started([other_server.proc.pid], other_server.url)  # as a first head would
    recorded = (own_temp_dir / "started_pids.json").read_text()
    result = CliRunner().invoke(cli, ["start", "--head", "--port", "0", "--num-cpus", "1"])
    assert result.exit_code == 1
    lines = _lines(result.output)
    assert len(lines) == 1, lines
    assert "a cluster started here still runs" in lines[0] and "taskmesh stop" in lines[0]
    assert PASSWORD not in lines[0]
    assert (own_temp_dir / "started_pids.json").read_text() == recorded


def _taskmesh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskmesh.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.cluster
def test_two_heads_from_the_cli(tmp_path: Path) -> None:
    """As a user would: a head, then a second head on its port from another temp dir,
    and one more in the same temp dir; neither starts, and stop stops the first."""
    first = {**os.environ, config.ENV_TEMP_DIR: str(tmp_path / "first")}
    second = {**os.environ, config.ENV_TEMP_DIR: str(tmp_path / "second")}
    for env in (first, second):
        env.pop(config.REDIS_PASSWORD.name, None)
    started = _taskmesh("start", "--head", "--port", "0", "--num-cpus", "1", env=first)
    assert started.returncode == 0, started.stderr
    try:
        address = (tmp_path / "first" / "current_cluster").read_text()
        port = address.rpartition(":")[2]
        busy = _taskmesh("start", "--head", "--port", port, "--num-cpus", "1", env=second)
        assert busy.returncode == 1
        assert _lines(busy.stderr) == [_lines(busy.stderr)[0]] and f"Port {port}" in busy.stderr
        assert "redis-server" in busy.stderr or "valkey-server" in busy.stderr
        assert not (tmp_path / "second" / "started_pids.json").exists()
        again = _taskmesh("start", "--head", "--port", "0", "--num-cpus", "1", env=first)
        assert again.returncode == 1 and len(_lines(again.stderr)) == 1, again.stderr
        assert "still runs" in again.stderr
    finally:
        stopped = _taskmesh("stop", env=first)
    assert stopped.returncode == 0, stopped.stderr


@pytest.mark.cluster
def test_start_block_stays_in_the_foreground_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`start --head --block` (Ray's `ray start --head --block`): it says where the agent
    logs, stays until SIGTERM, then stops all it started and forgets it."""
    env = {**os.environ, config.ENV_TEMP_DIR: str(tmp_path)}
    env.pop(config.REDIS_PASSWORD.name, None)
    proc = subprocess.Popen([sys.executable, "-m", "taskmesh.cli", "start", "--head", "--block",
                             "--port", "0", "--num-cpus", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out = []
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "foreground" in line:
                break
        text = "".join(out)
        log_path = re.search(r"its agent logs to (\S+)\.$", text, re.M)
        assert log_path and Path(log_path.group(1)).is_file(), text
        pids = [entry["pid"] for entry in json.loads((tmp_path / "started_pids.json").read_text())]
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)  # Redis, agent, dashboard
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text + rest
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                       for p in pids)
        assert not (tmp_path / "started_pids.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if (tmp_path / "started_pids.json").exists():  # whatever it left running
            _taskmesh("stop", env=env)
