"""Side-by-side microbenchmarks: taskmesh, and optionally Ray, on the same workloads.

    python benchmarks/run.py [--compare ray] [--ray-python PATH] [--quick] [--cpus N] [--json OUT]

`--cpus N` (N > 2) is the many-core mode: `init(num_cpus=N)` and the rows that scale with
cores (tasks sync and async, multi-client tasks with N/2 clients, n:n actor calls with N/2
pairs, 1 GB put beside a 1 GB memcpy, start-up, idle RSS with N workers warm).

Each library runs in its own child process (`taskmesh.tools.microbenchmark.run_all`), one after
the other so they never compete for the CPUs; then "startup to first result" is measured
in fresh child processes (median of --startup-runs). Every child loads
taskmesh/tools/microbenchmark.py by file path (that module imports only the standard library),
with the repo root on PYTHONPATH: Ray's interpreter need not have taskmesh installed, and
neither library is imported before the start-up clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODULE_FILE = REPO / "taskmesh" / "tools" / "microbenchmark.py"
MARK = "@@microbenchmark@@ "
TIMEOUT_S = 600

# Both children load the module by file path, without importing the taskmesh package: the
# Ray interpreter may lack taskmesh's dependencies, and for taskmesh `import
# taskmesh.tools.microbenchmark` would import taskmesh before startup_to_first_result starts its
# clock (Ray's import is inside it), hiding ~0.3 s of taskmesh's start-up.
LOADER = ("import importlib.util, sys\n"
          f"spec = importlib.util.spec_from_file_location('_tm_microbenchmark', {str(MODULE_FILE)!r})\n"
          "mb = importlib.util.module_from_spec(spec)\n"
          "sys.modules[spec.name] = mb\n"
          "spec.loader.exec_module(mb)\n")


def child(python: str, lib: str, call: str, env: dict[str, str]) -> Any:
    """Run `mb.<call>` for `lib` in a fresh interpreter; return what it printed as JSON.
    The child gets its own process group, killed whole if it hangs or fails, so no
    cluster process outlives it."""
    code = LOADER + f"import json\nprint({MARK!r} + json.dumps(mb.{call}), flush=True)\n"
    proc = subprocess.Popen([python, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers only: the child shut down already
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} child failed with exit code {proc.returncode}: {call}")
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if not lines:
        raise RuntimeError(f"{lib} child printed no result: {out[-2000:]}")
    return json.loads(lines[-1][len(MARK):])


def child_env(lib: str, temp_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if lib == "taskmesh":  # always a fresh local cluster, never one found on this machine
        env.pop("TASKMESH_ADDRESS", None)
        env["TASKMESH_TEMP_DIR"] = temp_dir
    else:
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def measure(lib: str, python: str, quick: bool, startup_runs: int, temp_dir: str,
            cpus: int = 2) -> dict[str, dict]:
    env = child_env(lib, temp_dir)
    print(f"running {lib} workloads ({python}) ...", file=sys.stderr, flush=True)
    rows = {r["name"]: r for r in child(python, lib, f"run_all({lib!r}, quick={quick}, cpus={cpus})", env)}
    startups = []
    for i in range(startup_runs):
        print(f"{lib} startup {i + 1}/{startup_runs} ...", file=sys.stderr, flush=True)
        startups.append(child(python, lib, f"startup_to_first_result({lib!r}, cpus={cpus})", env))
    rows["startup to first result"] = {"name": "startup to first result", "unit": "s",
                                       "value": statistics.median(startups), "runs": startups}
    return rows


def ratio(unit: str, ours: float, theirs: float) -> float:
    """> 1 means taskmesh is better: more per second, or fewer seconds / MiB."""
    return theirs / ours if unit in ("s", "MiB") else ours / theirs


def table(results: dict[str, dict[str, dict]]) -> str:
    """One line per row of any library, in the order taskmesh reports them; a row that a
    library does not report (e.g. taskmesh's cross-node row for Ray) shows "n/a"."""
    libs = list(results)
    names = list(dict.fromkeys(name for rows in results.values() for name in rows))
    lines = []
    if len(libs) > 1:
        lines.append("ratio > 1 means taskmesh is better (taskmesh/ray for rates, "
                     "ray/taskmesh for s and MiB)")
    head = f"{'workload':<32} {'unit':<8}" + "".join(f" {lib:>12}" for lib in libs)
    lines.append(head + (f" {'ratio':>8}" if len(libs) > 1 else ""))
    lines.append("-" * len(lines[-1]))
    for name in names:
        unit = next(results[lib][name]["unit"] for lib in libs if name in results[lib])
        values = [results[lib][name]["value"] if name in results[lib] else None for lib in libs]
        line = f"{name:<32} {unit:<8}" + "".join(f" {cell(unit, v):>12}" for v in values)
        if len(libs) > 1:
            compared = "n/a" if None in values else f"{ratio(unit, values[0], values[1]):.2f}"
            line += f" {compared:>8}"
        lines.append(line)
    return "\n".join(lines)


def cell(unit: str, value: float | None) -> str:
    """Seconds and GB/s with 2 decimals (they are small numbers), counts without."""
    if value is None:
        return "n/a"
    return f"{value:,.{2 if unit in ('s', 'GB/s') else 0}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=["ray"], help="also run the workloads on Ray")
    parser.add_argument("--ray-python", default=sys.executable,
                        help="interpreter that has Ray installed (default: this one)")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--startup-runs", type=int, default=3,
                        help="fresh processes measuring start-up per library (median reported)")
    parser.add_argument("--cpus", type=int, default=2,
                        help="CPUs of the local cluster; above 2: the many-core rows only")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON here")
    args = parser.parse_args()

    temp_dir = tempfile.mkdtemp(prefix="taskmesh-bench-")
    try:
        results = {"taskmesh": measure("taskmesh", sys.executable, args.quick,
                                       args.startup_runs, temp_dir, args.cpus)}
        if args.compare == "ray":
            results["ray"] = measure("ray", args.ray_python, args.quick, args.startup_runs,
                                     temp_dir, args.cpus)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
