"""The public API: init/shutdown, remote, get/put/wait, and cluster introspection."""

from __future__ import annotations

import atexit
import json
import logging
import operator
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import msgpack
import psutil

from taskmesh import security
from taskmesh._base import config, deprecation, wire
from taskmesh._core import context
from taskmesh._core import options as _options
from taskmesh._core.context import get_runtime
from taskmesh._core.generators import ObjectRefGenerator
from taskmesh._core.remote_function import RemoteFunction
from taskmesh._core.runtime import Runtime
from taskmesh.exceptions import StoreUnavailableError
from taskmesh.objects import ObjectRef
from taskmesh.store import Store, connection, keep_listening
from taskmesh.workers import launch

if TYPE_CHECKING:
    from taskmesh.actors import ActorClass

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_lock = threading.RLock()
_cluster: _LocalCluster | None = None
_log_thread: Any = None
_log = logging.getLogger("taskmesh")
_dashboard: Any = None  # the dashboard process init(include_dashboard=True) started


@dataclass
class _LocalCluster:
    """Processes `init()` started, stopped again by `shutdown()`."""

    redis: launch.RedisServer | None
    agent: Any
    session_dir: Path
    record: Path | None = None  # where the CLI finds it (launch.record_local_cluster)

    def stop(self) -> None:
        if self.record is not None:  # first: a record must not outlive its server
            launch.forget_local_cluster(self.record)
        if self.agent is not None:
            from taskmesh.workers.process import stop_processes

            stop_processes([self.agent.pid], timeout_s=10)
        if self.redis is not None:
            self.redis.stop()


@dataclass
class ClientContext:
    """What `init()` returns (usable as a context manager that shuts down)."""

    address_info: dict[str, Any] = field(default_factory=dict)
    dashboard_url: str | None = None

    def __enter__(self) -> ClientContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]


def is_initialized() -> bool:
    return context.is_initialized()


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = 8265,
    logging_level: Any = None,
    configure_logging: bool = True,
    allow_insecure: bool | None = None,
    tls_ca_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    _temp_dir: str | None = None,
) -> ClientContext:
    """Connect to a cluster, or start a local one (embedded Redis + one node agent).

    Address: argument, else $TASKMESH_ADDRESS, else the cluster `taskmesh start --head`
    recorded on this machine; with none of those, a local cluster is started.
    `"auto"` requires an existing cluster.

    A Redis on another machine that runs commands without a password is refused unless
    `allow_insecure` (default: $TASKMESH_ALLOW_INSECURE). `tls_*`: PEM files for a
    `rediss://` address (default: $TASKMESH_TLS_CA_FILE, _CERT, _KEY). `runtime_env`: the
    job's, inherited by its tasks and actors (see taskmesh.runtime_env).

    `include_dashboard=True` starts the web dashboard (`taskmesh dashboard`) as a child
    process on `dashboard_host:dashboard_port` until `shutdown()`; its URL is the
    returned context's `dashboard_url`. Unlike Ray, None (the default) starts none, which
    keeps `init()` fast: run `taskmesh dashboard` for one. Bound to anything but loopback
    it needs a token, written to `dashboard-token` in the session's directory.
    """
    global _cluster
    with _lock:
        current = context.current()
        if current is not None:
            if ignore_reinit_error:
                masked = connection.mask_password(current.store.url)
                return ClientContext({"address": masked, "redis_address": masked})
            raise RuntimeError("Maybe you called taskmesh.init twice by accident? This error "
                               "can be suppressed by passing in 'ignore_reinit_error=True'.")
        _check_init_resources(num_cpus, num_gpus, resources)
        _check_dashboard_options(include_dashboard, dashboard_host, dashboard_port)
        _options.check_namespace(namespace)
        from taskmesh import runtime_env as _renv

        job_env = _renv.validate(runtime_env)  # the parent of every task's and actor's
        if allow_insecure is not None and not isinstance(allow_insecure, bool):
            raise TypeError(f"allow_insecure must be a bool, got {allow_insecure!r}")
        tls = security.TlsFiles(tls_ca_file, tls_cert, tls_key)
        security.check_tls_files(tls)
        if _temp_dir:
            os.environ[config.ENV_TEMP_DIR] = _temp_dir
        url = _resolve_address(address)
        if url is not None and (num_cpus is not None or num_gpus is not None or resources
                                or object_store_memory is not None):
            raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus, "
                             "resources and object_store_memory must not be provided.")
        if object_store_memory is not None and (
                isinstance(object_store_memory, bool) or not isinstance(object_store_memory, int)
                or object_store_memory < 1024 * 1024):
            raise ValueError(f"object_store_memory must be an int of at least 1 MiB (bytes), "
                             f"got {object_store_memory!r}")
        cluster = None
        node_id = None
        if url is None:
            cluster, url, node_id = _start_local(num_cpus, num_gpus, resources, object_store_memory)
        try:
            store = Store(url, tls=tls or None)
            try:
                security.check_server(store, allow_insecure=allow_insecure)  # pings it first
            except StoreUnavailableError as e:  # one exception that says what to do
                store.close()
                raise type(e)(connection.failure_message(url, e)) from None
            except Exception:  # protected mode, eviction, versions: messages of their own
                store.close()
                raise
            namespace = namespace or str(uuid.uuid4())  # an anonymous one, as Ray, shown in `list jobs`
            submission_id = config.SUBMISSION_ID.get()
            if submission_id:  # a submitted job's entrypoint: its runtime_env is the parent
                job_env = _renv.merge(_submitted_env(store, submission_id), job_env)
            job_id = store.new_job({"driver_pid": str(os.getpid()), "host": os.uname().nodename,
                                    "start_ms": str(int(time.time() * 1000)),
                                    "namespace": namespace,
                                    **({"runtime_env": json.dumps(job_env)} if job_env else {}),
                                    **({"submission_id": submission_id} if submission_id else {})})
        except Exception:
            if cluster is not None:
                cluster.stop()
            raise
        _cluster = cluster
        runtime = Runtime(store, job_id=job_id, namespace=namespace,
                          node_id=node_id or _local_node(store))
        if submission_id:  # its supervisor ends this job if the entrypoint leaves it running
            store.add_submission_driver(submission_id, runtime.owner, job_id)
        # Known to the monitor before init returns (the flusher's heartbeats follow): a
        # driver killed at once still has its job ended.
        store.driver_alive(runtime.owner, job_id)
        runtime.runtime_env = _renv.resolve(None, job_env, store)  # packages uploaded
        context.set_runtime(runtime)
        _end_job_on_sigterm()
        if log_to_driver:
            _start_log_printer(store, job_id)
        dashboard_url = None
        if include_dashboard:
            try:
                dashboard_url = _start_dashboard(url, dashboard_host, dashboard_port)
            except BaseException:
                shutdown()
                raise
        # Both masked: this object is shown in notebooks and logs.
        masked = connection.mask_password(url)
        return ClientContext({"address": masked, "redis_address": masked,
                              "node_id": node_id, "job_id": job_id,
                              "session_dir": str(cluster.session_dir) if cluster else None,
                              "webui_url": dashboard_url}, dashboard_url=dashboard_url)


def _check_dashboard_options(include: Any, host: Any, port: Any) -> None:
    if include is not None and not isinstance(include, bool):
        raise TypeError(f"include_dashboard must be a bool or None, got {include!r}")
    if not isinstance(host, str) or not host:
        raise TypeError(f"dashboard_host must be a host name or IP address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"dashboard_port must be an int from 0 to 65535, got {port!r}")


def _start_dashboard(url: str, host: str, port: int) -> str:
    """Start the dashboard as a child process (it dies with this one) and return its
    URL. Not loopback: a token, in a 0600 file of the temp dir, named in a warning."""
    global _dashboard
    import logging

    where = config.temp_root() / f"dashboard-{os.getpid()}"
    config.private_dir(where)
    token_file = None
    if not security.is_loopback(host):
        token_file = where / "dashboard-token"
        security.write_password_file(token_file, security.generate_password())
    _dashboard, dashboard_url = launch.start_dashboard(
        url, host=host, port=port, token_file=token_file, fate_share=True,
        log_path=where / "dashboard.log")
    if token_file is not None:
        logging.getLogger("taskmesh").warning(
            "The dashboard at %s needs the token in %s (open %s/?token=TOKEN once).",
            dashboard_url, token_file, dashboard_url)
    return dashboard_url


def _end_job_on_sigterm() -> None:
    """A driver stopped by SIGTERM (`kill`, `taskmesh job stop`, a container's stop) ends
    its job at once, as at exit, rather than when the monitor misses its heartbeats; then
    it dies of the signal as it would have. A program's own SIGTERM handler is left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            shutdown()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def _submitted_env(store: Store, submission_id: str) -> dict[str, Any] | None:
    """The runtime_env a submitted job was given (its packages already uploaded)."""
    recorded = store.submission_field(submission_id, "runtime_env")
    return json.loads(recorded) if recorded else None


def _local_node(store: Store) -> str | None:
    """A live node agent on this machine (its shared memory is ours to use), if any."""
    from taskmesh.objects.shm import ShmStore

    host = os.uname().nodename
    for node in store.nodes():
        if node.get("alive") and node.get("hostname") == host and ShmStore.of_node(node["node_id"]):
            return node["node_id"]
    return None


def _check_init_resources(num_cpus: Any, num_gpus: Any, resources: Any) -> None:
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None:
            _options.COMMON_OPTIONS[name].validate(name, value)
    if resources is not None:
        _options.COMMON_OPTIONS["resources"].validate("resources", resources)


def _resolve_address(address: str | None) -> str | None:
    if address is None:
        address = config.ADDRESS.get()
    if address in (None, "local"):
        return launch.current_cluster_address() if address is None else None
    if address == "auto":  # as the CLI: start --head's cluster, else the newest init()'s
        found = launch.current_cluster_address(include_local=True)
        if found is None:
            raise ConnectionError("Could not find any running taskmesh cluster on this machine: "
                                  "start one with 'taskmesh start --head' or pass an address.")
        return found
    return connection.canonicalize_address(address)


def _start_local(
    num_cpus: float | None, num_gpus: float | None, resources: dict[str, float] | None,
    object_store_memory: int | None = None,
) -> tuple[_LocalCluster, str, str]:
    session = config.temp_root() / f"session_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
    # A password even on loopback: other users of this machine reach loopback, and
    # whoever reaches the cluster runs code as this user. It reaches the agent through
    # its environment, never a command line.
    server = launch.start_redis(data_dir=session / "redis", password=security.generate_password(),
                                maxmemory=launch.head_maxmemory())
    try:
        agent, node_id = launch.start_agent(
            server.url, num_cpus=num_cpus if num_cpus is not None else os.cpu_count(),
            num_gpus=num_gpus, resources=resources, log_path=session / "logs" / "agent.log", fate_share=True,
            object_store_memory=object_store_memory)
    except Exception:
        server.stop()
        raise
    cluster = _LocalCluster(server, agent, session)
    try:
        cluster.record = launch.record_local_cluster(server.url)
    except Exception:
        cluster.stop()
        raise
    return cluster, server.url, node_id


def _start_log_printer(store: Store, job_id: str) -> None:
    global _log_thread

    def on_message(message: dict) -> None:
        data = msgpack.unpackb(message["data"], raw=False)
        pid = data["pid"]
        for name, stream, line in data["lines"]:
            state = wire.progress_of(line)
            if state is not None:  # a progress bar of the task's (experimental.tqdm_ray)
                from taskmesh._core import progress  # tqdm: imported once a bar shows up

                progress.driver_bars().update(pid, state)
                continue
            out = sys.stderr if stream == "stderr" else sys.stdout
            print(f"({name} pid={pid}) {line}", file=out)

    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(**{store.keys.chan_log(job_id): on_message})
    _log_thread = pubsub.run_in_thread(sleep_time=0.1, daemon=True, exception_handler=keep_listening)


def shutdown() -> None:
    """Disconnect; stop the local cluster `init()` started, if any."""
    global _cluster, _log_thread, _dashboard
    with _lock:
        runtime, cluster, log_thread = context.current(), _cluster, _log_thread
        context.set_runtime(None)
        _cluster, _log_thread = None, None
        if _dashboard is not None:  # first: it reads the cluster stopped below
            from taskmesh.workers.process import stop_processes

            stop_processes([_dashboard.pid], timeout_s=5)
            _dashboard = None
        if runtime is None:
            return
        metrics = sys.modules.get("taskmesh.util.metrics")
        gone = runtime.outage.ongoing(runtime.store.redis.ping)  # then there is nothing to tell it
        if metrics is not None and not gone:  # what was recorded since the last periodic flush
            metrics.flush_now(runtime.store)
        runtime.shutdown()
        if log_thread is not None:
            time.sleep(0.05)  # let lines already published reach the terminal
            log_thread.stop()
            log_thread.join(timeout=1)
            bars = sys.modules.get("taskmesh._core.progress")
            if bars is not None:  # bars of tasks that never closed them
                bars.driver_bars().close_all()
        try:
            if runtime.job_id is not None and not runtime.is_worker and not gone:
                runtime.store.end_job(runtime.job_id)
        except Exception:
            pass
        runtime.store.close()
        if cluster is not None:
            cluster.stop()


def _shutdown_at_exit() -> None:
    """A driver disconnects as its interpreter exits. A worker's runtime is left to the
    worker, which runs the atexit handlers of an actor that exits and then ends itself."""
    runtime = context.current()
    if runtime is None or not runtime.is_worker:
        shutdown()


atexit.register(_shutdown_at_exit)


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """The tasks that ran, as Chrome tracing events (open in chrome://tracing or
    Perfetto), read from the task events in Redis; with `filename`, written there as
    JSON instead of returned (Ray's `timeline`)."""
    from taskmesh._core import events as _events

    trace = _events.timeline(get_runtime().store)
    if filename is None:
        return trace
    _events.write_trace(trace, filename)
    return None


# ---- remote ------------------------------------------------------------------------------

@overload
def remote(__class: type[T]) -> ActorClass: ...  # type: ignore[overload-overlap]  # a class is callable


@overload
def remote(__function: Callable[P, R]) -> RemoteFunction[P, R]: ...


@overload
def remote(**options: Any) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]: ...


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote task: `@remote` or `@remote(num_cpus=2, ...)`. As Ray,
    anything else (`@remote()` included) fails an assertion."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not options:
        raise AssertionError(
            "The @remote decorator must be applied either with no arguments and no parentheses, "
            "for example '@taskmesh.remote', or it must be applied using some of the arguments in "
            f"the list {sorted(_options.TASK_OPTIONS)}, for example "
            "'@taskmesh.remote(num_returns=2, resources={\"CustomResource\": 1})'.")
    return lambda fn: _make_remote(fn, options)


def _make_remote(target: Any, options: dict[str, Any]) -> Any:
    if isinstance(target, type):
        from taskmesh.actor import ActorClass

        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"The @remote decorator must be applied to a function or a class, got "
                        f"{type(target).__name__}.")
    return RemoteFunction(target, options)


# ---- objects -----------------------------------------------------------------------------

def put(value: T, *, _owner: Any = None) -> ObjectRef[T]:
    """Store a value in the cluster and return its ref."""
    return get_runtime(auto_init=True).put(value)


def cancel(object_ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes `object_ref`: `get` then raises TaskCancelledError. A
    running task gets KeyboardInterrupt (the tasks it submitted are cancelled too), or
    with force=True its worker is killed; a finished task is left alone. An
    ObjectRefGenerator cancels its generator task (as Ray)."""

    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError("taskmesh.cancel() only supported for object refs. For actors, try "
                        f"taskmesh.kill(). Got: {type(object_ref)}.")
    if not isinstance(force, bool) or not isinstance(recursive, bool):
        raise TypeError("'force' and 'recursive' must be booleans.")
    get_runtime().cancel(object_ref.hex(), force=force, recursive=recursive)


@overload
def get(object_refs: ObjectRef[T], *, timeout: float | None = None) -> T: ...


@overload
def get(object_refs: Sequence[ObjectRef[T]], *, timeout: float | None = None) -> list[T]: ...


@overload
def get(object_refs: Any, *, timeout: float | None = None) -> Any: ...


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """The value(s) of a ref or a list of refs; raises the task's error if it failed,
    GetTimeoutError after `timeout` seconds."""
    runtime = get_runtime(auto_init=True)
    _check_timeout(timeout)
    if isinstance(object_refs, ObjectRef):
        return runtime.get([object_refs], timeout)[0]
    if isinstance(object_refs, (list, tuple)) and all(isinstance(r, ObjectRef) for r in object_refs):
        return runtime.get(list(object_refs), timeout)
    raise ValueError("'object_refs' must either be an ObjectRef or a list of ObjectRefs.")


def wait(
    object_refs: Sequence[ObjectRef | ObjectRefGenerator],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Split refs and generators into (ready, not ready) once `num_returns` are ready or
    `timeout` passes, in their given order. A generator is ready when `next` on it
    would return at once: its next item has arrived, or it has ended (Ray's)."""
    runtime = get_runtime(auto_init=True)
    what = "wait() expected a list of ObjectRef or ObjectRefGenerator"
    if isinstance(object_refs, (ObjectRef, ObjectRefGenerator)):
        raise TypeError(f"{what}, got a single ObjectRef or ObjectRefGenerator {object_refs}")
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"{what}, got {type(object_refs)}")
    refs = list(object_refs)
    # Thousands of refs: types, ids and their uniqueness at C speed where all are refs.
    only_refs = set(map(type, refs)) == {ObjectRef}
    if not only_refs:
        for ref in refs:
            if not isinstance(ref, (ObjectRef, ObjectRefGenerator)):
                raise TypeError(f"{what}, got list containing {type(ref)}")
    _check_timeout(timeout)
    if not refs:  # as Ray: before the num_returns checks
        return [], []
    unique = set(map(_REF_ID, refs)) if only_refs else set(refs)
    if len(unique) != len(refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait.")
    return runtime.wait(refs, num_returns, timeout, ids=unique if only_refs else None)


_REF_ID = operator.attrgetter("_id")


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"'timeout' must be a number of seconds or None, got {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError(f"The 'timeout' argument must be nonnegative. Received {timeout}")


# ---- introspection -----------------------------------------------------------------------

def nodes() -> list[dict[str, Any]]:
    """Every node the cluster has seen, shaped like Ray's `ray.nodes()`."""
    out = []
    for n in get_runtime().store.nodes():
        out.append({
            "NodeID": n["node_id"], "Alive": n["alive"], "NodeManagerAddress": n.get("ip"),
            "NodeManagerHostname": n.get("hostname"), "Resources": n["resources_total"],
            "AvailableResources": n["resources_available"], "AgentPid": int(n.get("pid", 0)),
        })
    return out


def _sum_resources(field_name: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for n in get_runtime().store.nodes():
        if n["alive"]:
            for k, v in n[field_name].items():
                total[k] = total.get(k, 0.0) + float(v)
    return total


def cluster_resources() -> dict[str, float]:
    return _sum_resources("resources_total")


def available_resources() -> dict[str, float]:
    return {k: v for k, v in _sum_resources("resources_available").items() if v > 0}


class RuntimeContext:
    """What the current process knows about where it runs (Ray's `get_runtime_context()`).
    In an actor, the task id, name and function name are those of the call running in
    the asking thread or asyncio task (a threaded or async actor runs several at once)."""

    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    def _in_worker(self, what: str) -> bool:
        if self._runtime.is_worker:
            return True
        _log.warning("%s is only available when the process is a worker (a task or an actor). "
                     "Current mode: driver", what)
        return False

    def _call(self) -> tuple[str | None, str | None, str | None]:
        """(task id, name, function name) of the running task or actor call."""
        call = context.current_call.get()
        if call is not None and self._runtime.context.actor_id:
            return call
        ctx = self._runtime.context
        return ctx.task_id, ctx.task_name, ctx.function_name

    def get_job_id(self) -> str | None:
        return self._runtime.context.job_id or self._runtime.job_id

    def get_node_id(self) -> str | None:
        return self._runtime.node_id

    def get_task_id(self) -> str | None:
        return self._call()[0] if self._in_worker("get_task_id()") else None

    def get_task_name(self) -> str | None:
        """The task's name: its `name=` option, else the function's name (an actor
        call's: `Class.method`)."""
        return self._call()[1] if self._in_worker("get_task_name()") else None

    def get_task_function_name(self) -> str | None:
        """`module.function` (an actor call's: `module.Class.method`)."""
        return self._call()[2] if self._in_worker("get_task_function_name()") else None

    def get_worker_id(self) -> str:
        return self._runtime.owner

    def is_canceled(self) -> bool:
        """Whether the running task (or actor call) was cancelled (taskmesh.cancel): a
        task that catches the KeyboardInterrupt, or a sync actor's call, which is not
        interrupted, can check it. Raises RuntimeError in a driver and in an async actor
        (whose calls get asyncio's CancelledError instead), as Ray."""
        if not self._runtime.is_worker:
            raise RuntimeError("This method is only available when the process is a worker. "
                               "Current mode: driver")
        if self._runtime.async_actor:
            raise RuntimeError("This method is not supported in an async actor.")
        return self._runtime.canceled(self._call()[0])

    def get_actor_id(self) -> str | None:
        return self._runtime.context.actor_id if self._in_worker("get_actor_id()") else None

    def get_actor_name(self) -> str | None:
        """A named actor's name ("" for an unnamed one); None outside an actor."""
        if not self._in_worker("get_actor_name()") or not self._runtime.context.actor_id:
            return None
        return self._runtime.context.actor_name or ""

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this runs in."""
        actor_id = self._runtime.context.actor_id
        if not actor_id:
            raise RuntimeError("This method is only available in an actor.")
        from taskmesh.actors.handles import handle_for

        return handle_for(actor_id)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted (its constructor ran again)."""
        assert self._runtime.context.actor_id, "This method should't be called inside Ray tasks."
        return self._runtime.context.restarted

    @property
    def namespace(self) -> str | None:
        return self._runtime.namespace

    @property
    def gcs_address(self) -> str:
        """The cluster's Redis address (without its password)."""
        return connection.without_password(self._runtime.store.url)

    def get_assigned_resources(self) -> dict[str, float]:
        return dict(self._runtime.context.resources)

    def get_placement_group_id(self) -> str | None:
        pg = self._runtime.context.pg
        return pg[0] if pg else None

    @property
    def should_capture_child_tasks_in_placement_group(self) -> bool:
        pg = self._runtime.context.pg
        return bool(pg and pg[2])

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(g) for g in self._runtime.context.gpu_ids]}

    def get_node_labels(self) -> dict[str, str]:
        return {}

    def get_runtime_env_string(self) -> str:
        return json.dumps(self._runtime.runtime_env or {})

    @property
    def runtime_env(self) -> Any:
        from taskmesh.runtime_env import RuntimeEnv

        return RuntimeEnv(**(self._runtime.runtime_env or {}))

    def get_temp_dir(self) -> str:
        return str(config.temp_root())

    # Ray's deprecated forms: the same values, with a RayDeprecationWarning.

    def get(self) -> dict[str, Any]:
        deprecation.warn("Use get_xxx_id() methods to get relevant ids instead")
        out: dict[str, Any] = {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                               "namespace": self.namespace}
        if self._runtime.is_worker:
            task_id, actor_id = self._call()[0], self._runtime.context.actor_id
            if task_id is not None:
                out["task_id"] = task_id
            if actor_id is not None:
                out["actor_id"] = actor_id
        return out

    @property
    def job_id(self) -> str | None:
        deprecation.warn("Use get_job_id() instead")
        return self.get_job_id()

    @property
    def node_id(self) -> str | None:
        deprecation.warn("Use get_node_id() instead")
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        deprecation.warn("Use get_task_id() instead")
        return self._call()[0] if self._runtime.is_worker else None

    @property
    def actor_id(self) -> str | None:
        deprecation.warn("Use get_actor_id() instead")
        assert self._runtime.is_worker, ("This method is only available when the process is a "
                                         "worker. Current mode: driver")
        return self._runtime.context.actor_id

    @property
    def current_placement_group_id(self) -> str | None:
        deprecation.warn("Use get_placement_group_id() instead")
        return self.get_placement_group_id()

    def get_resource_ids(self) -> dict[str, list[str]]:
        deprecation.warn("Use get_accelerator_ids() instead")
        return self.get_accelerator_ids()


def get_runtime_context() -> RuntimeContext:
    """The runtime context of this driver, task or actor (starting a local cluster
    first, as Ray does, when nothing is initialized)."""
    return RuntimeContext(get_runtime(auto_init=True))


def get_gpu_ids() -> list[int]:
    """The GPU ids assigned to the current task or actor (empty in a driver)."""
    return list(get_runtime().context.gpu_ids)


def _process_tree_rss() -> int:
    """RSS of this process's local cluster (used by the benchmarks)."""
    cluster = _cluster
    if cluster is None:
        return 0
    total = 0
    roots = [p for p in (cluster.agent, cluster.redis.proc if cluster.redis else None) if p]
    for root in roots:
        try:
            proc = psutil.Process(root.pid)
            for p in [proc, *proc.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


context.set_auto_init(init)
