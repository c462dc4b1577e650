"""CPU time per task by process role: taskmesh and Ray side by side on the same workloads.

    python benchmarks/cpu_per_task.py [--compare ray] [--ray-python PATH] [--cpus N]
                                      [--tasks 10000] [--batch 1000] [--json OUT]

On a shared or small machine wall-clock rates swing with whatever else runs; the CPU
time each process spends per task does not, and it says where the work goes. Each
library runs in its own child process (this file, `--child LIB`), one after the other.
The child starts a local cluster with `init(num_cpus=N)`, warms up, then reads the
user+system CPU time of every process of the cluster before and after running the
workload, and divides by the number of tasks (or calls):

- no-op tasks: `get([f.remote() for _ in range(batch)])` until `tasks` ran;
- actor calls: `get([a.f.remote() for _ in range(batch)])` on one actor.

Roles. taskmesh: driver (this process), agent (`taskmesh.cli worker`), worker
(`taskmesh.workers.worker_main`), redis (the embedded server). Ray: driver, raylet, gcs
(`gcs_server`), worker (`default_worker.py` / `ray::...`), others (dashboard, monitors,
agents). For taskmesh it also counts the Redis commands per task (INFO commandstats,
commands run inside Lua scripts included; EVALSHA counted apart).

Only the standard library is imported at the top: Ray's interpreter may lack taskmesh's
dependencies (psutil comes with both).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARK = "@@cpu_per_task@@ "
ROLES = {"taskmesh": ("driver", "agent", "worker", "redis", "others"),
         "ray": ("driver", "raylet", "gcs", "worker", "others")}


# ---- the child ----------------------------------------------------------------------------

def role_of(lib: str, cmdline: list[str]) -> str:
    cmd = " ".join(cmdline)
    if lib == "taskmesh":
        if "redis-server" in cmd or "valkey" in cmd:
            return "redis"
        if "taskmesh.workers.worker_main" in cmd:
            return "worker"
        if "taskmesh.cli" in cmd and " worker" in cmd or cmd.rstrip().endswith("taskmesh worker"):
            return "agent"
        return "others"
    exe = os.path.basename(cmdline[0]) if cmdline else ""
    if exe in ("gcs_server", "raylet"):
        return "gcs" if exe == "gcs_server" else "raylet"
    if cmd.startswith("ray::") and not cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
        return "worker"
    if "default_worker.py" in cmd:
        return "worker"
    return "others"


def cluster_processes(lib: str) -> dict[int, Any]:
    """The driver's descendants, plus (Ray) processes started after it that run a file
    under a `ray/` directory (some are re-parented)."""
    import psutil

    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    if lib == "ray":
        for p in psutil.process_iter(["cmdline", "create_time"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid != me.pid and (p.info["create_time"] or 0) >= me.create_time() and "/ray/" in cmd:
                procs.setdefault(p.pid, p)
    return procs


def cpu_by_role(lib: str) -> dict[str, float]:
    """Seconds of user+system CPU per role, the driver included."""
    import psutil

    out = dict.fromkeys(ROLES[lib], 0.0)
    me = psutil.Process().cpu_times()
    out["driver"] = me.user + me.system
    for p in cluster_processes(lib).values():
        try:
            t = p.cpu_times()
            out[role_of(lib, p.cmdline())] += t.user + t.system
        except psutil.Error:
            pass  # exited meanwhile
    return out


def redis_calls(lib_module: Any) -> tuple[int, int]:
    """(all commands, EVALSHA) the cluster's Redis has run, for taskmesh."""
    from taskmesh._core.context import get_runtime

    stats = get_runtime().store.redis.info("commandstats")
    total = sum(v["calls"] for v in stats.values())
    return total, stats.get("cmdstat_evalsha", {}).get("calls", 0)


def measure(lib_name: str, cpus: int, tasks: int, batch: int) -> dict[str, Any]:
    lib = importlib.import_module(lib_name)
    lib.init(num_cpus=cpus)
    try:
        @lib.remote
        def noop() -> int:
            return 0

        @lib.remote(num_cpus=0)
        class Actor:
            def noop(self) -> int:
                return 0

        actor = Actor.remote()
        workloads = {"no-op tasks": lambda: lib.get([noop.remote() for _ in range(batch)]),
                     "actor calls": lambda: lib.get([actor.noop.remote() for _ in range(batch)])}
        out: dict[str, Any] = {}
        for name, step in workloads.items():
            for _ in range(max(2, tasks // batch // 5)):  # warm up: workers started, code loaded
                step()
            time.sleep(1.0)  # let start-up work settle
            before = cpu_by_role(lib_name)
            calls = redis_calls(lib) if lib_name == "taskmesh" else None
            start = time.perf_counter()
            done = 0
            while done < tasks:
                step()
                done += batch
            elapsed = time.perf_counter() - start
            after = cpu_by_role(lib_name)
            row = {role: (after[role] - before[role]) / done * 1e6 for role in before}
            row["total"] = sum(row.values())
            row["rate"] = done / elapsed
            if calls is not None:
                end = redis_calls(lib)
                row["redis commands"] = (end[0] - calls[0]) / done
                row["evalsha"] = (end[1] - calls[1]) / done
            out[name] = row
        return out
    finally:
        lib.shutdown()


# ---- the parent ---------------------------------------------------------------------------

def run_child(lib: str, python: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("TASKMESH_ADDRESS", None)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cmd = [python, __file__, "--child", lib, "--cpus", str(args.cpus), "--tasks", str(args.tasks),
           "--batch", str(args.batch)]
    print(f"running {lib} ({python}) ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=1200,
                         start_new_session=True, check=True).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith(MARK))
    return json.loads(line[len(MARK):])


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for workload in ("no-op tasks", "actor calls"):
        lines.append(f"\n{workload}: CPU µs per task by process role")
        for lib, rows in results.items():
            row = rows[workload]
            cells = "  ".join(f"{role} {row[role]:7.1f}" for role in (*ROLES[lib], "total"))
            extra = ""
            if "redis commands" in row:
                extra = f"  | {row['redis commands']:.2f} Redis commands/task ({row['evalsha']:.2f} EVALSHA)"
            lines.append(f"  {lib:<9} {cells}  | {row['rate']:,.0f}/s wall{extra}")
        if len(results) == 2:
            a, b = (results[lib][workload]["total"] for lib in results)
            lines.append(f"  total CPU ratio taskmesh/ray: {a / b:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=["ray"])
    parser.add_argument("--ray-python", default=sys.executable)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(MARK + json.dumps(measure(args.child, args.cpus, args.tasks, args.batch)), flush=True)
        return
    results = {"taskmesh": run_child("taskmesh", sys.executable, args)}
    if args.compare == "ray":
        results["ray"] = run_child("ray", args.ray_python, args)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
