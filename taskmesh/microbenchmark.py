"""Ray's core microbenchmarks (`ray microbenchmark`), written once against a Ray-like
module so that the very same code measures taskmesh and Ray.

Every workload only touches `lib.init/remote/get/put/wait/shutdown` and actor handles
(`Cls.remote()`, `Cls.options(max_concurrency=...)`, `handle.method.remote()`), with `lib`
imported by name at run time. This module imports nothing but the standard library at the top:
`benchmarks/run.py` loads it by file path into an interpreter that has Ray but not
taskmesh's dependencies (importing `taskmesh.microbenchmark` there would run
`taskmesh/__init__.py`, which needs psutil, cloudpickle, ...).

Rows are {"name", "value", "unit"}; names follow Ray's rows where one exists.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

Row = dict[str, Any]
Step = Callable[[], int]  # does some work, returns how many units (tasks, refs...) it did

NUM_CPUS = 2
MIB = 1024 * 1024

IDLE_RSS = "idle cluster RSS"
TIMED_ROWS = (
    "single client tasks sync",
    "single client tasks async",
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
ROW_NAMES = (IDLE_RSS, *TIMED_ROWS)  # what run_all returns, in order


@dataclass(frozen=True)
class Settings:
    duration_s: float  # measured time per timed workload
    batch: int  # refs per async/get-many/wait-many call
    settle_s: float  # pause before the RSS sample, so start-up work has finished


FULL = Settings(duration_s=2.0, batch=1000, settle_s=2.0)
# A smoke run (tests, `taskmesh microbenchmark --quick`): rates stay per task/ref, so the
# smaller batches make the "1000 refs" rows noisier, not wrong in kind.
QUICK = Settings(duration_s=0.3, batch=100, settle_s=0.1)


@dataclass(frozen=True)
class Kit:
    """What the workloads call: `lib`, the batch size, and the remote function and actor
    classes of Ray's microbenchmark (`small_value`, `Actor`, `AsyncActor`, `Client`)."""

    lib: ModuleType
    batch: int
    small_value: Any  # remote function returning 0
    Actor: Any  # num_cpus=0, sync `small_value()`
    AsyncActor: Any  # default options (placed on 1 CPU, holds none), `async def small_value()`
    Client: Any  # num_cpus=0, holds a target actor and calls it in batches


def make_kit(lib: ModuleType, batch: int) -> Kit:
    """Everything is defined in this closure so that both libraries pickle it by value:
    a Ray worker cannot import this module by name."""

    def small_value() -> int:
        return 0

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

    return Kit(lib, batch, lib.remote(small_value), lib.remote(num_cpus=0)(Actor),
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
    exporting the function, starting workers and opening connections, which is not the
    steady state these rows are about (start-up has its own row)."""
    _run_for(step, duration_s / 10)
    done, elapsed = _run_for(step, duration_s)
    return done / elapsed


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


def _one_to_n(k: Kit) -> Step:
    """The driver round-robins each batch over NUM_CPUS actors (Ray: cpu_count // 2
    actors, called from a Client actor)."""
    actors = [k.Actor.remote() for _ in range(NUM_CPUS)]
    return _calls_batched(k.lib, [_actor_call(a) for a in actors], k.batch)


def _n_to_n(k: Kit) -> Step:
    """NUM_CPUS Client actors, each calling its own target actor `batch` times per step,
    all at once; rate = total calls (as Ray's "n:n actor calls with arg async", no arg)."""
    # (client, target) pairs: the driver keeps the targets' handles too, so they live
    # exactly as long as their clients
    pairs = [(k.Client.remote(t), t) for t in (k.Actor.remote() for _ in range(NUM_CPUS))]

    def step() -> int:
        k.lib.get([client.small_value_batch.remote(k.batch) for client, _ in pairs])
        return k.batch * len(pairs)
    return step


_WORKLOADS: dict[str, tuple[str, Callable[[Kit], Step]]] = {
    "single client tasks sync": ("tasks/s", lambda k: _calls_sync(k.lib, k.small_value.remote)),
    "single client tasks async": ("tasks/s", lambda k: _calls_batched(k.lib, [k.small_value.remote], k.batch)),
    "single client put calls": ("calls/s", _put_calls),
    "single client get calls": ("calls/s", _get_calls),
    "single client get 1000 refs": ("refs/s", _get_many),
    "single client wait 1000 refs": ("refs/s", _wait_many),
    "1:1 actor calls sync": ("calls/s", lambda k: _calls_sync(k.lib, _actor_call(k.Actor.remote()))),
    "1:1 actor calls async": ("calls/s", lambda k: _calls_batched(k.lib, [_actor_call(k.Actor.remote())], k.batch)),
    "1:1 actor calls concurrent": ("calls/s", lambda k: _calls_batched(
        k.lib, [_actor_call(k.Actor.options(max_concurrency=16).remote())], k.batch)),
    "1:n actor calls async": ("calls/s", _one_to_n),
    "n:n actor calls async": ("calls/s", _n_to_n),
    "1:1 async-actor calls sync": ("calls/s", lambda k: _calls_sync(k.lib, _actor_call(k.AsyncActor.remote()))),
    "1:1 async-actor calls async": ("calls/s", lambda k: _calls_batched(
        k.lib, [_actor_call(k.AsyncActor.remote())], k.batch)),
}


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


def startup_to_first_result(lib_name: str) -> float:
    """Seconds from `import lib; lib.init(num_cpus=2)` to the first task's result, then
    shut down. Only meaningful in a fresh interpreter (nothing of `lib` imported yet),
    which is why the runner calls it in a child process."""
    start = time.perf_counter()
    lib = importlib.import_module(lib_name)
    lib.init(num_cpus=NUM_CPUS)
    try:
        lib.get(make_kit(lib, 1).small_value.remote())
        return time.perf_counter() - start
    finally:
        lib.shutdown()


# ---- all of it ---------------------------------------------------------------------------

def run_all(lib_name: str, quick: bool = False) -> list[Row]:
    """Start a local cluster of `lib_name` ("taskmesh" or "ray") with 2 CPUs, measure
    the idle RSS after one task, run every timed workload, and always shut down."""
    settings = QUICK if quick else FULL
    lib = importlib.import_module(lib_name)
    lib.init(num_cpus=NUM_CPUS)
    try:
        kit = make_kit(lib, settings.batch)
        lib.get(kit.small_value.remote())
        time.sleep(settings.settle_s)
        rows = [_row(IDLE_RSS, cluster_rss_mib(lib_name, lib), "MiB")]
        for name, (unit, build) in _WORKLOADS.items():
            step = build(kit)
            rows.append(_row(name, _rate(step, settings.duration_s), unit))
            del step  # drops this row's actor handles, so its actors can exit
        return rows
    finally:
        lib.shutdown()


def _row(name: str, value: float, unit: str) -> Row:
    if not math.isfinite(value):
        raise ValueError(f"{name}: measured {value!r} {unit}")
    return {"name": name, "value": float(value), "unit": unit}
