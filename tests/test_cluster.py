"""Processes: embedded init/shutdown, kill -9 of workers, several agents, the CLI."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

import taskmesh
from conftest import assert_no_leaked_children, wait_until
from taskmesh import exceptions
from taskmesh.cli import main as cli
from taskmesh.objects import shm as _shm
from taskmesh.store import Store, connection
from taskmesh.workers import launch

_wait_for = functools.partial(wait_until, timeout_s=20.0)


@pytest.mark.cluster
def test_embedded_init_starts_real_redis_and_shutdown_leaves_nothing() -> None:
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    ctx = taskmesh.init(num_cpus=1)
    try:
        children = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
        cmdlines = [" ".join(c.cmdline()) for c in children]
        assert any("-server" in c for c in cmdlines), cmdlines  # redis-server / valkey-server
        assert any("taskmesh.cli worker" in c for c in cmdlines), cmdlines
        assert any("taskmesh.workers.worker_main" in c for c in cmdlines), cmdlines

        @taskmesh.remote
        def hello():
            return "hi"

        assert taskmesh.get(hello.remote()) == "hi"
        # The address shown has its password masked; the runtime holds the real one.
        assert ":***@" in ctx.address_info["redis_address"]
        store = Store(taskmesh.api.get_runtime().store.url)
        assert store.redis.info("server")["redis_version"]
        # Bounded (a quarter of the machine's memory) and evicting nothing: a full Redis
        # refuses writes (ObjectStoreFullError) instead of taking the machine's memory.
        assert int(store.redis.config_get("maxmemory")["maxmemory"]) == launch.head_maxmemory() > 0
        assert store.redis.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert [n["NodeID"] for n in taskmesh.nodes()] == [ctx.address_info["node_id"]]
        assert taskmesh.cluster_resources()["CPU"] == 1.0
        store.close()
        with pytest.raises(RuntimeError, match="init twice"):
            taskmesh.init()
        assert taskmesh.init(ignore_reinit_error=True)
    finally:
        taskmesh.shutdown()
    assert_no_leaked_children(before)
    assert not taskmesh.is_initialized()
    assert not _shm.node_dir(ctx.address_info["node_id"]).exists()  # its shared memory too


@pytest.mark.cluster
def test_init_as_context_manager_and_auto_address_errors() -> None:
    with pytest.raises(ConnectionError, match="taskmesh start --head"):
        taskmesh.init(address="auto")
    with taskmesh.init(num_cpus=1) as ctx:
        assert ctx.address_info["job_id"]
        assert taskmesh.is_initialized()
    assert not taskmesh.is_initialized()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:6379", "redis://localhost:6379"),
        ("10.0.0.5:7000", "redis://10.0.0.5:7000"),
        ("redis://h:1", "redis://h:1"),
        ("redis://:s3cret@h:1", "redis://:s3cret@h:1"),
        ("rediss://user:pw@h:6380/0", "rediss://user:pw@h:6380/0"),
        ("redis://h", "redis://h:6379"),
        ("[::1]:6379", "redis://[::1]:6379"),
    ],
)
def test_address_canonicalization(given: str, expected: str) -> None:
    assert connection.canonicalize_address(given) == expected


@pytest.mark.parametrize("bad", ["", "http://h:1", "h:notaport", "redis://:99999", "redis://:1"])
def test_bad_addresses_are_rejected_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="address"):
        connection.canonicalize_address(bad)


def test_password_is_masked() -> None:
    assert connection.mask_password("redis://:s3cret@h:1") == "redis://:***@h:1"
    assert "s3cret" not in connection.mask_password("rediss://u:s3cret@h:1/0")


def test_init_with_resources_against_existing_cluster_is_rejected(cluster_factory) -> None:
    with cluster_factory(nodes=1) as cluster:
        with pytest.raises(ValueError, match="num_cpus"):
            taskmesh.init(address=cluster.url, num_cpus=2)


def test_task_on_a_killed_worker_is_retried_on_another_worker(cluster_factory, tmp_path: Path) -> None:
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            pids_file = tmp_path / "pids"

            @taskmesh.remote(max_retries=3)
            def victim(path):
                with open(path, "a") as f:
                    f.write(f"{os.getpid()}\n")
                if len(open(path).read().split()) == 1:
                    time.sleep(60)  # the first attempt is killed while it sleeps
                return os.getpid()

            ref = victim.remote(str(pids_file))
            first = int(_wait_for(lambda: pids_file.exists() and pids_file.read_text().split(),
                                  what="first attempt")[0])
            os.kill(first, signal.SIGKILL)
            second = taskmesh.get(ref, timeout=60)
            assert second != first
            assert [int(p) for p in pids_file.read_text().split()] == [first, second]
            # the agent replaced the dead worker
            node = next(iter(cluster.agents))
            _wait_for(lambda: len(cluster.worker_pids(node)) >= 2, what="replacement worker")
        finally:
            taskmesh.shutdown()


def test_retries_exhausted_raise_worker_crashed(cluster_factory) -> None:
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote(max_retries=1)
            def suicide():
                os.kill(os.getpid(), signal.SIGKILL)

            with pytest.raises(exceptions.WorkerCrashedError):
                taskmesh.get(suicide.remote(), timeout=60)

            @taskmesh.remote
            def fine():
                return "still serving"

            assert taskmesh.get(fine.remote(), timeout=60) == "still serving"
        finally:
            taskmesh.shutdown()


def test_workers_die_with_their_agent(cluster_factory) -> None:
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        node = next(iter(cluster.agents))
        workers = _wait_for(lambda: cluster.worker_pids(node), what="workers")
        cluster.kill_node(node)  # SIGKILL: no chance to clean up
        def gone() -> bool:
            return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                           for p in workers)

        _wait_for(gone, timeout_s=10, what="workers to die with the agent")


def _taskmesh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskmesh.cli", *args]


@pytest.mark.cluster
@pytest.mark.slow
def test_multi_node_cluster_from_the_cli(tmp_path: Path) -> None:
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    env = dict(os.environ)
    started = subprocess.run(_taskmesh_cmd("start", "--head", "--port", "0", "--num-cpus", "1"),
                             env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert "taskmesh worker --address" in started.stdout
    address = launch.current_cluster_address()
    assert address is not None
    worker = subprocess.Popen(_taskmesh_cmd("worker", "--address", address, "--num-cpus", "1",
                                            "--resources", '{"special": 2}'),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        store = Store(address)
        _wait_for(lambda: len([n for n in store.nodes() if n["alive"]]) == 2, what="two nodes")
        taskmesh.init(address="auto")
        try:
            @taskmesh.remote
            def where(i):
                time.sleep(0.2)
                return taskmesh.get_runtime_context().get_node_id()

            @taskmesh.remote(resources={"special": 1})
            def special():
                return taskmesh.get_runtime_context().get_node_id()

            used = set(taskmesh.get([where.remote(i) for i in range(12)], timeout=60))
            node_ids = {n["NodeID"] for n in taskmesh.nodes() if n["Alive"]}
            assert used == node_ids and len(node_ids) == 2
            special_node = taskmesh.get(special.remote(), timeout=30)
            by_id = {n["NodeID"]: n for n in taskmesh.nodes()}
            assert by_id[special_node]["Resources"]["special"] == 2.0
            assert taskmesh.cluster_resources()["CPU"] == 2.0

            status = CliRunner().invoke(cli, ["status", "--address", address])
            assert status.exit_code == 0, status.output
            assert "Nodes: 2 alive" in status.output
            assert "CPU:" in status.output and "special: 0/2" in status.output
        finally:
            taskmesh.shutdown()
        store.close()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        stopped = subprocess.run(_taskmesh_cmd("stop"), env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
    assert worker.returncode == 0
    assert launch.current_cluster_address() is None
    assert_no_leaked_children(before)


def test_cli_rejects_bad_input_naming_it() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["worker", "--address", "h:1", "--resources", "{not json"])
    assert result.exit_code != 0 and "--resources" in result.output
    result = runner.invoke(cli, ["worker", "--address", "h:1", "--resources", '{"CPU": 2}'])
    assert result.exit_code != 0 and "--num-cpus" in result.output
    result = runner.invoke(cli, ["worker", "--address", "h:1", "--resources", '{"disk": -1}'])
    assert result.exit_code != 0 and "disk" in result.output
    result = runner.invoke(cli, ["worker", "--address", "http://h:1"])
    assert result.exit_code != 0 and "--address" in result.output
    result = runner.invoke(cli, ["worker", "--address", "h:1", "--num-cpus", "-1"])
    assert result.exit_code != 0 and "--num-cpus" in result.output
    result = runner.invoke(cli, ["start"])
    assert result.exit_code != 0 and "--head" in result.output


def test_status_shows_queued_work(store: Store) -> None:
    store.register_shape("CPU=4")
    store.submit_tasks([("CPU=4", {"task": "t"})])
    result = CliRunner().invoke(cli, ["status", "--address", store.url])
    assert result.exit_code == 0, result.output
    assert "queued: 1  running: 0" in result.output
    assert json.loads(json.dumps(store.queue_stats())) == {"CPU=4": [1, 0]}


def test_work_leased_ahead_moves_to_an_idle_node(cluster_factory, tmp_path: Path) -> None:
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        busy_node = next(iter(cluster.agents))
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote
            def where(seconds, marker=None):
                if marker:
                    open(marker, "w").close()
                time.sleep(seconds)
                return taskmesh.get_runtime_context().get_node_id()

            marker = tmp_path / "long-started"
            long_ref = where.remote(8, str(marker))
            _wait_for(marker.exists, what="the long task to start")
            short_ref = where.remote(0)  # leased ahead by the busy node, waits there
            idle_node = cluster.add_node(num_cpus=1)
            assert taskmesh.get(short_ref, timeout=6) == idle_node
            assert taskmesh.get(long_ref, timeout=30) == busy_node
        finally:
            taskmesh.shutdown()


def test_init_joins_the_cluster_named_by_taskmesh_address(cluster_factory, monkeypatch) -> None:
    with cluster_factory(nodes=1) as cluster:
        monkeypatch.setenv(launch.ENV_ADDRESS, cluster.url.replace("redis://", ""))
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        ctx = taskmesh.init()
        try:
            started = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
            assert started == []  # joined: no Redis, no agent of its own
            assert ctx.address_info["node_id"] is None
            assert [n["NodeID"] for n in taskmesh.nodes()] == list(cluster.agents)
        finally:
            taskmesh.shutdown()


@pytest.mark.cluster
@pytest.mark.slow
def test_the_readme_demo_runs() -> None:
    """`python examples/quickstart.py`, the README's demo command, works end to end on an
    embedded Redis and leaves no process behind."""
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != launch.ENV_ADDRESS}
    done = subprocess.run([sys.executable, "examples/quickstart.py"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in done.stdout
    assert "actor state: 45" in done.stdout
    assert "writeable=False (zero-copy)" in done.stdout
    assert "caught: RayTaskError(ValueError)" in done.stdout
    assert_no_leaked_children(before)


def test_a_redis_that_may_evict_keys_is_refused(tmp_path) -> None:
    """An evicted key is lost work: drivers and agents refuse a Redis whose
    maxmemory-policy is not noeviction, with an error naming the setting."""
    server = launch.start_redis(data_dir=tmp_path / "redis",
                                   extra_args=("--maxmemory-policy", "allkeys-lru"))
    try:
        with pytest.raises(ValueError, match="maxmemory-policy 'allkeys-lru'"):
            taskmesh.init(address=server.url)
        assert not taskmesh.is_initialized()
        result = CliRunner().invoke(cli, ["worker", "--address", server.url, "--num-cpus", "1"])
        assert result.exit_code != 0 and "noeviction" in result.output
        Store(server.url).redis.config_set("maxmemory-policy", "noeviction")
        with taskmesh.init(address=server.url):
            assert taskmesh.is_initialized()
    finally:
        server.stop()


@pytest.mark.cluster
def test_a_heads_redis_takes_the_maxmemory_it_is_given(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TASKMESH_REDIS_MAXMEMORY", str(64 * 2**20))
    server = launch.start_redis(data_dir=tmp_path / "redis", maxmemory=launch.head_maxmemory())
    try:
        store = Store(server.url)
        assert store.redis.config_get("maxmemory")["maxmemory"] == str(64 * 2**20)
        store.close()
    finally:
        server.stop()
    monkeypatch.setenv("TASKMESH_REDIS_MAXMEMORY", "0")
    assert launch.head_maxmemory() == 0  # none
