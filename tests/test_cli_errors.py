"""What a user sees when the cluster cannot be used: every command that reads Redis
fails with one line and a non-zero exit code for an unreachable server, refused
credentials (a message of its own, not "unavailable") and a busy port; `init()` raises
one exception that says what to do; `--version` and `-h` work."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import taskmesh
from taskmesh._base import config, versions
from taskmesh.cli import main as cli
from taskmesh.exceptions import StoreAuthenticationError, StoreUnavailableError, VersionMismatchError
from taskmesh.store import Store
from taskmesh.workers import launch

PASSWORD = "right-password-0123456789"

# Every command that reads the cluster, with what it needs besides --address.
READERS = [["status"], ["list", "nodes"], ["memory"], ["logs"], ["summary", "tasks"],
           ["timeline", "-o", "{tmp}/trace.json"], ["metrics"], ["acl", "setup"],
           ["worker", "--num-cpus", "1"]]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    return launch.free_port()


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[launch.RedisServer]:
    server = launch.start_redis(data_dir=tmp_path / "redis", password=PASSWORD)
    yield server
    server.stop()


def _invoke(args: list[str], tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(cli, args, env={config.REDIS_PASSWORD.name: None, **env})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_an_unreachable_redis_is_one_line(command: list[str], closed_port: int, tmp_path: Path) -> None:
    code, lines = _invoke([*command, "--address", f"127.0.0.1:{closed_port}"], tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert f"Cannot reach the Redis at redis://127.0.0.1:{closed_port}" in lines[0]
    assert "Traceback" not in lines[0]


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_a_wrong_password_is_one_line_of_its_own(command: list[str], protected: launch.RedisServer,
                                                 tmp_path: Path) -> None:
    address = f"redis://127.0.0.1:{protected.port}"
    for env in ({config.REDIS_PASSWORD.name: "a-wrong-password-0123456789"}, {}):
        code, lines = _invoke([*command, "--address", address], tmp_path, **env)
        assert code != 0
        assert len(lines) == 1, lines
        assert "refused the credentials" in lines[0] and "unavailable" not in lines[0]
        assert config.REDIS_PASSWORD.name in lines[0]  # what to do
        assert "a-wrong-password" not in lines[0]


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_protected_mode_is_one_line(command: list[str], tmp_path: Path) -> None:
    from taskmesh import security

    ip = security.this_machine_ip()
    if security.is_loopback(ip):
        pytest.skip("needs a non-loopback address on this machine")
    server = launch.start_redis(data_dir=tmp_path / "open", host="0.0.0.0",
                                extra_args=("--protected-mode", "yes"))
    try:
        code, lines = _invoke([*command, "--address", f"{ip}:{server.port}"], tmp_path)
    finally:
        server.stop()
    assert code != 0 and len(lines) == 1, lines
    assert "refused this client: it is in protected mode" in lines[0]


def test_init_raises_one_exception_that_says_what_to_do(closed_port: int,
                                                        protected: launch.RedisServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.REDIS_PASSWORD.name, raising=False)
    with pytest.raises(StoreUnavailableError) as unreachable:
        taskmesh.init(address=f"127.0.0.1:{closed_port}")
    assert "Cannot reach the Redis" in str(unreachable.value)
    assert unreachable.value.__cause__ is None and unreachable.value.__suppress_context__
    with pytest.raises(StoreAuthenticationError) as refused:
        taskmesh.init(address=f"redis://:wrong-password-0123456789@127.0.0.1:{protected.port}")
    message = str(refused.value)
    assert "refused the credentials" in message and "wrong-password" not in message
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert not taskmesh.is_initialized()


def test_metrics_serve_on_a_busy_port_is_one_line(store: Store, tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, lines = _invoke(["metrics", "--address", store.url, "--serve", str(port)], tmp_path)
    assert code != 0 and len(lines) == 1, lines
    assert f"cannot serve on 127.0.0.1:{port}" in lines[0] and "in use" in lines[0]


def test_version_and_short_help() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.split()[:2] == ["taskmesh", taskmesh.__version__]
    for args in (["-h"], ["status", "-h"], ["list", "-h"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Usage:" in result.output, args


# ---- versions ------------------------------------------------------------------------

def test_a_fresh_cluster_records_the_versions_of_who_joins_first(store: Store) -> None:
    taskmesh.init(address=store.url)
    taskmesh.shutdown()
    assert json.loads(store.redis.get(store.keys.versions())) == versions.this_process()


def test_a_driver_of_other_versions_is_refused_at_init(store: Store) -> None:
    theirs = {**versions.this_process(), "python": "2.7", "taskmesh": "0.0.9"}
    store.redis.set(store.keys.versions(), json.dumps(theirs))
    jobs_before = store.redis.get(store.keys.jobs())
    with pytest.raises(VersionMismatchError) as refused:
        taskmesh.init(address=store.url)
    message = str(refused.value)
    assert "\n" not in message
    mine = versions.this_process()
    assert "python 2.7" in message and "taskmesh 0.0.9" in message
    assert f"python {mine['python']}" in message and f"taskmesh {mine['taskmesh']}" in message
    assert not taskmesh.is_initialized()
    assert store.redis.get(store.keys.jobs()) == jobs_before  # refused before any job


def test_a_build_of_the_same_version_speaking_another_protocol_is_refused(store: Store) -> None:
    """Entries, keys and scripts change between builds of one package version: a
    cluster recorded by a build of another protocol (or by one from before protocols
    were recorded) refuses this one."""
    for theirs in ({**versions.this_process(), "protocol": "1"},
                   {f: v for f, v in versions.this_process().items() if f != "protocol"}):
        store.redis.set(store.keys.versions(), json.dumps(theirs))
        with pytest.raises(VersionMismatchError, match=f"protocol {versions.PROTOCOL}"):
            taskmesh.init(address=store.url)
        assert not taskmesh.is_initialized()


def test_an_agent_of_another_python_is_refused_with_one_line(store: Store, tmp_path: Path) -> None:
    store.redis.set(store.keys.versions(), json.dumps({**versions.this_process(), "python": "3.99"}))
    code, lines = _invoke(["worker", "--address", store.url, "--num-cpus", "1"], tmp_path)
    assert code != 0 and len(lines) == 1, lines
    assert "Version mismatch" in lines[0] and "python 3.99" in lines[0]
    assert store.nodes() == []
