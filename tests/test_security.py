"""Redis as the trust boundary: the embedded server's password and bind address, the
refusal of an open Redis on another machine, the ACL users of each role running a real
job, nothing secret in output, logs or keys, and one-line errors for bad input."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
from click.testing import CliRunner

import taskmesh
from conftest import assert_no_leaked_children, error_lines, machine_ip, start_cluster
from taskmesh import security
from taskmesh.cli import main as cli
from taskmesh.security import InsecureRedisError, check_server
from taskmesh.store import Store
from taskmesh.workers import launch


def taskmesh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskmesh.cli", *args]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(taskmesh_cmd(*args), env=env, capture_output=True, text=True, timeout=60)


# ---- an open Redis on another machine -------------------------------------------------

@pytest.fixture
def open_redis(tmp_path: Path) -> Iterator[launch.RedisServer]:
    """A server listening on every interface, without a password or protected mode."""
    server = launch.start_redis(data_dir=tmp_path / "open", host="0.0.0.0")
    yield server
    server.stop()


@pytest.mark.cluster
def test_an_open_redis_reached_over_the_network_is_refused(
        open_redis: launch.RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://{machine_ip()}:{open_redis.port}"
    store = Store(url)
    try:
        with pytest.raises(InsecureRedisError, match="--allow-insecure"):
            check_server(store)
        with caplog.at_level(logging.WARNING, logger="taskmesh.security"):
            check_server(store, allow_insecure=True)
            check_server(store, allow_insecure=True)
        assert caplog.text.count("SECURITY WARNING") == 1  # loudly, once

        check_server(Store(f"redis://127.0.0.1:{open_redis.port}"))  # this machine only: fine

        with pytest.raises(InsecureRedisError):
            taskmesh.init(address=url)
        assert not taskmesh.is_initialized()

        result = CliRunner().invoke(cli, ["start", "--address", url])
        assert result.exit_code == 1
        assert len(result.output.strip().splitlines()) == 1
        assert result.output.startswith("Error: Refusing the Redis at")

        agent = run_cli(["worker", "--address", url], dict(os.environ))  # a real agent
        assert agent.returncode == 1 and "Refusing the Redis at" in agent.stderr

        password = security.generate_password()
        store.redis.config_set("requirepass", password)
        check_server(Store(f"redis://:{password}@{machine_ip()}:{open_redis.port}"))
    finally:
        store.close()


def test_allow_insecure_lets_a_driver_join(open_redis: launch.RedisServer) -> None:
    url = f"redis://{machine_ip()}:{open_redis.port}"
    taskmesh.init(address=url, allow_insecure=True)
    try:
        assert taskmesh.is_initialized()
    finally:
        taskmesh.shutdown()


# ---- the embedded server of `taskmesh start --head` -----------------------------------

@pytest.mark.cluster
@pytest.mark.slow
def test_head_on_a_network_interface_gets_a_password_and_leaks_it_nowhere(
        tmp_path: Path) -> None:
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    env = dict(os.environ, TASKMESH_TEMP_DIR=str(tmp_path))
    env.pop("TASKMESH_ADDRESS", None)
    port = launch.free_port()
    started = run_cli(["start", "--head", "--port", str(port), "--redis-bind", "0.0.0.0",
                       "--num-cpus", "1"], env)
    try:
        assert started.returncode == 0, started.stderr
        # The hand-over names the address without the password and the file holding it.
        found = re.search(r"taskmesh worker --address redis://([^:@]+):(\d+) "
                          r"--redis-password-file (\S+)\n", started.stdout)
        assert found, started.stdout
        host, printed_port, password_file = found.groups()
        assert Path(password_file).stat().st_mode & 0o777 == 0o600
        password = Path(password_file).read_text().strip()
        assert len(password) >= 40 and host == machine_ip() and int(printed_port) == port
        assert password not in started.stdout + started.stderr
        assert f'export TASKMESH_REDIS_PASSWORD="$(cat {password_file})"' in started.stdout
        url = f"redis://:{password}@{host}:{port}"

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=host, port=port).ping()
        admin = redis.Redis.from_url(url)
        assert admin.config_get("protected-mode") == {"protected-mode": "yes"}
        assert admin.config_get("bind")["bind"] == "0.0.0.0"
        for proc in psutil.process_iter(["cmdline"]):  # not on any command line (ps shows them)
            assert password not in " ".join(proc.info["cmdline"] or [])

        taskmesh.init(address=url)
        try:
            @taskmesh.remote
            def square(x):
                print("working on", x)
                return np.full(300_000, x)  # large: a shared-memory object

            assert [int(a[0]) for a in taskmesh.get([square.remote(i) for i in range(3)])] == [0, 1, 2]
        finally:
            taskmesh.shutdown()

        status = run_cli(["status", "--address", url], env)
        assert status.returncode == 0, status.stderr
        assert password not in status.stdout + status.stderr
        assert f"Cluster at redis://:***@{host}:{port}" in status.stdout
        assert "Persistence: AOF on (appendfsync everysec); RDB off" in status.stdout

        for key in admin.scan_iter(count=1000):  # the events stream and every other key
            assert password.encode() not in (admin.dump(key) or b""), key
        secret_files = {"taskmesh-redis.conf", "current_cluster", "redis-password"}
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.name in secret_files:
                assert path.stat().st_mode & 0o077 == 0, path
            elif path.is_file() and path.suffix in (".log", ".json", ".conf", ""):
                assert password not in path.read_text(errors="replace"), path
    finally:
        stopped = run_cli(["stop"], env)
        assert stopped.returncode == 0, stopped.stderr
    assert not (tmp_path / "redis-password").exists()
    assert_no_leaked_children(before)


# ---- ACL users per role -----------------------------------------------------------------

@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[launch.RedisServer]:
    server = launch.start_redis(data_dir=tmp_path / "acl")
    yield server
    server.stop()


def setup_users(url: str, tmp_path: Path) -> dict[str, str]:
    password_file = tmp_path / "readonly-password"
    password_file.write_text("Read-Only-Pass-1\n")
    result = CliRunner().invoke(cli, ["acl", "setup", "--address", url,
                                      "--password-file", f"readonly={password_file}"])
    assert result.exit_code == 0, result.output
    urls = dict(re.findall(r"^\s+(\w+)\s+(redis://\S+)$", result.output, re.MULTILINE))
    assert set(urls) == {"driver", "agent", "readonly"}
    assert urls["readonly"].startswith("redis://readonly:Read-Only-Pass-1@")
    return urls


@pytest.mark.cluster
def test_a_job_runs_with_the_driver_and_agent_users(acl_redis: launch.RedisServer,
                                                    tmp_path: Path) -> None:
    urls = setup_users(acl_redis.url, tmp_path)
    admin = redis.Redis.from_url(acl_redis.url)
    admin.acl_log_reset()
    with start_cluster(urls["agent"], tmp_path, nodes=0) as cluster:
        cluster.add_node(num_cpus=1, resources={"a": 1})
        cluster.add_node(num_cpus=1, resources={"b": 1})
        taskmesh.init(address=urls["driver"])
        try:
            @taskmesh.remote(resources={"a": 1})
            def make(n):
                return np.arange(n, dtype=np.int64)

            @taskmesh.remote(resources={"b": 1})
            def total(x):  # on the other node: the bytes cross the transfer servers
                return int(x.sum())

            @taskmesh.remote
            def nested(n):
                return taskmesh.get(total.remote(make.remote(n)))

            @taskmesh.remote
            class Counter:
                def __init__(self):
                    self.n = 0

                def add(self, k):
                    self.n += k
                    return self.n

            n = 1_000_000
            assert taskmesh.get(total.remote(make.remote(n))) == n * (n - 1) // 2
            assert taskmesh.get(nested.remote(1000)) == 1000 * 999 // 2
            assert int(taskmesh.get(make.remote(n)).sum()) == n * (n - 1) // 2  # driver reads
            ref = taskmesh.put(np.ones(500_000))
            assert taskmesh.get(total.remote(ref)) == 500_000
            counter = Counter.remote()
            assert taskmesh.get([counter.add.remote(k) for k in (1, 2, 3)]) == [1, 3, 6]
            taskmesh.kill(counter)
        finally:
            taskmesh.shutdown()
        # The driver and agents (and the agents' workers) did their whole job: Redis
        # denied them nothing.
        assert admin.acl_log() == []
        status = CliRunner().invoke(cli, ["status", "--address", urls["readonly"]])
        assert status.exit_code == 0, status.output
        assert "Nodes: 2 alive" in status.output
        assert "Persistence: AOF off; RDB schedule unknown" in status.output


def test_each_role_cannot_do_the_others_job(acl_redis: launch.RedisServer, tmp_path: Path) -> None:
    urls = setup_users(acl_redis.url, tmp_path)
    keys = Store(acl_redis.url).keys
    admin = redis.Redis.from_url(acl_redis.url)
    admin.hset(keys.node("n1"), "state", "ALIVE")
    admin.xgroup_create(keys.queue("CPU=1"), "agents", id="0", mkstream=True)
    admin.set(keys.transfer_secret(), "ab" * 32)
    ro, driver, agent = (redis.Redis.from_url(urls[r]) for r in ("readonly", "driver", "agent"))
    denied = redis.exceptions.NoPermissionError

    # readonly: status and redis-cli reads, nothing else, and not the transfer secret
    assert ro.hgetall(keys.node("n1")) == {b"state": b"ALIVE"}
    assert ro.xlen(keys.queue("CPU=1")) == 0
    for attempt in (lambda: ro.xadd(keys.queue("CPU=1"), {"task": "x"}),
                    lambda: ro.get(keys.transfer_secret()),
                    lambda: ro.hset(keys.node("n1"), "state", "DEAD"),
                    lambda: ro.publish(keys.chan_cancel(), "x 1"),
                    lambda: ro.get("other:key")):
        with pytest.raises(denied):
            attempt()

    # driver: submits and reads, but cannot act as a node or lease work
    driver.xadd(keys.queue("CPU=1"), {"task": "x"})
    assert driver.get(keys.transfer_secret()) == b"ab" * 32
    for attempt in (lambda: driver.hset(keys.node("n1"), "state", "DEAD"),
                    lambda: driver.zadd(keys.nodes_alive(), {"n1": 1}),
                    lambda: driver.set(keys.monitor(), "me"),
                    lambda: driver.xreadgroup("agents", "n1", {keys.queue("CPU=1"): ">"}),
                    lambda: driver.config_get("requirepass"),
                    lambda: driver.set("other:key", "1")):
        with pytest.raises(denied):
            attempt()

    # agent: runs the cluster, but administers nothing and stays under the prefix
    assert agent.xreadgroup("agents", "n1", {keys.queue("CPU=1"): ">"})
    agent.hset(keys.node("n1"), "state", "DEAD")
    for attempt in (lambda: agent.config_get("requirepass"),
                    lambda: agent.config_set("maxmemory-policy", "allkeys-lru"),
                    lambda: agent.acl_setuser("evil", enabled=True, nopass=True),
                    lambda: agent.flushall(),
                    lambda: agent.set("other:key", "1")):
        with pytest.raises(denied):
            attempt()

    rules = CliRunner().invoke(cli, ["acl", "rules", "readonly"])
    assert rules.output.split() == security.acl_rules("readonly", "tm")
    not_admin = CliRunner().invoke(cli, ["acl", "setup", "--address", urls["agent"]])
    assert not_admin.exit_code == 1 and len(error_lines(not_admin.output)) == 1
    assert "admin" in not_admin.output and urls["agent"].split("@")[0] not in not_admin.output


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "named"), [
    (["start", "--head", "--resources", "{bad"], "--resources"),
    (["start", "--head", "--resources", "[1, 2]"], "--resources"),
    (["start", "--head", "--resources", '{"disk": -1}'], "--resources"),
    (["start", "--head", "--resources", '{"disk": "a lot"}'], "--resources"),
    (["start", "--address", "ftp://host:1"], "--address"),
    (["start", "--address", "redis://:hunter2@host:notaport"], "--address"),
    (["start", "--head", "--redis-bind", "no such host!"], "--redis-bind"),
    (["start", "--head", "--redis-password", "two words"], "--redis-password"),
    (["start", "--head", "--redis-password", ""], "--redis-password"),
    (["start", "--head", "--port", "70000"], "--port"),
    (["start", "--head", "--num-cpus", "-1"], "--num-cpus"),
    (["start", "--head", "--tls-cert", "/nonexistent/cert.pem"], "--tls-cert"),
    (["start", "--address", "h:1", "--redis-password", "abc"], "--redis-password"),
    (["worker", "--address", "h:1", "--tls-ca-file", "/nonexistent/ca.pem"], "--tls-ca-file"),
    (["worker", "--address", "h:1", "--object-store-memory", "12"], "--object-store-memory"),
    (["status", "--address", "redis://:hunter2@h:99999"], "--address"),
    (["acl", "setup", "--address", "h:1", "--prefix", "tm*"], "--prefix"),
    (["acl", "setup", "--address", "h:1", "--password-file", "root=/etc/hostname"], "--password-file"),
    (["acl", "setup", "--address", "h:1", "--password-file", "driver=/nonexistent"], "--password-file"),
    (["acl", "setup", "--address", "h:1", "--password", "driver=Long-Enough-Password-1"], "--password"),
    (["start", "--head", "--redis-password-file", "/nonexistent/pw"], "--redis-password-file"),
    (["acl", "rules", "superuser"], "superuser"),
])
def test_bad_input_gets_one_line_naming_it(argv: list[str], named: str) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = error_lines(result.output)
    assert named in line
    assert "hunter2" not in result.output


def test_init_names_bad_security_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert: cannot read"):
        taskmesh.init(address="rediss://127.0.0.1:1", tls_cert=str(tmp_path / "missing.pem"))
    key = tmp_path / "key.pem"
    key.write_text("x")
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        taskmesh.init(address="rediss://127.0.0.1:1", tls_key=str(key))
    with pytest.raises(TypeError, match="allow_insecure"):
        taskmesh.init(address="127.0.0.1:1", allow_insecure="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="address"):
        taskmesh.init(address="redis://:hunter2@host:notaport")
    assert not taskmesh.is_initialized()
