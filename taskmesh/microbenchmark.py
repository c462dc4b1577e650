"""Ray's core microbenchmarks (`ray microbenchmark`), written once against a Ray-like
module so that the very same code measures taskmesh and Ray.

Every workload only touches `lib.init/remote/get/put/wait/shutdown`, with `lib` imported
by name at run time. This module imports nothing but the standard library at the top:
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


def _make_small_value(lib: ModuleType) -> Any:
    """The remote `return 0` task (Ray's `small_value`). Defined in a closure so that both
    libraries pickle it by value: a Ray worker cannot import this module by name."""

    def small_value() -> int:
        return 0

    return lib.remote(small_value)


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

def _tasks_sync(lib: ModuleType, f: Any, batch: int) -> Step:
    def step() -> int:
        lib.get(f.remote())
        return 1
    return step


def _tasks_async(lib: ModuleType, f: Any, batch: int) -> Step:
    def step() -> int:
        lib.get([f.remote() for _ in range(batch)])
        return batch
    return step


def _put_calls(lib: ModuleType, f: Any, batch: int) -> Step:
    def step() -> int:
        lib.put(0)
        return 1
    return step


def _get_calls(lib: ModuleType, f: Any, batch: int) -> Step:
    ref = lib.put(0)

    def step() -> int:
        lib.get(ref)
        return 1
    return step


def _get_many(lib: ModuleType, f: Any, batch: int) -> Step:
    refs = [lib.put(i) for i in range(batch)]

    def step() -> int:
        lib.get(refs)
        return len(refs)
    return step


def _wait_many(lib: ModuleType, f: Any, batch: int) -> Step:
    refs = [f.remote() for _ in range(batch)]
    lib.wait(refs, num_returns=len(refs))  # every task has finished before timing starts

    def step() -> int:
        lib.wait(refs, num_returns=len(refs))
        return len(refs)
    return step


_WORKLOADS: dict[str, tuple[str, Callable[[ModuleType, Any, int], Step]]] = {
    "single client tasks sync": ("tasks/s", _tasks_sync),
    "single client tasks async": ("tasks/s", _tasks_async),
    "single client put calls": ("calls/s", _put_calls),
    "single client get calls": ("calls/s", _get_calls),
    "single client get 1000 refs": ("refs/s", _get_many),
    "single client wait 1000 refs": ("refs/s", _wait_many),
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
        lib.get(_make_small_value(lib).remote())
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
        small_value = _make_small_value(lib)
        lib.get(small_value.remote())
        time.sleep(settings.settle_s)
        rows = [_row(IDLE_RSS, cluster_rss_mib(lib_name, lib), "MiB")]
        for name, (unit, build) in _WORKLOADS.items():
            step = build(lib, small_value, settings.batch)
            rows.append(_row(name, _rate(step, settings.duration_s), unit))
        return rows
    finally:
        lib.shutdown()


def _row(name: str, value: float, unit: str) -> Row:
    if not math.isfinite(value):
        raise ValueError(f"{name}: measured {value!r} {unit}")
    return {"name": name, "value": float(value), "unit": unit}
