"""Scheduling benchmarks (taskmesh only): how costs scale with queued work and agents.

    python benchmarks/scheduling.py [--quick] [--json OUT]

Every row starts its own Redis and node agents on this machine, as real processes.

- queued Q: Q tasks are submitted in one go to a 2-CPU node, then drained. Reports the
  submission rate and the drain rate (tasks/s) for Q = 1K, 10K, 100K; the ratio of each
  to the 1K row shows whether a long queue slows either.
- idle ops/s: a 4-node cluster with nothing to do; Redis `INFO commandstats` counted
  over 10 s after a reset (what the agents' heartbeats and blocking reads cost).
- agents N: 1, 2, 4 and 8 agents of 1 CPU each, 4,000 tasks submitted at once;
  throughput, and its ratio to 1 agent (on 2 cores, more agents only add contention:
  this measures the overhead of spreading, not a speed-up).
- placement group 8: time from `placement_group([{"CPU": 1}] * 8, "STRICT_SPREAD")` to
  `get(pg.ready())` on 8 agents.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout: taskmesh is imported from it

import taskmesh  # noqa: E402
from taskmesh.util import placement_group, remove_placement_group  # noqa: E402
from taskmesh.workers import launch  # noqa: E402
from taskmesh.workers import process as _process  # noqa: E402


class Cluster:
    def __init__(self, work: Path, agents: int, num_cpus: float):
        self.redis = launch.start_redis(data_dir=work / "redis")
        self.procs = []
        for i in range(agents):
            proc, _ = launch.start_agent(self.redis.url, num_cpus=num_cpus,
                                            log_path=work / f"agent-{i}.log", fate_share=True)
            self.procs.append(proc)
        taskmesh.init(address=self.redis.url)

    def close(self) -> None:
        taskmesh.shutdown()
        _process.stop_processes([p.pid for p in self.procs], timeout_s=10)
        self.redis.stop()


@taskmesh.remote
def noop() -> int:
    return 0


def queued(work: Path, sizes: list[int]) -> dict[str, float]:
    out = {}
    cluster = Cluster(work / "queued", 1, 2)
    try:
        taskmesh.get([noop.remote() for _ in range(200)])  # warm the workers
        for q in sizes:
            t0 = time.perf_counter()
            refs = [noop.remote() for _ in range(q)]
            taskmesh.api.get_runtime().flush()
            t1 = time.perf_counter()
            taskmesh.get(refs)
            t2 = time.perf_counter()
            out[f"queued {q}: submit tasks/s"] = q / (t1 - t0)
            out[f"queued {q}: drain tasks/s"] = q / (t2 - t0)
            del refs
    finally:
        cluster.close()
    return out


def idle_ops(work: Path, seconds: float) -> dict[str, float]:
    cluster = Cluster(work / "idle", 4, 1)
    try:
        taskmesh.get([noop.remote() for _ in range(10)])
        time.sleep(2)
        r = taskmesh.api.get_runtime().store.redis
        r.config_resetstat()
        time.sleep(seconds)
        stats = r.info("commandstats")
        calls = sum(v["calls"] for v in stats.values())
        top = sorted(((v["calls"], k) for k, v in stats.items()), reverse=True)[:6]
        print("idle commands:", ", ".join(f"{k.removeprefix('cmdstat_')} {c}" for c, k in top))
        return {"idle 4 nodes: Redis ops/s": calls / seconds}
    finally:
        cluster.close()


def agents(work: Path, counts: list[int], tasks: int) -> dict[str, float]:
    out = {}
    for n in counts:
        cluster = Cluster(work / f"agents{n}", n, 1)
        try:
            taskmesh.get([noop.remote() for _ in range(100)])
            t0 = time.perf_counter()
            taskmesh.get([noop.remote() for _ in range(tasks)])
            out[f"{n} agents: tasks/s"] = tasks / (time.perf_counter() - t0)
        finally:
            cluster.close()
    base = out[f"{counts[0]} agents: tasks/s"]
    for n in counts:
        out[f"{n} agents: ratio to {counts[0]}"] = out[f"{n} agents: tasks/s"] / base
    return out


def pg_ready(work: Path, runs: int) -> dict[str, float]:
    cluster = Cluster(work / "pg", 8, 1)
    try:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            pg = placement_group([{"CPU": 1}] * 8, strategy="STRICT_SPREAD")
            taskmesh.get(pg.ready())
            times.append(time.perf_counter() - t0)
            remove_placement_group(pg)
            time.sleep(0.2)
        return {"placement group of 8 bundles ready (s, median)": sorted(times)[len(times) // 2]}
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results |= queued(work, [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
        results |= idle_ops(work, 3 if args.quick else 10)
        results |= agents(work, [1, 2, 4, 8], 1_000 if args.quick else 4_000)
        results |= pg_ready(work, 3 if args.quick else 5)
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:,.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
