"""Ray's core microbenchmarks (`ray microbenchmark`), written once against a Ray-like
module so that the very same code measures taskmesh and Ray.

Every workload only touches `lib.init/remote/get/put/wait/shutdown` and actor handles
(`Cls.remote()`, `Cls.options(max_concurrency=...)`, `handle.method.remote()`), with `lib`
imported by name at run time. This module imports nothing but the standard library at the top:
`benchmarks/run.py` loads it by file path into an interpreter that has Ray but not
taskmesh's dependencies (importing `taskmesh.tools.microbenchmark` there would run
`taskmesh/__init__.py`, which needs psutil, cloudpickle, ...).

Rows are {"name", "value", "unit"}; names follow Ray's rows where one exists. numpy,
too, is imported only inside the workloads that use it. The one taskmesh-only row
(cross-node get) starts a two-node cluster with taskmesh's own process helpers.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

Row = dict[str, Any]
Step = Callable[[], int]  # does some work, returns how many units (tasks, refs...) it did

NUM_CPUS = 2
MIB = 1024 * 1024
GB = 10**9  # object sizes and rates are decimal: "100 MB" is 10**8 bytes
SIZE_100MB = 100 * 10**6
SIZE_1GB = GB

IDLE_RSS = "idle cluster RSS"
TIMED_ROWS = (
    "single client tasks sync",
    "single client tasks async",
    "multi client tasks async",
    "single client put calls",
    "single client get calls",
    "single client get 1000 refs",
    "single client wait 1000 refs",
    "1:1 actor calls sync",
    "1:1 actor calls async",
    "1:1 actor calls concurrent",
    "1:n actor calls async",
    "n:n actor calls async",
    "1:1 async-actor calls sync",
    "1:1 async-actor calls async",
)
OBJECT_ROWS = (
    "memcpy 100 MB",
    "single client put 100 MB",
    "single client get 100 MB",
    "memcpy 1 GB",
    "single client put 1 GB",
    "single client get 1 GB",
)
CROSS_NODE_ROW = "cross-node get 100 MB"
# Rows only taskmesh reports: Ray would need a second raylet on this machine.
TASKMESH_ONLY_ROWS = (CROSS_NODE_ROW,)
# Rows a quick run skips: writing 1 GB of fresh memory twice takes seconds here.
FULL_ONLY_ROWS = ("memcpy 1 GB", "single client put 1 GB", "single client get 1 GB")
# The rows of a many-core run (`--cpus N`, N > 2): what scales with cores.
MANY_CORE_ROWS = (IDLE_RSS, "single client tasks sync", "single client tasks async",
                  "multi client tasks async", "n:n actor calls async", "memcpy 1 GB",
                  "single client put 1 GB")
# Every row, in order: what run_all("taskmesh") returns (see row_names for the others).
ROW_NAMES = (IDLE_RSS, *TIMED_ROWS, *OBJECT_ROWS, CROSS_NODE_ROW)


@dataclass(frozen=True)
class Settings:
    duration_s: float  # measured time per timed workload
    batch: int  # refs per async/get-many/wait-many call
    settle_s: float  # pause before the RSS sample, so start-up work has finished
    full_only: bool  # also run FULL_ONLY_ROWS


FULL = Settings(duration_s=2.0, batch=1000, settle_s=2.0, full_only=True)
# A smoke run (tests, `taskmesh microbenchmark --quick`): rates stay per task/ref, so the
# smaller batches make the "1000 refs" rows noisier, not wrong in kind.
QUICK = Settings(duration_s=0.1, batch=100, settle_s=0.1, full_only=False)


def row_names(lib_name: str, quick: bool = False, cpus: int = NUM_CPUS) -> tuple[str, ...]:
    """The rows run_all(lib_name, quick, cpus) returns, in order."""
    skipped = set(FULL_ONLY_ROWS if quick else ())
    if lib_name != "taskmesh" or cpus != NUM_CPUS:
        skipped.update(TASKMESH_ONLY_ROWS)
    wanted = ROW_NAMES if cpus == NUM_CPUS else MANY_CORE_ROWS
    return tuple(name for name in ROW_NAMES if name in wanted and name not in skipped)


@dataclass(frozen=True)
class Kit:
    """What the workloads call: `lib`, the batch size, and the remote function and actor
    classes of Ray's microbenchmark (`small_value`, `Actor`, `AsyncActor`, `Client`)."""

    lib: ModuleType
    batch: int
    clients: int  # client actors or tasks of the n:n, 1:n and multi-client rows
    small_value: Any  # remote function returning 0
    client_batch: Any  # num_cpus=0 remote function: submits n small_value tasks, gets them
    Actor: Any  # num_cpus=0, sync `small_value()`
    AsyncActor: Any  # default options (placed on 1 CPU, holds none), `async def small_value()`
    Client: Any  # num_cpus=0, holds a target actor and calls it in batches
    # The object rows' source array, made on first use (see _source) and shared
    arrays: dict[str, Any] = field(default_factory=dict)


def make_kit(lib: ModuleType, batch: int, cpus: int = NUM_CPUS) -> Kit:
    """Everything is defined in this closure so that both libraries pickle it by value:
    a Ray worker cannot import this module by name. `clients`: cpus // 2, at least 2."""

    def small_value() -> int:
        return 0

    remote_small_value = lib.remote(small_value)

    def client_batch(n: int) -> int:
        lib.get([remote_small_value.remote() for _ in range(n)])
        return n

    class Actor:
        def small_value(self) -> bytes:
            return b"ok"

    class AsyncActor:
        async def small_value(self) -> bytes:
            return b"ok"

    class Client:
        def __init__(self, target: Any):
            self.target = target

        def small_value_batch(self, n: int) -> int:
            lib.get([self.target.small_value.remote() for _ in range(n)])
            return n

    return Kit(lib, batch, max(2, cpus // 2), remote_small_value,
               lib.remote(num_cpus=0)(client_batch), lib.remote(num_cpus=0)(Actor),
               lib.remote(AsyncActor), lib.remote(num_cpus=0)(Client))


# ---- timing ----------------------------------------------------------------------------

def _run_for(step: Step, duration_s: float) -> tuple[int, float]:
    """Call `step` until `duration_s` has passed (at least once); (units, elapsed)."""
    start = time.perf_counter()
    done = 0
    while True:
        done += step()
        elapsed = time.perf_counter() - start
        if elapsed >= duration_s:
            return done, elapsed


def _rate(step: Step, duration_s: float) -> float:
    """Units per second. A warm-up of a tenth of the time first: the first calls pay for
    exporting the function, starting workers and opening connections (and, for objects,
    touching fresh memory), which is not the steady state these rows are about (start-up
    has its own row)."""
    _run_for(step, duration_s / 10)
    done, elapsed = _run_for(step, duration_s)
    return done / elapsed


def _partly_timed_rate(measure: Callable[[], tuple[int, float]], duration_s: float) -> float:
    """Units per timed second, for steps that time only part of their work: `measure`
    returns (units, seconds it timed); it runs once as a warm-up, then for `duration_s`
    of wall time (at least once)."""
    measure()
    start = time.perf_counter()
    done, timed = 0, 0.0
    while True:
        units, seconds = measure()
        done, timed = done + units, timed + seconds
        if time.perf_counter() - start >= duration_s:
            return done / timed


# ---- workloads: each builds its step (setup is not timed) -----------------------------
# A "call" is a zero-argument callable returning one ref: `f.remote` of a task, or a lambda
# around `handle.small_value.remote()` (the lambda keeps the handle, hence the actor, alive).

def _calls_sync(lib: ModuleType, call: Callable[[], Any]) -> Step:
    """One call, wait for its result; repeat."""
    def step() -> int:
        lib.get(call())
        return 1
    return step


def _calls_batched(lib: ModuleType, calls: list[Callable[[], Any]], batch: int) -> Step:
    """`batch` calls round-robin over `calls`, then one get of all their refs."""
    n = len(calls)

    def step() -> int:
        lib.get([calls[i % n]() for i in range(batch)])
        return batch
    return step


def _actor_call(handle: Any) -> Callable[[], Any]:
    return lambda: handle.small_value.remote()


def _put_calls(k: Kit) -> Step:
    def step() -> int:
        k.lib.put(0)
        return 1
    return step


def _get_calls(k: Kit) -> Step:
    ref = k.lib.put(0)

    def step() -> int:
        k.lib.get(ref)
        return 1
    return step


def _get_many(k: Kit) -> Step:
    refs = [k.lib.put(i) for i in range(k.batch)]

    def step() -> int:
        k.lib.get(refs)
        return len(refs)
    return step


def _wait_many(k: Kit) -> Step:
    refs = [k.small_value.remote() for _ in range(k.batch)]
    k.lib.wait(refs, num_returns=len(refs))  # every task has finished before timing starts

    def step() -> int:
        k.lib.wait(refs, num_returns=len(refs))
        return len(refs)
    return step


def _multi_client(k: Kit) -> Step:
    """`clients` tasks (num_cpus=0) at once, each submitting 500 small_value tasks and
    getting them; rate = all their tasks (Ray's "multi client tasks async" shape)."""
    def step() -> int:
        return sum(k.lib.get([k.client_batch.remote(500) for _ in range(k.clients)]))
    return step


def _one_to_n(k: Kit) -> Step:
    """The driver round-robins each batch over `clients` actors (Ray: cpu_count // 2
    actors, called from a Client actor)."""
    actors = [k.Actor.remote() for _ in range(k.clients)]
    return _calls_batched(k.lib, [_actor_call(a) for a in actors], k.batch)


def _n_to_n(k: Kit) -> Step:
    """`clients` Client actors, each calling its own target actor `batch` times per step,
    all at once; rate = total calls (as Ray's "n:n actor calls with arg async", no arg)."""
    # (client, target) pairs: the driver keeps the targets' handles too, so they live
    # exactly as long as their clients
    pairs = [(k.Client.remote(t), t) for t in (k.Actor.remote() for _ in range(k.clients))]

    def step() -> int:
        k.lib.get([client.small_value_batch.remote(k.batch) for client, _ in pairs])
        return k.batch * len(pairs)
    return step


# ---- object workloads: steps count bytes ------------------------------------------------

def _source(k: Kit, nbytes: int) -> Any:
    """The first `nbytes` of one array shared by the object rows, grown when a row needs
    more: writing 1 GB of fresh memory takes seconds here. All its pages are written
    (np.zeros would leave them mapped to the kernel's shared zero page, which sits in
    cache and flatters every copy rate)."""
    arr = k.arrays.get("source")
    if arr is None or arr.nbytes < nbytes:
        import numpy as np

        arr = k.arrays["source"] = np.full(nbytes, 1, dtype=np.uint8)
    return arr[:nbytes]


def _memcpy(k: Kit, nbytes: int) -> Step:
    """This process's copy bandwidth into an already-touched destination: the yardstick
    for the put rows, which copy each buffer once."""
    import numpy as np

    src = _source(k, nbytes)
    dst = np.full(nbytes, 0, dtype=np.uint8)

    def step() -> int:
        np.copyto(dst, src)
        return nbytes
    return step


def _put_large(k: Kit, nbytes: int) -> Step:
    """`put` an array and drop the ref at once, as Ray's "single client put gigabytes"
    does and a user's loop would, so the store may reuse that memory for the next put."""
    arr = _source(k, nbytes)

    def step() -> int:
        k.lib.put(arr)
        return nbytes
    return step


def _get_large(k: Kit, nbytes: int) -> Step:
    """`get` one ref put once, dropping the value each time. On the same node both
    libraries return a read-only view of their shared memory, so this times the mapping,
    not a copy."""
    ref = k.lib.put(_source(k, nbytes))

    def step() -> int:
        k.lib.get(ref)
        return nbytes
    return step


_WORKLOADS: dict[str, tuple[str, Callable[[Kit], Step]]] = {
    "single client tasks sync": ("tasks/s", lambda k: _calls_sync(k.lib, k.small_value.remote)),
    "single client tasks async": ("tasks/s", lambda k: _calls_batched(
        k.lib, [k.small_value.remote], k.batch)),
    "multi client tasks async": ("tasks/s", _multi_client),
    "single client put calls": ("calls/s", _put_calls),
    "single client get calls": ("calls/s", _get_calls),
    "single client get 1000 refs": ("refs/s", _get_many),
    "single client wait 1000 refs": ("refs/s", _wait_many),
    "1:1 actor calls sync": ("calls/s", lambda k: _calls_sync(k.lib, _actor_call(k.Actor.remote()))),
    "1:1 actor calls async": ("calls/s", lambda k: _calls_batched(
        k.lib, [_actor_call(k.Actor.remote())], k.batch)),
    "1:1 actor calls concurrent": ("calls/s", lambda k: _calls_batched(
        k.lib, [_actor_call(k.Actor.options(max_concurrency=16).remote())], k.batch)),
    "1:n actor calls async": ("calls/s", _one_to_n),
    "n:n actor calls async": ("calls/s", _n_to_n),
    "1:1 async-actor calls sync": ("calls/s", lambda k: _calls_sync(
        k.lib, _actor_call(k.AsyncActor.remote()))),
    "1:1 async-actor calls async": ("calls/s", lambda k: _calls_batched(
        k.lib, [_actor_call(k.AsyncActor.remote())], k.batch)),
    "memcpy 100 MB": ("GB/s", lambda k: _memcpy(k, SIZE_100MB)),
    "memcpy 1 GB": ("GB/s", lambda k: _memcpy(k, SIZE_1GB)),
    "single client put 100 MB": ("GB/s", lambda k: _put_large(k, SIZE_100MB)),
    "single client get 100 MB": ("GB/s", lambda k: _get_large(k, SIZE_100MB)),
    "single client put 1 GB": ("GB/s", lambda k: _put_large(k, SIZE_1GB)),
    "single client get 1 GB": ("GB/s", lambda k: _get_large(k, SIZE_1GB)),
}
# Steps of these units count bytes; their rows report them scaled.
_UNIT_SCALE = {"GB/s": 1 / GB}


# ---- memory and start-up ---------------------------------------------------------------

def cluster_rss_mib(lib_name: str, lib: ModuleType) -> float:
    """RSS (MiB) of the processes `init()` started for the local cluster; the driver
    itself is not counted, for either library.

    taskmesh: `taskmesh.api._process_tree_rss()` (Redis server + node agent + its
    workers). Ray: every descendant of the driver (ray.init starts gcs_server, raylet,
    log monitor...; the raylet starts the workers), plus, in case something was
    re-parented, every process created after the driver whose command line runs a file
    under a `ray` package directory. psutil comes with Ray (ray/thirdparty_files).
    """
    if lib_name == "taskmesh":
        return lib.api._process_tree_rss() / MIB
    import psutil

    me = psutil.Process()
    born = me.create_time()
    procs = {p.pid: p for p in me.children(recursive=True)}
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid != me.pid and (p.info["create_time"] or 0) >= born and "/ray/" in cmd:
            procs.setdefault(p.pid, p)
    total = 0
    for p in procs.values():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # exited meanwhile
    return total / MIB


def startup_to_first_result(lib_name: str, cpus: int = NUM_CPUS) -> float:
    """Seconds from `import lib; lib.init(num_cpus=cpus)` to the first task's result,
    then shut down. Only meaningful in a fresh interpreter (nothing of `lib` imported
    yet), which is why the runner calls it in a child process."""
    start = time.perf_counter()
    lib = importlib.import_module(lib_name)
    lib.init(num_cpus=cpus)
    try:
        lib.get(make_kit(lib, 1).small_value.remote())
        return time.perf_counter() - start
    finally:
        lib.shutdown()


# ---- all of it ---------------------------------------------------------------------------

def run_all(lib_name: str, quick: bool = False, cpus: int = NUM_CPUS) -> list[Row]:
    """The rows `row_names(lib_name, quick, cpus)` names, in order ("taskmesh" or
    "ray"): those of a local cluster of `cpus` CPUs, then, for taskmesh on the default
    2 CPUs only, the cross-node row on a two-node cluster of its own."""
    settings = QUICK if quick else FULL
    rows = single_node_rows(lib_name, settings, cpus)
    if CROSS_NODE_ROW in row_names(lib_name, quick, cpus):
        rows.append(_row(CROSS_NODE_ROW, cross_node_get_gbps(settings.duration_s), "GB/s"))
    return rows


def single_node_rows(lib_name: str, settings: Settings, cpus: int = NUM_CPUS) -> list[Row]:
    """Start a local cluster with `cpus` CPUs, measure the idle RSS after one task (with
    every worker started), run every timed workload of `row_names`, and always shut
    down."""
    lib = importlib.import_module(lib_name)
    lib.init(num_cpus=cpus)
    wanted = set(row_names(lib_name, settings is QUICK, cpus))
    try:
        kit = make_kit(lib, settings.batch, cpus)
        lib.get(kit.small_value.remote())
        time.sleep(settings.settle_s)
        rows = [_row(IDLE_RSS, cluster_rss_mib(lib_name, lib), "MiB")]
        for name, (unit, build) in _WORKLOADS.items():
            if name not in wanted:
                continue
            step = build(kit)
            rate = _rate(step, settings.duration_s) * _UNIT_SCALE.get(unit, 1)
            rows.append(_row(name, rate, unit))
            del step  # drops this row's actor handles (or refs), so they can be freed
        return rows
    finally:
        lib.shutdown()


# ---- cross-node (taskmesh only) ----------------------------------------------------------

def cross_node_get_gbps(duration_s: float, nbytes: int = SIZE_100MB) -> float:
    """GB/s of a task on node "a" receiving a fresh `nbytes` array made by a task on node
    "b": two node agents (1 CPU each, resources {"a": 1} and {"b": 1}) on this machine and
    one Redis, all started here and always stopped again."""
    import taskmesh
    from taskmesh._base import config
    from taskmesh.workers import launch
    from taskmesh.workers import process as _process

    with contextlib.ExitStack() as undo:  # stops whatever was started, last first
        session = Path(tempfile.mkdtemp(prefix="microbenchmark-", dir=config.temp_root()))
        undo.callback(shutil.rmtree, session, ignore_errors=True)
        server = launch.start_redis(data_dir=session / "redis")
        undo.callback(server.stop)
        for name in ("a", "b"):
            agent, _ = launch.start_agent(
                server.url, num_cpus=1, resources={name: 1},
                log_path=session / f"agent-{name}.log", fate_share=True)
            undo.callback(_process.stop_processes, [agent.pid], timeout_s=10)
        taskmesh.init(address=server.url)
        undo.callback(taskmesh.shutdown)
        return _partly_timed_rate(_cross_node_measure(taskmesh, nbytes), duration_s) / GB


def _cross_node_measure(lib: ModuleType, nbytes: int) -> Callable[[], tuple[int, float]]:
    """One fresh object per call: made by a task on "b" and awaited (not timed), then
    the consumer task on "a" is timed from submission to its result, which covers
    scheduling it, pulling the bytes from b's transfer server into a's shared memory
    and mapping them."""

    def make(n: int) -> Any:
        import numpy as np

        return np.full(n, 1, dtype=np.uint8)

    def size(x: Any) -> int:
        return x.nbytes

    produce = lib.remote(resources={"b": 1})(make)
    consume = lib.remote(resources={"a": 1})(size)

    def measure() -> tuple[int, float]:
        ref = produce.remote(nbytes)
        lib.wait([ref])
        start = time.perf_counter()
        received = lib.get(consume.remote(ref))
        return received, time.perf_counter() - start
    return measure


def _row(name: str, value: float, unit: str) -> Row:
    if not math.isfinite(value):
        raise ValueError(f"{name}: measured {value!r} {unit}")
    return {"name": name, "value": float(value), "unit": unit}
