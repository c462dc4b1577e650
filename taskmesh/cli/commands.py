"""The `taskmesh` command: start/worker/stop/status/list/summary/logs/timeline/metrics/
memory/microbenchmark. Commands parse and print; the work is done by the modules they call."""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from taskmesh import security
from taskmesh._base import config, versions
from taskmesh.store import connection
from taskmesh.workers import launch

if TYPE_CHECKING:
    import psutil

ADDRESS_HELP = ("Redis address of the cluster (host:port, redis://[USER@]host:port, "
                "rediss://...); its password is best given by --redis-password-file or "
                f"${config.REDIS_PASSWORD.name}, which no command line shows.")
# Where the password file a command was given is noted, for start's hand-over.
_PASSWORD_FILE = "taskmesh.password_file"


def _address_option(required: bool) -> Callable:
    def decorate(fn: Callable) -> Callable:
        fn = _tls_options(_password_options(fn))
        return click.option("--address", envvar=launch.ENV_ADDRESS, required=required,
                            show_envvar=True, help=ADDRESS_HELP)(fn)
    return decorate


def _read_password_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Read the password and hand it on as $TASKMESH_REDIS_PASSWORD (which the Store,
    and child processes, read): a file keeps it off every command line."""
    if value is None:
        return
    try:
        password, loose = security.read_password_file(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    if loose:
        click.echo(f"Warning: {value} can be read by other users than its owner; "
                   f"'chmod 600 {value}' it.", err=True)
    ctx.meta[_PASSWORD_FILE] = value
    _export_env(ctx, config.REDIS_PASSWORD.name, password)


def _refuse_password_argument(ctx: click.Context, param: click.Parameter,
                              value: str | None) -> None:
    """--redis-password on the command line is refused: `ps` shows it to every user of
    the machine while the command runs. Its variable is read where it is used."""
    if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE:
        raise click.BadParameter(
            "a password on the command line is visible to every user of this machine "
            f"(ps); put it in a file only you can read and pass --redis-password-file FILE, "
            f"or set ${config.REDIS_PASSWORD.name}", ctx=ctx, param=param)


def _password_options(fn: Callable) -> Callable:
    fn = click.option("--redis-password", hidden=True, expose_value=False,
                      callback=_refuse_password_argument)(fn)
    return click.option(
        "--redis-password-file", envvar=config.REDIS_PASSWORD_FILE.name, show_envvar=True,
        expose_value=False, type=click.Path(dir_okay=False), callback=_read_password_file,
        help="File holding the Redis password on one line (mode 0600): used when the "
             "address carries none, and by --head for the Redis it starts. Also "
             f"${config.REDIS_PASSWORD.name} (the password itself).")(fn)


def _json_object(ctx: Any, param: Any, value: str | None) -> dict | None:
    """A click callback: the option's JSON object (None when not given)."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e.msg}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"must be a JSON object, e.g. '{{\"disk\": 4}}', got {value!r}")
    return parsed


def _parse_resources(ctx: Any, param: Any, value: str | None) -> dict[str, float]:
    parsed = _json_object(ctx, param, value or None) or {}
    for key, amount in parsed.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise click.BadParameter(f"resource {key!r} must be a non-negative number, got {amount!r}")
        if key in ("CPU", "GPU", "memory"):
            raise click.BadParameter("use --num-cpus / --num-gpus / --memory instead of CPU, GPU "
                                     "or memory in --resources")
    return {k: float(v) for k, v in parsed.items()}


def _canonical(address: str | None) -> str | None:
    if address is None:
        return None
    try:
        return connection.canonicalize_address(address)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--address") from None


def _node_options(fn: Callable) -> Callable:
    @click.option("--num-cpus", type=click.FloatRange(min=0), default=None,
                  help="CPUs this node offers (default: all).")
    @click.option("--num-gpus", type=click.FloatRange(min=0), default=None, help="GPUs this node offers.")
    @click.option("--memory", type=click.IntRange(min=0), default=None,
                  help="Bytes of memory tasks may reserve with `memory=` (default: 70% of the "
                       "memory available at start).")
    @click.option("--resources", callback=_parse_resources, default=None,
                  help='Custom resources as JSON, e.g. \'{"disk": 4}\'.')
    @click.option("--object-store-memory", type=click.IntRange(min=1024 * 1024), default=None,
                  help="Bytes of shared memory for objects on this node (default: 30% of RAM).")
    @click.option("--spill-dir", type=click.Path(file_okay=False), default=None,
                  help="Directory objects are spilled to when shared memory is full "
                       "(default: under the temp dir).")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def _export_env(ctx: click.Context, name: str, value: str | None) -> None:
    """Options that child processes (node agents, their workers) need too travel as
    environment variables, which the Store reads when it is given none; set for the
    command's run and restored when it ends."""
    if not value:
        return
    old = os.environ.get(name)
    os.environ[name] = value

    def restore() -> None:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

    ctx.call_on_close(restore)


def _tls_options(fn: Callable) -> Callable:
    """--tls-ca-file/--tls-cert/--tls-key with their TASKMESH_TLS_* mirrors."""
    for flag, env, what in (
            ("--tls-key", security.ENV_TLS_KEY, "private key (PEM) of --tls-cert"),
            ("--tls-cert", security.ENV_TLS_CERT, "certificate (PEM) this process presents "
                                                   "(with --head: the Redis server's too)"),
            ("--tls-ca-file", security.ENV_TLS_CA_FILE, "CA certificate (PEM) that signed the "
                                                        "server's (and clients') certificates")):
        fn = click.option(flag, envvar=env, show_envvar=True, expose_value=False,
                          type=click.Path(exists=True, dir_okay=False, readable=True),
                          callback=lambda ctx, param, v, env=env: _export_env(ctx, env, v),
                          help=f"For rediss:// addresses: the {what}.")(fn)
    return fn


def _dashboard_options(fn: Callable) -> Callable:
    """`start --head`'s dashboard options, as Ray's (the dashboard: cli/dashboard.py)."""
    fn = click.option("--dashboard-host", default="127.0.0.1", show_default=True, callback=_check_bind,
                      help="Interface the head's dashboard listens on (anything but loopback "
                           "needs its token, written to the temp dir's dashboard-token).")(fn)
    fn = click.option("--dashboard-port", type=click.IntRange(0, 65535), default=8265,
                      show_default=True, help="Port of the head's dashboard.")(fn)
    return click.option("--include-dashboard/--no-include-dashboard", default=True, show_default=True,
                        help="With --head: start the web dashboard too (`taskmesh dashboard`).")(fn)


def _security_options(fn: Callable) -> Callable:
    """--allow-insecure, for commands that start or run node agents (the TLS options come
    with --address)."""
    return click.option(
        "--allow-insecure", is_flag=True, expose_value=False,
        callback=lambda ctx, param, v: _export_env(ctx, security.ENV_ALLOW_INSECURE, "1" if v else None),
        help="Join a Redis on another machine even though it runs commands without a "
             f"password (also ${security.ENV_ALLOW_INSECURE}=1); a warning is logged.")(fn)


def _check_bind(ctx: Any, param: Any, value: str) -> str:
    import ipaddress
    import socket

    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        socket.getaddrinfo(value, None)
    except (OSError, UnicodeError):
        raise click.BadParameter(f"not an IP address or a resolvable host name: {value!r}") from None
    return value


def _advertised_url(url: str, bind: str) -> str:
    """The server's URL as other machines reach it (a wildcard bind names no host)."""
    if bind not in ("0.0.0.0", "::"):
        return url
    host = security.this_machine_ip()
    return url.replace(f"@{bind}:", f"@{host}:").replace(f"://{bind}:", f"://{host}:")


def _head_password() -> str:
    """The password of the Redis --head starts: given (file or variable), else a
    generated one. On loopback too: other users of this machine reach loopback, and
    whoever reaches the cluster runs code as its agents' user. A given one must be
    strong."""
    password = config.REDIS_PASSWORD.get()
    if password is None:
        return security.generate_password()
    try:
        security.check_password(password, what="the Redis password")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=f"--redis-password-file / "
                                                    f"${config.REDIS_PASSWORD.name}") from None
    return password


def _hand_over(url: str, password_file: str | None, tls: security.TlsFiles) -> str:
    """What start --head prints for the other nodes and programs: the address without
    its password, the password file to copy (so the password is on no command line and
    in no output), and the TLS options a rediss:// cluster needs."""
    address = shlex.quote(connection.without_password(url))
    tls_flags = "".join(f" {flag} {shlex.quote(path)}" for flag, path in (
        ("--tls-ca-file", tls.ca_file), ("--tls-cert", tls.cert), ("--tls-key", tls.key)) if path)
    lines = []
    if password_file:
        quoted = shlex.quote(password_file)
        lines += [f"The password is in {password_file} (only you can read it). Whoever holds it "
                  "controls the cluster: keep it secret, or create per-role users with "
                  "'taskmesh acl setup'.",
                  f"To add a node to this cluster, copy {password_file} to it (mode 0600) "
                  "and run there:",
                  f"    taskmesh worker --address {address} --redis-password-file {quoted}{tls_flags}"]
    else:
        lines += ["To add a node to this cluster, run on it:",
                  f"    taskmesh worker --address {address}{tls_flags}"]
    if tls:
        lines.append("    (--tls-cert/--tls-key: better a certificate of that node's own, signed "
                     "by the same CA)")
    exports = []
    if password_file:
        exports.append(f"    export {config.REDIS_PASSWORD.name}="
                       f"\"$(cat {shlex.quote(password_file)})\"")
    if tls:
        exports.append(f"    export {' '.join(f'{k}={shlex.quote(v)}' for k, v in tls.env().items())}")
    init = f"    taskmesh.init(address={connection.without_password(url)!r})"
    if exports:
        lines += ["To connect a program: taskmesh.init(address='auto') on this machine; "
                  "elsewhere, after", *exports, "call", init]
    else:
        lines += ["To connect a program: taskmesh.init(address='auto') on this machine, or", init]
    return "\n".join(lines)


def _node_resources(num_cpus: float | None, num_gpus: float | None, resources: dict,
                    memory: int | None) -> dict:
    """The node's resources: CPU (default: all), GPU, `memory` in bytes (default, as Ray:
    70 % of the memory available now, inside a container's cgroup limit) and custom ones."""
    import psutil

    from taskmesh.objects.capacity import cgroup_memory_limit

    out = {"CPU": float(num_cpus if num_cpus is not None else os.cpu_count() or 1), **resources}
    if num_gpus:
        out["GPU"] = float(num_gpus)
    if memory is None:
        available = psutil.virtual_memory().available
        limit = cgroup_memory_limit()
        if limit is not None:
            available = min(available, limit)
        memory = int(available * 0.7)
    out["memory"] = float(memory)
    return out


class _Main(click.Group):
    """Errors that say all there is to say print as one line, not a traceback: an unsafe
    temp dir, a Redis that cannot be reached or refuses us (past the check of `_connect`,
    which names the address), protected mode, a version mismatch, a busy port."""

    def invoke(self, ctx: click.Context) -> Any:
        from taskmesh.exceptions import StoreUnavailableError, VersionMismatchError

        try:
            return super().invoke(ctx)
        except (config.UnsafeDirectoryError, security.ProtectedModeError, VersionMismatchError,
                launch.PortInUseError) as e:
            raise click.ClickException(str(e)) from None
        except StoreUnavailableError as e:
            raise click.ClickException(" ".join(str(e).split())) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(versions.PACKAGE_VERSION, "--version", prog_name="taskmesh",
                      message=f"%(prog)s %(version)s (Python {versions.this_process()['python']})")
def main() -> None:
    """taskmesh: distributed Python tasks with Redis as the control plane."""


@main.command()
@_address_option(required=False)
@_node_options
@click.option("--head", is_flag=True, help="Start the cluster's Redis here too.")
@click.option("--keep-state", is_flag=True,
              help="With --head: load what the head's Redis held when it was last stopped "
                   "in this temp dir (nodes, actors, jobs, queued tasks, metrics) instead of "
                   "starting an empty cluster.")
@click.option("--port", type=click.IntRange(0, 65535), default=6379, show_default=True,
              help="Port of the Redis server started with --head.")
@click.option("--redis-bind", default="127.0.0.1", show_default=True, callback=_check_bind,
              help="Interface the Redis server started with --head listens on (always "
                   "with a password; other machines reach it only when this is not loopback).")
@click.option("--block", is_flag=True,
              help="Stay in the foreground: stop what was started on Ctrl-C or SIGTERM, and "
                   "exit when one of the started processes exits.")
@_security_options
@_dashboard_options
@click.pass_context
def start(ctx: click.Context, address: str | None, num_cpus: float | None,
          num_gpus: float | None, memory: int | None, resources: dict,
          object_store_memory: int | None, spill_dir: str | None, head: bool, keep_state: bool,
          port: int, redis_bind: str, block: bool, include_dashboard: bool, dashboard_port: int,
          dashboard_host: str) -> None:
    """Start this machine's node in the background (with --head: Redis too).

    With --head, Redis gets a password (on loopback too: other users of this machine
    reach it): the one in --redis-password-file (or $TASKMESH_REDIS_PASSWORD), else a
    generated one, which is written to a file only you can read; what to run on the
    other nodes is printed. The cluster starts empty unless --keep-state: Redis keeps
    an AOF in the temp dir, which is otherwise removed first."""
    if head == bool(address):
        raise click.UsageError("give either --head (start a new cluster) or --address (join one)")
    if keep_state and not head:
        raise click.UsageError("--keep-state goes with --head (the state is the head's Redis)")
    root = config.temp_root()
    pids = []
    tls = security.TlsFiles.from_env()
    password_file = ctx.meta.get(_PASSWORD_FILE)
    if head:
        if tls and not (tls.ca_file and tls.cert and tls.key):
            raise click.UsageError("a Redis with TLS needs --tls-cert, --tls-key and --tls-ca-file")
        running = launch.running_head()
        if running is not None:  # its pid and cluster files would be overwritten
            raise click.ClickException(
                f"a cluster started here still runs ({running}, temp dir {root}): stop it "
                f"with 'taskmesh stop', or start another with its own ${config.ENV_TEMP_DIR}")
        redis_password = _head_password()
        if not keep_state:
            launch.clear_persisted_state(root / "redis")
        server = launch.start_redis(data_dir=root / "redis", host=redis_bind, port=port or None,
                                    password=redis_password, tls=tls or None,
                                    persistent=True, fate_share=False, maxmemory=launch.head_maxmemory())
        url = _advertised_url(server.url, redis_bind)
        pids.append(server.proc.pid)
        _record_versions(server.url, tls)
        if redis_password and password_file is None:
            password_file = str(root / "redis-password")
            security.write_password_file(root / "redis-password", redis_password)
    else:
        joined = _canonical(address)
        assert joined is not None  # --address is given when --head is not
        url = joined
        if tls and not url.startswith("rediss://"):
            raise click.UsageError(connection.tls_scheme_error(url))
        _check_cluster(url)
    log_path = root / "logs" / f"agent-{int(time.time())}-{os.getpid()}.log"
    try:
        proc, node_id = launch.start_agent(
            url, num_cpus=num_cpus, num_gpus=num_gpus, memory=memory, resources=resources,
            log_path=log_path, fate_share=False,
            object_store_memory=object_store_memory, spill_dir=spill_dir)
    except BaseException:
        if head:  # not recorded yet: nothing else would ever stop it
            server.stop()
        raise
    pids.append(proc.pid)
    launch.record_started(pids, url if head else None)
    click.echo(f"Started node {node_id}; its agent logs to {log_path}.")
    if head and include_dashboard:
        dashboard_pid = _start_head_dashboard(ctx, server.url, dashboard_host, dashboard_port)
        if dashboard_pid is not None:
            launch.record_started([dashboard_pid])
            pids.append(dashboard_pid)
    if head:
        click.echo(f"Redis listens on {redis_bind}:{server.port} with a password.")
        click.echo(_hand_over(url, password_file, tls))
    if block:
        _block(pids)


def _block(pids: list[int]) -> None:
    """start --block: wait in the foreground until Ctrl-C, SIGTERM or the exit of one of
    the started processes, then stop them all as `taskmesh stop` would."""
    import signal

    import psutil

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    procs = [psutil.Process(pid) for pid in pids]
    exited: list[psutil.Process] = []
    try:
        signal.signal(signal.SIGTERM, interrupt)
        click.echo("--block: running in the foreground; Ctrl-C stops what was started.")
        while not exited:
            exited, _ = psutil.wait_procs(procs, timeout=1)
    except KeyboardInterrupt:
        pass
    if exited:
        click.echo(f"Process {exited[0].pid} exited (code {exited[0].returncode}); stopping the rest.",
                   err=True)
    _stop_started(config.GRACE_PERIOD_S.get())
    if exited:
        raise SystemExit(1)


def _start_head_dashboard(ctx: click.Context, address: str, host: str, port: int) -> int | None:
    """Start the head's dashboard as a process of its own and print its URL; its pid,
    for `taskmesh stop`. A busy port fails the start when the dashboard was asked for
    on the command line, else it is left out with a warning (the cluster matters more)."""
    root = config.temp_root()
    token_file = None
    if not security.is_loopback(host):
        token_file = root / "dashboard-token"
        security.write_password_file(token_file, security.generate_password())
    explicit = any(ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
                   for name in ("include_dashboard", "dashboard_port", "dashboard_host"))
    try:
        proc, url = launch.start_dashboard(
            address, host=host, port=port, token_file=token_file, fate_share=False,
            log_path=root / "logs" / f"dashboard-{os.getpid()}.log")
    except (launch.PortInUseError, RuntimeError) as e:
        if explicit:
            raise click.ClickException(f"{e} (The cluster was started: 'taskmesh stop' "
                                       "stops it.)") from None
        click.echo(f"Warning: no dashboard: {e}", err=True)
        return None
    click.echo(f"Dashboard: {url}" + (f" (its token is in {token_file})" if token_file else ""))
    return proc.pid


def _record_versions(url: str, tls: security.TlsFiles) -> None:
    """The head's versions are the cluster's, over any an earlier cluster left in the
    data directory (with --keep-state, its AOF is loaded again)."""
    from taskmesh.store import Store

    store = Store(url, tls=tls or None)
    try:
        store.set_cluster_versions(versions.this_process())
    finally:
        store.close()


def _check_cluster(url: str) -> None:
    """Fail with one line, before starting anything, on a Redis the agent would refuse."""
    from taskmesh.exceptions import StoreUnavailableError, VersionMismatchError
    from taskmesh.store import Store

    try:
        store = Store(url)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        security.check_server(store)
    except (ValueError, VersionMismatchError) as e:
        raise click.ClickException(str(e)) from None
    except StoreUnavailableError as e:
        raise click.ClickException(connection.failure_message(url, e)) from None
    finally:
        store.close()


@main.command()
@_address_option(required=True)
@_node_options
@click.option("--node-ip-address", default=None, help="IP to register (default: the one that reaches Redis).")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.option("--grace-period-s", type=click.FloatRange(min=0), default=config.GRACE_PERIOD_S.default,
              envvar=config.GRACE_PERIOD_S.name, show_default=True, show_envvar=True,
              help="On SIGTERM the node drains: it takes no new tasks and lets running ones "
                   "finish for up to this long, then hands the rest back to their queues.")
@_security_options
def worker(address: str, num_cpus: float | None, num_gpus: float | None, memory: int | None,
           resources: dict, object_store_memory: int | None, spill_dir: str | None,
           node_ip_address: str | None, ready_fd: int | None, grace_period_s: float) -> None:
    """Run a node agent in the foreground: register this node and run its tasks."""
    from taskmesh.workers import NodeAgent, object_store_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = _canonical(address)
    assert url is not None
    _check_cluster(url)
    try:
        agent = NodeAgent(url, resources=_node_resources(num_cpus, num_gpus, resources, memory),
                          node_ip=node_ip_address, grace_period_s=grace_period_s,
                          object_store=object_store_config(object_store_memory, spill_dir))
        agent.run(ready_fd=ready_fd)
    except ValueError as e:  # TLS files with a plain address, or a Redis taskmesh must
        raise click.ClickException(str(e)) from None  # not use (see check_server)


def _drain_agents(procs: list[psutil.Process], timeout_s: float) -> None:
    """SIGTERM only the node agents among `procs` (not their workers, nor Redis, which
    they need while draining) and wait for them to exit."""
    import psutil

    from taskmesh.workers.process import wait_exited

    agents = []
    for proc in procs:
        try:
            cmdline = proc.cmdline()
            if "taskmesh.cli" in cmdline and "worker" in cmdline:
                proc.terminate()
                agents.append(proc)
        except psutil.Error:
            continue
    wait_exited(agents, timeout_s)


@main.command()
@click.option("--grace-period-s", type=click.FloatRange(min=0), default=config.GRACE_PERIOD_S.default,
              envvar=config.GRACE_PERIOD_S.name, show_default=True, show_envvar=True,
              help="How long the node agents may drain (finish running tasks, move actors) "
                   "before they are stopped at once (their tasks then go back to their queues).")
def stop(grace_period_s: float) -> None:
    """Stop the nodes (and Redis) that `taskmesh start` started on this machine: the
    agents drain first (SIGTERM), then whatever is left is stopped. A recorded pid that
    is now another process (after a reboot, say) is left alone."""
    _stop_started(grace_period_s)


def _stop_started(grace_period_s: float) -> None:
    """Drain and stop what `taskmesh start` recorded on this machine, and forget it."""
    import psutil

    from taskmesh.workers.process import has_exited, stop_processes

    procs, unproven = launch.started_processes()
    every = list(procs)  # the agents' workers are counted too
    for proc in procs:
        try:
            every += proc.children(recursive=True)
        except psutil.Error:
            continue
    _drain_agents(procs, timeout_s=grace_period_s + 10)  # + their own shutdown
    stop_processes(procs, timeout_s=10)
    stopped = sum(map(has_exited, every))
    launch.forget_started()
    for name in ("redis-password", "dashboard-token"):  # start --head's
        (config.temp_root() / name).unlink(missing_ok=True)
    click.echo(f"Stopped {stopped} process(es).")
    if unproven:
        click.echo(f"Left alone {unproven} recorded pid(s) that are no longer processes "
                   "'taskmesh start' started.")


@main.command()
@_address_option(required=False)
def status(address: str | None) -> None:
    """Nodes, resources and queues, read from Redis."""
    from taskmesh.util.state import resource_usage

    store = _connect(address)
    url = store.url
    try:
        nodes = store.nodes()
        queues = store.queue_stats()
        persistence = security.persistence(store.redis)
        policy = store.eviction_policy()
    finally:
        store.close()
    alive = [n for n in nodes if n["alive"]]
    click.echo(f"Cluster at {connection.mask_password(url)}")
    click.echo(f"Persistence: AOF {persistence['aof']}; RDB {persistence['rdb']}")
    if policy is None:
        click.echo("Eviction: maxmemory-policy unknown (neither INFO nor CONFIG allowed)")
    elif security.evicts(policy):
        click.echo(f"Eviction: maxmemory-policy {policy} -- WARNING: Redis may evict "
                   "taskmesh's keys and lose tasks and objects; set noeviction")
    else:
        click.echo(f"Eviction: maxmemory-policy {policy}")
    click.echo(f"Nodes: {len(alive)} alive, {len(nodes) - len(alive)} dead")
    for n in nodes:
        state = "ALIVE" if n["alive"] else "DEAD"
        click.echo(f"  {n['node_id']}  {state:5}  {n.get('ip', '?'):15}  {_usage(n)}")
    click.echo("Resources (used/total):")
    for k, (used, total) in resource_usage(nodes).items():
        click.echo(f"  {k}: {_amount(k, used)}/{_amount(k, total)}")
    click.echo("Tasks:")
    queued = sum(q for q, _ in queues.values())
    running = sum(r for _, r in queues.values())
    click.echo(f"  queued: {queued}  running: {running}")
    for shape, (q, r) in sorted(queues.items()):
        click.echo(f"    {shape}: queued {q}, running {r}")


@main.group()
def acl() -> None:
    """Redis ACL users for each role: driver, agent, readonly."""


def _check_prefix(ctx: Any, param: Any, value: str) -> str:
    if not value or any(c in value for c in "*?[]{}\\ :"):
        raise click.BadParameter(f"must be non-empty without glob characters, spaces or ':', got {value!r}")
    return value


def _parse_password_files(ctx: Any, param: Any, values: tuple[str, ...]) -> dict[str, str]:
    """ROLE=FILE pairs: each role's password, read from the first line of its file (a
    password on the command line would be visible to every user of the machine)."""
    out = {}
    for item in values:
        role, sep, path = item.partition("=")
        if not sep or role not in security.ROLES:
            raise click.BadParameter(f"expected ROLE=FILE with ROLE one of "
                                     f"{', '.join(security.ROLES)}, got {role!r}")
        try:
            with open(path) as f:
                password = f.readline().strip()
        except OSError as e:
            raise click.BadParameter(f"cannot read the {role} password from {path}: "
                                     f"{e.strerror or e}") from None
        try:
            security.check_password(password, what=f"the {role} password")
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        out[role] = password
    return out


def _refuse_role_password(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        raise click.BadParameter(
            "a password on the command line is visible to every user of this machine "
            "(ps); put it in a file only you can read and pass --password-file ROLE=FILE",
            ctx=ctx, param=param)


@acl.command(name="setup")
@_address_option(required=False)
@click.option("--prefix", default="tm", show_default=True, callback=_check_prefix,
              help="The cluster's key prefix the users are confined to.")
@click.option("--user-prefix", default="", help="Prepended to each user name (to give "
                                                "several clusters on one Redis their own users).")
@click.option("--password", multiple=True, hidden=True, expose_value=False,
              callback=_refuse_role_password)
@click.option("--password-file", "passwords", multiple=True, metavar="ROLE=FILE",
              callback=_parse_password_files,
              help="A role's password, on the first line of FILE (repeatable; default: generated).")
def acl_setup(address: str | None, prefix: str, user_prefix: str, passwords: dict[str, str]) -> None:
    """Create (or replace) the users driver, agent and readonly, confined to the prefix
    and to the address's database; print their addresses. The address must carry
    credentials allowed to run ACL SETUSER (an admin)."""
    import redis

    store = _connect(address)
    try:
        users = security.setup_acl(store.redis, prefix, passwords, user_prefix=user_prefix)
    except redis.ResponseError as e:
        raise click.ClickException(f"ACL SETUSER failed at {connection.mask_password(store.url)} "
                                   f"(the address needs an admin's credentials): {e}") from None
    finally:
        store.close()
    click.echo("Created these users; hand each address only to processes of that role:")
    for user, password in users.items():
        click.echo(f"  {user:10} {security.user_url(store.url, user, password)}")


@acl.command(name="rules")
@click.argument("role", type=click.Choice(security.ROLES))
@click.option("--prefix", default="tm", show_default=True, callback=_check_prefix)
@click.option("--db", type=click.IntRange(min=0), default=0, show_default=True,
              help="The database the role is confined to.")
def acl_rules(role: str, prefix: str, db: int) -> None:
    """Print the ACL SETUSER rules of a role."""
    click.echo(" ".join(security.acl_rules(role, prefix, db)))


@main.command()
@_address_option(required=False)
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the largest objects to list.")
def memory(address: str | None, top: int) -> None:
    """Object-store usage per node and the largest objects, read from Redis."""
    store = _connect(address)
    try:
        nodes = [n for n in store.nodes() if n["alive"]]
        objs = store.object_summaries()
    finally:
        store.close()
    click.echo(f"{'node':18} {'used':>10} {'capacity':>10} {'objects':>8} {'spilled':>10} "
               f"{'spilled objs':>12} {'free pool':>10}")
    for n in nodes:
        click.echo(f"{n['node_id']:18} {_mib(n.get('store_used'))} {_mib(n.get('store_capacity'))} "
                   f"{int(n.get('store_objects', 0)):8} {_mib(n.get('store_spilled'))} "
                   f"{int(n.get('store_spilled_objects', 0)):12} {_mib(n.get('store_free_pool'))}")
    for n in nodes:
        if n.get("store_capacity_note"):
            click.echo(f"{n['node_id']:18} capacity: {n['store_capacity_note']}")
    inline = [o for o in objs if o["kind"] != "shm"]
    shared = [o for o in objs if o["kind"] == "shm"]
    click.echo(f"Objects: {len(shared)} in shared memory ({_mib(sum(o['size'] for o in shared)).strip()}), "
               f"{len(inline)} inline in Redis ({_mib(sum(o['size'] for o in inline)).strip()})")
    if top and objs:
        click.echo(f"Largest {min(top, len(objs))}:")
        click.echo(f"  {'object id':30} {'size':>10} {'kind':6} {'owner':8}  {'nodes':18} held by")
        for o in sorted(objs, key=lambda o: -o["size"])[:top]:
            click.echo(f"  {o['object_id']:30} {_mib(o['size'])} {o['kind']:6} {o['owner']:8}  "
                       f"{','.join(o['nodes']) or '-':18} {_holders(o['holders'])}")


def _holders(holders: list[str]) -> str:
    """The reference kinds holding an object, as `ray memory` lists them."""
    names = {"owner": "LOCAL_REFERENCE (owner)", "p": "BORROWED by process", "o": "CAPTURED_IN_OBJECT"}
    out = []
    for h in holders:
        kind, _, who = h.partition(":")
        out.append(names["owner"] if kind == "owner" else f"{names.get(kind, kind)} {who}")
    return "; ".join(out) or "-"


def _mib(value: Any) -> str:
    return f"{int(value or 0) / 2**20:8.1f}Mi"


def _amount(key: str, value: float) -> str:
    """A resource amount as people read it: memory in GiB, the rest as numbers."""
    return f"{value / 2**30:.1f}GiB" if key == "memory" else f"{value:g}"


def _usage(node: dict) -> str:
    total, avail = node["resources_total"], node["resources_available"]
    return "  ".join(f"{k} {_amount(k, total[k] - avail.get(k, 0.0))}/{_amount(k, total[k])}"
                     for k in sorted(total))


def _connect(address: str | None) -> Any:
    """A Store on the cluster that answers PING, or a one-line error."""
    from taskmesh.exceptions import StoreUnavailableError
    from taskmesh.store import Store

    # `start --head`'s cluster first, else the newest local one of a running init().
    url = _canonical(address) or launch.current_cluster_address(include_local=True)
    if url is None:
        raise click.UsageError("no cluster is running on this machine: pass --address or "
                               "start one with 'taskmesh start --head' (or taskmesh.init())")
    try:
        store = Store(url)
    except ValueError as e:  # TLS files with an address that is not rediss://
        raise click.UsageError(str(e)) from None
    try:  # one line naming the address, rather than a traceback at the first read
        security.check_reachable(store)
    except StoreUnavailableError as e:
        store.close()
        raise click.ClickException(connection.failure_message(url, e)) from None
    except security.ProtectedModeError as e:
        store.close()
        raise click.ClickException(str(e)) from None
    return store


@main.command(name="list")
@click.argument("what", type=click.Choice(["actors", "nodes", "objects", "jobs", "tasks",
                                           "placement-groups"]))
@_address_option(required=False)
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only rows whose KEY equals (KEY!=VALUE: differs from) VALUE (repeatable), "
                   "e.g. --filter state=ALIVE.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Show at most this many rows (the newest tasks for `tasks`).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A table of the main columns, or every field of each row as a JSON array.")
def list_(what: str, address: str | None, filters: tuple[str, ...], limit: int | None, fmt: str) -> None:
    """List actors, nodes, objects, jobs, tasks or placement groups, read from Redis."""
    from taskmesh.util import state

    try:
        wanted = [state.parse_filter(f) for f in filters]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--filter") from None
    store = _connect(address)
    try:
        if what == "tasks":
            columns = ["task_id", "attempt_number", "name", "state", "type", "job_id", "node_id",
                       "worker_pid", "error_type"]
            rows = state.task_rows(store)
        elif what == "actors":
            columns = ["actor_id", "class_name", "state", "name", "namespace", "node_id", "pid", "restarts"]
            rows = store.actors()
        elif what == "nodes":
            columns = ["node_id", "state", "ip", "hostname", "pid"]
            rows = [{**n, "state": "ALIVE" if n["alive"] else "DEAD"} for n in store.nodes()]
        elif what == "placement-groups":
            columns = ["pg_id", "name", "strategy", "state", "bundles", "nodes", "job_id"]
            rows = [{**g, "bundles": json.dumps(g["bundles"]),
                     "nodes": ",".join(g["bundle_nodes"].get(i, "-") for i in range(len(g["bundles"])))}
                    for g in store.pg_infos()]
        elif what == "objects":
            columns = ["object_id", "kind", "size", "owner", "nodes", "holders"]
            rows = [{**o, "nodes": ",".join(o["nodes"]), "holders": ",".join(o["holders"])}
                    for o in store.object_summaries()]
        else:
            columns = ["job_id", "state", "namespace", "driver_pid", "host", "start_ms", "end_ms"]
            rows = store.job_infos()
    finally:
        store.close()
    try:  # a key no row has and no column names is a typo, not a filter that matches nothing
        rows = state.apply_filters(rows, wanted, columns={*columns, *(k for r in rows for k in r)})
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--filter") from None
    if limit is not None:
        rows = rows[-limit:] if limit else []
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_table(rows, columns, what)


def _print_table(rows: list[dict[str, Any]], columns: list[str], what: str) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    click.echo(f"{len(rows)} {what}")


@main.command()
@click.option("--pid", "pids", type=int, multiple=True,
              help="Only these processes (default: every node agent and worker on this machine).")
def stack(pids: tuple[int, ...]) -> None:
    """Print the Python stacks of this machine's node agents and workers (each writes
    its own on SIGUSR2; no debugger needed)."""
    import psutil

    from taskmesh.workers import process as _process

    if not pids:
        pids = tuple(p.pid for p in psutil.process_iter(["cmdline"])
                     if _is_taskmesh_process(p.info["cmdline"]))
        if not pids:
            raise click.ClickException("no taskmesh node agent or worker runs on this machine")
    for pid in pids:
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:
            cmdline = None
        if not _is_taskmesh_process(cmdline):
            raise click.BadParameter(f"{pid} is not a taskmesh node agent or worker on this machine "
                                     "(leave out --pid for every one)", param_hint="--pid")
    stacks = _process.dump_stacks(config.temp_root(), pids)
    for pid in pids:
        try:
            what = " ".join(psutil.Process(pid).cmdline()[1:4])
        except psutil.Error:
            what = "(gone)"
        click.echo(f"==== pid {pid}: {what}")
        click.echo(stacks.get(pid) or "(no stack: not a taskmesh process, or it did not answer)")


def _is_taskmesh_process(cmdline: list[str] | None) -> bool:
    """A worker (`-m taskmesh.workers.worker_main`) or a node agent (`taskmesh worker`, or
    `-m taskmesh.cli worker`)."""
    args = list(cmdline or [])
    if "taskmesh.workers.worker_main" in args:
        return True
    return any((a == "taskmesh.cli" or os.path.basename(a) == "taskmesh") and nxt == "worker"
               for a, nxt in itertools.pairwise(args))


@main.command()
@click.argument("what", type=click.Choice(["tasks"]))
@_address_option(required=False)
def summary(what: str, address: str | None) -> None:
    """Count tasks by function name and state (each task's latest attempt)."""
    from taskmesh._core import events as _events

    store = _connect(address)
    try:
        result = _events.summarize(_events.task_rows(store.task_events()))["cluster"]
    finally:
        store.close()
    states = sorted({s for e in result["summary"].values() for s in e["state_counts"]})
    rows = [{"name": name, "type": e["type"], **{s: e["state_counts"].get(s, 0) for s in states}}
            for name, e in sorted(result["summary"].items())]
    click.echo(f"Total tasks: {result['total_tasks']}")
    _print_table(rows, ["name", "type", *states], "functions")


@main.command()
@_address_option(required=False)
@click.option("--job", "job_id", default=None, help="The job's id (default: the latest job with output).")
@click.option("--node", "node_id", default=None, help="Only output of workers on this node.")
@click.option("--actor", "actor_id", default=None, help="Only output of this actor.")
@click.option("--pid", type=int, default=None, help="Only output of the worker with this pid.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
def logs(address: str | None, job_id: str | None, node_id: str | None, actor_id: str | None,
         pid: int | None, tail: int | None) -> None:
    """Print what the workers of a job wrote to stdout/stderr, on any node.

    Workers send their output to Redis (besides the job's driver), so this reads it from
    there, from any machine; the node agents' own logs stay in files on each node."""
    from taskmesh.util.state import log_lines

    store = _connect(address)
    try:
        known = store.log_jobs()
        if job_id is None and not known:
            raise click.ClickException("no worker output recorded in this cluster yet")
        if job_id is not None and job_id not in known and \
                job_id not in {j["job_id"] for j in store.job_infos()}:
            raise click.BadParameter(f"no job {job_id!r} in this cluster (see 'taskmesh list jobs')",
                                     param_hint="--job")
        lines = log_lines(store, job_id, node_id, actor_id, pid)
    finally:
        store.close()
    if tail is not None:
        lines = lines[-tail:] if tail else []
    for worker_pid, name, stream, line in lines:
        click.echo(f"({name} pid={worker_pid}) {line}", err=stream == "stderr")


@main.command()
@_address_option(required=False)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="File to write (default: timeline-<time>.json under the temp dir).")
def timeline(address: str | None, output: str | None) -> None:
    """Write the tasks that ran as a Chrome trace (open in chrome://tracing or Perfetto)."""
    from taskmesh._core import events as _events

    store = _connect(address)
    try:
        trace = _events.timeline(store)
    finally:
        store.close()
    path = output or str(config.temp_root() / f"timeline-{time.strftime('%Y-%m-%d_%H-%M-%S')}.json")
    _events.write_trace(trace, path)
    click.echo(f"Wrote {len(trace)} task events to {path}")


@main.command()
@_address_option(required=False)
@click.option("--serve", "port", type=click.IntRange(0, 65535), default=None,
              help="Serve the metrics over HTTP on this port (GET /metrics) instead of printing them.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface --serve listens on.")
def metrics(address: str | None, port: int | None, host: str) -> None:
    """Print the cluster's metrics in Prometheus' text format: the built-in ones (tasks,
    queues, actors, nodes, resources, object stores, dead letters) and users'
    (taskmesh.util.metrics)."""
    from prometheus_client import start_wsgi_server

    from taskmesh.dashboard import metrics as cluster_metrics

    store = _connect(address)
    if port is None:
        try:
            click.echo(cluster_metrics.render(store)[0].decode(), nl=False)
        finally:
            store.close()
        return
    try:  # prometheus_client's WSGI server, in a thread of its own; any path answers
        server, thread = start_wsgi_server(port, host, registry=cluster_metrics.registry(store))
    except OSError as e:
        store.close()
        holder = launch.port_holder(host, port) if e.errno == errno.EADDRINUSE else None
        raise click.ClickException(f"cannot serve on {host}:{port}: "
                                   f"{e.strerror or e}" + (f" (by {holder})" if holder else "")) from None
    click.echo(f"Serving metrics on http://{host}:{server.server_address[1]}/metrics", err=True)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        store.close()


@main.command()
@click.option("--quick", is_flag=True, help="Fewer iterations (a smoke run).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def microbenchmark(quick: bool, as_json: bool) -> None:
    """Run Ray's core microbenchmarks on a local taskmesh cluster."""
    from taskmesh.tools import microbenchmark as mb

    results = mb.run_all("taskmesh", quick=quick)
    if as_json:
        click.echo(json.dumps(results))
    else:
        for row in results:
            click.echo(f"{row['name']:<40} {row['value']:>12.1f} {row['unit']}")

