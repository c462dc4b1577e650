"""docker-compose.yml, proven without docker.

No docker engine is needed: the compose file is parsed and checked, then each service's
own command is run as a local process, the way its container would run it: the `redis`
service's entrypoint script and server arguments on the local Redis/Valkey binary,
`head` and two `worker` replicas as `python -m taskmesh.cli ...` with the service's
environment, its `${TASKMESH_REDIS_PASSWORD}` filled in as compose fills it from `.env`.
The compose host name `redis:6379` is mapped to the local server's 127.0.0.1:<free port>.
A driver then connects the way the compose file's comment tells a host driver to, and
runs tasks on every node of that cluster.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import yaml

import taskmesh
from conftest import assert_no_leaked_children
from taskmesh import security
from taskmesh.store import Store, connection
from taskmesh.workers import launch as _services
from taskmesh.workers import process as _process

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
REDIS_HOST, REDIS_PORT = "redis", 6379
NODE_SERVICES = ("head", "worker")
WORKER_REPLICAS = 2  # as `docker compose up --scale worker=2`
CPUS_PER_NODE = 2

pytestmark = pytest.mark.compose


# ---- reading the compose file ---------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _argv(command: str | list[str]) -> list[str]:
    """A service's `command` as an argv (compose accepts a list or a shell-like string)."""
    return [str(a) for a in command] if isinstance(command, list) else shlex.split(command)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]; a bare "KEY" passes the host's through
        env = dict(item.split("=", 1) for item in env if "=" in item)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _interpolate(value: str, dotenv: dict[str, str]) -> str:
    """A value as compose passes it on: `${VAR}` and `${VAR:?message}` from `.env`
    (a missing one is an error, as in compose), `$$` as a literal `$`."""
    def var(m: re.Match[str]) -> str:
        assert m.group(1) in dotenv, f"compose would stop: {m.group(2)}"
        return dotenv[m.group(1)]
    return re.sub(r"\$\{(\w+)(?::\?([^}]*))?\}", var, value).replace("$$", "$")


PASSWORD_VAR = "TASKMESH_REDIS_PASSWORD"
SERVER_CONF = "/tmp/taskmesh-redis.conf"


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short syntax means "started", not "healthy"
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def _cluster_address(service: dict[str, Any]) -> str | None:
    """The Redis address a node service is given: --address, else $TASKMESH_ADDRESS
    (the CLI's fallback)."""
    argv = _argv(service["command"])
    for i, arg in enumerate(argv):
        if arg == "--address" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--address="):
            return arg.split("=", 1)[1]
    return _environment(service).get(_services.ENV_ADDRESS)


def _option(argv: list[str], name: str) -> str | None:
    """The value of a server option in `--name value` form (as redis-server takes them)."""
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def _published_ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(host port, container port) pairs of a service's `ports`."""
    out = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.add((int(entry["published"]), int(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            if len(parts) >= 2:
                out.add((int(parts[-2]), int(parts[-1])))
    return out


def _bytes(size: str) -> int:
    """A compose byte value ("2gb", "512m", "1073741824") in bytes."""
    m = re.fullmatch(r"(\d+)\s*([bkmg]?)b?", size.strip().lower())
    assert m, f"not a compose byte value: {size!r}"
    return int(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b")


def test_compose_file_describes_a_taskmesh_cluster(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "head", "worker"} <= set(services)

    redis_svc = services["redis"]
    server_argv = _argv(redis_svc["command"])
    assert Path(server_argv[0]).name in ("valkey-server", "redis-server")
    assert _option(server_argv, "--maxmemory-policy") == "noeviction", \
        "taskmesh needs noeviction: an evicted key would lose tasks"
    assert _option(server_argv, "--appendonly") == "yes"
    assert redis_svc.get("healthcheck", {}).get("test"), "depends_on: service_healthy needs a healthcheck"
    # A password, from .env, into a config file: on no command line, and not "open".
    assert _environment(redis_svc)[PASSWORD_VAR].startswith(f"${{{PASSWORD_VAR}:?")
    entrypoint = redis_svc["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"] and "requirepass" in entrypoint[2]
    assert "--requirepass" not in server_argv and "requirepass" not in " ".join(server_argv)
    assert "REDISCLI_AUTH" in " ".join(redis_svc["healthcheck"]["test"])
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert (REDIS_PORT, REDIS_PORT) in _published_ports(redis_svc), \
        "a driver on the host connects to redis://localhost:6379"

    for name in NODE_SERVICES:
        svc = services[name]
        assert svc.get("build"), f"{name} is built from the repo's Dockerfile"
        assert _depends_on(svc).get("redis", {}).get("condition") == "service_healthy", name
        address = _cluster_address(svc)
        assert address is not None, f"{name} is given no cluster address"
        assert connection.canonicalize_address(address) == f"redis://{REDIS_HOST}:{REDIS_PORT}", name
        argv = _argv(svc["command"])
        assert argv[:2] == ["taskmesh", "worker"], name
        assert float(_option(argv, "--num-cpus") or 0) == CPUS_PER_NODE, name
        # Docker's default /dev/shm is 64 MiB, and the object store is sized to fit it.
        assert _bytes(str(svc.get("shm_size", "0"))) >= 1024**3, f"{name}: shm_size of 1 GiB or more"
        env = _environment(svc)
        assert "TASKMESH_ALLOW_INSECURE" not in env, f"{name}: the Redis has a password"
        assert env[PASSWORD_VAR] == _environment(redis_svc)[PASSWORD_VAR], name
    # `--scale worker=N` needs replicas that do not collide on a name or a host port.
    assert "container_name" not in services["worker"]
    assert not services["worker"].get("ports")

    # Compose appends the commands above to the image's ENTRYPOINT: there must be none,
    # and the image must install the package that provides the `taskmesh` command.
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1)[0].upper() for line in dockerfile.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    assert "ENTRYPOINT" not in instructions
    assert re.search(r"^FROM\s+python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"pip install\b", dockerfile)


# ---- running the services as local processes ------------------------------------------

Launch = Callable[..., subprocess.Popen]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start processes (dying with this one); on teardown disconnect the driver, stop
    the node agents and then the server they unregister from, and check nothing is left."""
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    nodes: list[subprocess.Popen] = []
    servers: list[subprocess.Popen] = []

    def start(argv: list[str], *, log_name: str, env: dict[str, str] | None = None,
              server: bool = False) -> subprocess.Popen:
        with open(tmp_path / f"{log_name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_process.set_pdeathsig)
        (servers if server else nodes).append(proc)
        return proc

    try:
        yield start
    finally:
        try:
            taskmesh.shutdown()
        finally:
            for group in (nodes, servers):
                _process.stop_processes([p.pid for p in group], timeout_s=10)
                for p in group:
                    p.wait(timeout=10)
            assert_no_leaked_children(before)


def _logs(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(directory.glob("*.log")))


def _wait_for_server(url: str, proc: subprocess.Popen, log_dir: Path, timeout_s: float = 15) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert proc.poll() is None, f"the redis service's command exited\n{_logs(log_dir)}"
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                assert time.monotonic() < deadline, f"the redis service never answered\n{_logs(log_dir)}"
                time.sleep(0.05)
    finally:
        client.close()


def _wait_for_nodes(url: str, count: int, procs: list[subprocess.Popen], log_dir: Path,
                    timeout_s: float = 60) -> set[str]:
    store = Store(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for p in procs:
                assert p.poll() is None, f"a node agent exited ({p.args})\n{_logs(log_dir)}"
            alive = {n["node_id"] for n in store.nodes() if n["alive"]}
            if len(alive) >= count:
                return alive
            assert time.monotonic() < deadline, \
                f"{len(alive)}/{count} nodes alive after {timeout_s}s\n{_logs(log_dir)}"
            time.sleep(0.1)
    finally:
        store.close()


@pytest.mark.cluster
@pytest.mark.slow
def test_compose_services_run_as_a_cluster(compose: dict[str, Any], launch: Launch,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    port = _services.free_port()
    url = f"redis://127.0.0.1:{port}"
    # .env, made as the compose file's comment says; the host driver exports it.
    dotenv = {PASSWORD_VAR: security.generate_password()}
    monkeypatch.setenv(PASSWORD_VAR, dotenv[PASSWORD_VAR])

    def local(value: str) -> str:
        """The compose network's `redis:6379` is this test's server."""
        return re.sub(rf"(?<![\w.-]){REDIS_HOST}:{REDIS_PORT}(?!\d)", f"127.0.0.1:{port}",
                      _interpolate(value, dotenv))

    # redis: the service's entrypoint script and server arguments; the script's config
    # file, and the port, bind address and data dir local.
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    redis_svc = services["redis"]
    shell, flag, script, *script_args = redis_svc["entrypoint"]
    script = _interpolate(script, dotenv)
    assert SERVER_CONF in script
    script = script.replace(SERVER_CONF, str(tmp_path / "redis.conf"))
    server_argv = _argv(redis_svc["command"])
    server = launch([shell, flag, script, *script_args, _services.find_server_binary(),
                     *server_argv[1:], "--port", str(port), "--bind", "127.0.0.1",
                     "--dir", str(data_dir)],
                    env=dict(os.environ, **{k: local(v) for k, v in _environment(redis_svc).items()}),
                    log_name="redis", server=True)
    _wait_for_server(connection.with_password(url, dotenv[PASSWORD_VAR]), server, tmp_path)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()  # no password, no entry
    for proc in psutil.process_iter(["cmdline"]):  # not on the server's command line
        assert dotenv[PASSWORD_VAR] not in " ".join(proc.info["cmdline"] or [])
    store = Store(url)  # the password from the environment, as every client here
    try:
        assert store.redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert store.redis.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        store.close()

    # head + worker replicas: the services' commands and environment, as in the image
    # (whose `taskmesh` console script is `python -m taskmesh.cli`).
    agents = []
    for name, replicas in (("head", 1), ("worker", WORKER_REPLICAS)):
        svc = services[name]
        argv = [local(a) for a in _argv(svc["command"])]
        assert argv[0] == "taskmesh"
        env = dict(os.environ, **{k: local(v) for k, v in _environment(svc).items()})
        env.setdefault(_services.ENV_ADDRESS, url)
        assert connection.canonicalize_address(env[_services.ENV_ADDRESS]) == url
        for i in range(replicas):
            agents.append(launch([sys.executable, "-m", "taskmesh.cli", *argv[1:]],
                                 env=env, log_name=f"{name}-{i + 1}"))
    node_ids = _wait_for_nodes(url, 1 + WORKER_REPLICAS, agents, tmp_path)
    assert len(node_ids) == 1 + WORKER_REPLICAS

    # A driver connects as a host driver would (TASKMESH_ADDRESS=redis://localhost:PORT).
    taskmesh.init(address=f"redis://localhost:{port}")
    assert taskmesh.cluster_resources()["CPU"] == CPUS_PER_NODE * (1 + WORKER_REPLICAS)

    @taskmesh.remote
    def square(x: int) -> tuple[str | None, int]:
        return taskmesh.get_runtime_context().get_node_id(), x * x

    results = taskmesh.get([square.remote(i) for i in range(20)], timeout=60)
    assert [value for _, value in results] == [i * i for i in range(20)]
    assert {node for node, _ in results} <= node_ids, _logs(tmp_path)

    # A task may ask for a whole node's CPUs (no more: it would fit nowhere).
    @taskmesh.remote(num_cpus=CPUS_PER_NODE)
    def whole_node(x: int) -> tuple[str | None, int]:
        return taskmesh.get_runtime_context().get_node_id(), x + 1

    results = taskmesh.get([whole_node.remote(i) for i in range(6)], timeout=60)
    assert [value for _, value in results] == [i + 1 for i in range(6)]
    assert {node for node, _ in results} <= node_ids, _logs(tmp_path)
