"""What careless configuration must not get past: a Redis that is open only on the
cluster's own prefix, ACL roles that reach beyond their prefix and database or flush the
server's scripts, passwords on command lines, in reprs or too weak, TLS files with a
plaintext address, protected mode's refusal, and an eviction policy changed on a running
cluster. Against real servers; processes only where marked."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

import taskmesh
from conftest import error_lines, machine_ip
from taskmesh import security
from taskmesh.cli import main as cli
from taskmesh.cli.commands import _hand_over
from taskmesh.security import InsecureRedisError, ProtectedModeError, check_server
from taskmesh.store import Store
from taskmesh.store.connection import env_password, url_password, without_password
from taskmesh.workers import launch
from taskmesh.workers.monitor import Monitor

STRONG = "Strong-Enough-Pass-42"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[launch.RedisServer]:
    """A server of this test's own, on every interface, with no password, and a user
    `admin` (password STRONG) to change it with."""
    srv = launch.start_redis(data_dir=tmp_path / "redis", host="0.0.0.0")
    with redis.Redis(host="127.0.0.1", port=srv.port) as client:
        client.execute_command("ACL", "SETUSER", "admin", "on", f">{STRONG}", "~*", "&*", "+@all")
    yield srv
    srv.stop()


def admin_of(srv: launch.RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=srv.port, username="admin", password=STRONG)


# ---- F6: open on the cluster's prefix is open ------------------------------------------

@pytest.mark.parametrize(("rules", "reach"), [
    (["~tm:*", "&*", "+@all"], "may read the cluster's keys (tm:*)"),
    (["%R~tm:*", "+@all"], "may read the cluster's keys (tm:*)"),
    (["%W~tm:*", "+del"], "may write the cluster's keys (tm:*)"),
    (["~tm:*", "+xadd"], "may queue to the cluster's keys (tm:*)"),
    (["~other:*", "+@all"], "may run CONFIG"),
])
def test_a_default_user_without_password_that_reaches_the_cluster_is_open(
        server: launch.RedisServer, rules: list[str], reach: str) -> None:
    admin_of(server).execute_command("ACL", "SETUSER", "default", "on", "nopass",
                                     "resetkeys", "resetchannels", "-@all", *rules)
    store = Store(f"redis://{machine_ip()}:{server.port}")
    try:
        with pytest.raises(InsecureRedisError, match="without a password") as refused:
            check_server(store)
        assert reach in str(refused.value)
        with pytest.raises(InsecureRedisError):
            taskmesh.init(address=store.url)
        assert not taskmesh.is_initialized()
        assert admin_of(server).dbsize() == 0  # the probes changed nothing
    finally:
        store.close()


def test_a_default_user_kept_off_the_prefix_and_administration_is_not_open(
        server: launch.RedisServer) -> None:
    admin_of(server).execute_command("ACL", "SETUSER", "default", "on", "nopass", "resetkeys",
                                     "~other:*", "+@all", "-@admin", "-@dangerous")
    store = Store(f"redis://{machine_ip()}:{server.port}")
    try:
        check_server(store)  # another application's keys are its business
    finally:
        store.close()
    other = Store(f"redis://{machine_ip()}:{server.port}", prefix="other")
    try:
        with pytest.raises(InsecureRedisError, match=r"other:\*"):  # but not a cluster's there
            check_server(other)
    finally:
        other.close()


# ---- F9: roles stay in their prefix and database, and leave the server's scripts alone --

LIBRARY = "#!lua name=probe\nredis.register_function('probe', function() return 1 end)"


def beyond_its_cluster(client: redis.Redis) -> list[Callable[[], object]]:
    """What a role of cluster tmA must not do: touch tmB, act on every client's scripts
    and functions, or leave its database."""
    return [lambda: client.get("tmB:job:1"),
            lambda: client.set("tmB:job:1", "mine"),
            lambda: client.xadd("tmB:q:CPU=1", {"task": "x"}),
            lambda: client.publish("tmB:cancel", "x"),
            lambda: client.script_flush(),
            lambda: client.execute_command("SCRIPT", "KILL"),
            lambda: client.function_flush(),
            lambda: client.function_load(LIBRARY),
            lambda: client.function_delete("probe"),
            lambda: client.execute_command("SELECT", 1),
            lambda: client.move("tmA:job:1", 1),
            lambda: client.copy("tmA:job:1", "tmA:job:2", destination_db=1)]


def test_roles_are_confined_to_their_prefix_and_database(tmp_path: Path) -> None:
    """Two clusters on one Redis (prefixes tmA and tmB): neither's users reach the
    other's keys, another database, or what all clients of the server share (cached
    scripts, functions); loading and running their own scripts still works."""
    srv = launch.start_redis(data_dir=tmp_path / "acl", password=STRONG)
    try:
        admin = redis.Redis.from_url(srv.url)
        users_a = security.setup_acl(admin, "tmA", user_prefix="a-")
        security.setup_acl(admin, "tmB", user_prefix="b-")
        admin.set("tmB:job:1", "theirs")
        admin.set("tmA:job:1", "ours")
        denied = redis.exceptions.NoPermissionError
        for role in ("driver", "agent"):
            user = f"a-{role}"
            client = redis.Redis(host=srv.host, port=srv.port, username=user,
                                 password=users_a[user])
            sha = client.script_load("return redis.call('GET', KEYS[1])")  # still allowed
            assert client.evalsha(sha, 1, "tmA:job:1") == b"ours"
            with pytest.raises(redis.ResponseError):  # a script cannot cross over either
                client.evalsha(sha, 1, "tmB:job:1")
            for attempt in beyond_its_cluster(client):
                with pytest.raises(denied):
                    attempt()
            assert admin.get("tmB:job:1") == b"theirs"
            assert admin.script_exists(sha) == [True]
        readonly = redis.Redis(host=srv.host, port=srv.port, username="a-readonly",
                               password=users_a["a-readonly"])
        assert readonly.get("tmA:job:1") == b"ours"
        for attempt in (lambda: readonly.get("tmB:job:1"),
                        lambda: readonly.execute_command("SELECT", 1)):
            with pytest.raises(denied):
                attempt()

        # A cluster in database 3: its users select 3 (on connect) and no other.
        admin3 = redis.Redis.from_url(srv.url + "/3")
        users3 = security.setup_acl(admin3, "tm", user_prefix="db3-")
        driver3 = Store(security.user_url(srv.url + "/3", "db3-driver", users3["db3-driver"]))
        try:
            assert driver3.ping()
            driver3.redis.set("tm:kv:x", "in 3")
            assert admin3.get("tm:kv:x") == b"in 3" and admin.get("tm:kv:x") is None
            with pytest.raises(denied):
                driver3.redis.execute_command("SELECT", 0)
        finally:
            driver3.close()
        assert security.acl_rules("agent", "tm", 3)[-6:-1] == [
            "-select", "+select|3", "-move", "-copy", "&tm:*"]
    finally:
        srv.stop()


# ---- F10: passwords ---------------------------------------------------------------------

def test_a_password_on_the_command_line_is_refused() -> None:
    for argv in (["start", "--head", "--redis-password", STRONG],
                 ["worker", "--address", "h:1", "--redis-password", STRONG],
                 ["status", "--address", "h:1", "--redis-password", STRONG]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 2, result.output
        [line] = error_lines(result.output)
        assert "--redis-password" in line and "ps" in line and "--redis-password-file" in line
        assert STRONG not in result.output
    helped = CliRunner().invoke(cli, ["start", "--help"]).output
    assert "--redis-password-file" in helped and "--redis-password " not in helped


@pytest.mark.parametrize("password", ["x9Q", "short-pass-15ch"])
def test_weak_passwords_are_refused(password: str, tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    for argv, env in ((["start", "--head"], {"TASKMESH_REDIS_PASSWORD": password}),
                      (["start", "--head", "--redis-password-file", str(pw_file)], {}),
                      (["acl", "setup", "--address", "h:1", "--password-file", f"agent={pw_file}"], {})):
        result = CliRunner().invoke(cli, argv, env=env)
        assert result.exit_code == 2, result.output
        [line] = error_lines(result.output)
        assert "too weak" in line and f"at least {security.MIN_PASSWORD_CHARS}" in line
        assert password not in line
    with pytest.raises(ValueError, match="too weak"):
        security.check_password(password)
    security.check_password(STRONG)


def test_the_password_travels_outside_the_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$TASKMESH_REDIS_PASSWORD (or a password file) serves an address without one, and
    neither the Store's url nor what init() returns shows it."""
    srv = launch.start_redis(data_dir=tmp_path / "pw", password=STRONG)
    bare = f"redis://127.0.0.1:{srv.port}"
    try:
        assert url_password(srv.url) == STRONG and without_password(srv.url) == bare
        assert without_password("redis://driver:pw@h:1/2") == "redis://driver@h:1/2"
        monkeypatch.setenv("TASKMESH_REDIS_PASSWORD", STRONG)
        assert env_password(bare) == STRONG and env_password(srv.url) is None
        store = Store(bare)
        try:
            assert store.ping() and store.url == bare
        finally:
            store.close()
        ctx = taskmesh.init(address=srv.url)  # the password in the address, this time
        try:
            assert STRONG not in repr(ctx) and STRONG not in str(ctx.address_info)
            assert ctx.address_info["redis_address"] == f"redis://:***@127.0.0.1:{srv.port}"
            again = taskmesh.init(address=srv.url, ignore_reinit_error=True)
            assert STRONG not in repr(again)
        finally:
            taskmesh.shutdown()

        monkeypatch.delenv("TASKMESH_REDIS_PASSWORD")
        pw_file = tmp_path / "password"
        pw_file.write_text(STRONG + "\n")
        pw_file.chmod(0o644)
        status = CliRunner().invoke(cli, ["status", "--address", bare,
                                          "--redis-password-file", str(pw_file)])
        assert status.exit_code == 0, status.output
        assert "can be read by other users" in status.output and STRONG not in status.output
        assert "TASKMESH_REDIS_PASSWORD" not in os.environ  # handed on for that command only
    finally:
        srv.stop()


def test_start_hands_over_without_the_password() -> None:
    tls = security.TlsFiles("/pki/ca.pem", "/pki/node.pem", "/pki/node.key")
    text = _hand_over(f"rediss://:{STRONG}@192.0.2.7:6379", "/run/tm/redis-password", tls)
    assert STRONG not in text
    assert ("taskmesh worker --address rediss://192.0.2.7:6379 --redis-password-file "
            "/run/tm/redis-password --tls-ca-file /pki/ca.pem --tls-cert /pki/node.pem "
            "--tls-key /pki/node.key\n") in text
    assert 'export TASKMESH_REDIS_PASSWORD="$(cat /run/tm/redis-password)"' in text
    assert "TASKMESH_TLS_CA_FILE=/pki/ca.pem" in text


# ---- F10: TLS files with a plaintext address --------------------------------------------

def test_tls_files_with_a_plain_address_are_an_error(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValueError, match="tls_ca_file/tls_cert/tls_key.*not rediss://"):
        taskmesh.init(address="redis://127.0.0.1:1", tls_ca_file=str(ca))
    assert not taskmesh.is_initialized()
    for argv, code in ((["status", "--address", "redis://:hunter2@h:1"], 2),
                       (["start", "--address", "redis://:hunter2@h:1"], 2)):
        result = CliRunner().invoke(cli, [*argv, "--tls-ca-file", str(ca)])
        assert result.exit_code == code, result.output
        [line] = error_lines(result.output)
        assert "--tls-ca-file" in line and "not rediss://" in line and "hunter2" not in line


# ---- F10: protected mode, eviction policy ------------------------------------------------

@pytest.mark.cluster
def test_protected_mode_refusal_is_one_line(tmp_path: Path) -> None:
    srv = launch.start_redis(data_dir=tmp_path / "protected", host="0.0.0.0",
                             extra_args=("--protected-mode", "yes"))
    url = f"redis://{machine_ip()}:{srv.port}"
    try:
        store = Store(url)
        try:
            with pytest.raises(ProtectedModeError, match="protected mode"):
                check_server(store)
        finally:
            store.close()
        agent = subprocess.run([sys.executable, "-m", "taskmesh.cli", "worker", "--address", url],
                               capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert agent.returncode == 1
        assert "Traceback" not in agent.stderr
        [line] = error_lines(agent.stderr)
        assert "refused this client: it is in protected mode" in line
    finally:
        srv.stop()


def test_an_eviction_policy_set_later_is_noticed_and_shown(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = launch.start_redis(data_dir=tmp_path / "evict")
    store = Store(srv.url)
    try:
        check_server(store)
        status = CliRunner().invoke(cli, ["status", "--address", srv.url])
        assert "Eviction: maxmemory-policy noeviction" in status.output
        store.redis.config_set("maxmemory-policy", "allkeys-lru")
        status = CliRunner().invoke(cli, ["status", "--address", srv.url])
        assert status.exit_code == 0, status.output
        assert "Eviction: maxmemory-policy allkeys-lru -- WARNING" in status.output

        # The running failure monitor re-reads it (at most once a minute) and says so once.
        monitor = Monitor(store, "node-1", node_timeout_ms=60_000)
        with caplog.at_level(logging.INFO, logger="taskmesh.security"):
            monitor.tick()
            monitor.tick()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "'allkeys-lru'" in errors[0].getMessage()
        monitor.release()

        watch = security.EvictionWatch(interval_s=0)
        with caplog.at_level(logging.INFO, logger="taskmesh.security"):
            caplog.clear()
            assert watch.check(store) == "allkeys-lru"
            assert watch.check(store) == "allkeys-lru"
            store.redis.config_set("maxmemory-policy", "noeviction")
            assert watch.check(store) == "noeviction"
        assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
        assert "back to maxmemory-policy 'noeviction'" in caplog.records[1].getMessage()
    finally:
        store.close()
        srv.stop()
