"""The logical resources of running tasks never add up to more than their node has: a
task whose arguments were not ready when it was handed to a worker lends its CPU out
while it waits, as a task blocked in `get` does, but it starts only once it has the CPU
back (Ray starts no task before its arguments are there)."""

from __future__ import annotations

import time
from pathlib import Path

import taskmesh
from conftest import wait_until
from taskmesh.store import Store


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_a_task_that_waited_for_its_argument_runs_only_with_its_cpus(cluster_factory, tmp_path: Path) -> None:
    gate, log, started = tmp_path / "gate", tmp_path / "intervals", tmp_path / "started"

    @taskmesh.remote(num_cpus=0)
    def gated() -> int:
        while not gate.exists():
            time.sleep(0.01)
        return 1

    @taskmesh.remote(num_cpus=2)
    def two(x: int, seconds: float) -> int:
        begin = time.time()
        with open(started, "a") as f:
            f.write("x\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{begin} {time.time()}\n")
        return x

    @taskmesh.remote(num_cpus=0)
    def spawner(box: list) -> int:
        # A ref it did not make itself goes to the child at once: the child's worker
        # waits for it (and lends its 2 CPUs out meanwhile).
        return taskmesh.get(two.options(name="waiter").remote(box[0], 0.5))

    with cluster_factory(nodes=1, num_cpus=4) as cluster:
        store = Store(cluster.url)
        taskmesh.init(address=cluster.url)
        try:
            spawned = spawner.remote([gated.remote()])

            def cpus_free() -> float:
                node = next(n for n in store.nodes() if n["node_id"] == cluster.started[0])
                return node["resources_available"].get("CPU", 0.0)

            def waiter_running() -> bool:
                from taskmesh.util.state import list_tasks

                return any(t.state == "RUNNING" for t in list_tasks(address=cluster.url,
                                                                     filters=[("name", "=", "waiter")]))

            wait_until(waiter_running, timeout_s=30, what="the waiter handed to a worker")
            wait_until(lambda: cpus_free() == 4.0, timeout_s=30, what="the waiter's CPUs lent out")
            others = [two.remote(0, 2.0) for _ in range(2)]  # they take all 4 CPUs
            wait_until(lambda: started.exists() and len(started.read_text().split()) == 2,
                       timeout_s=30, what="the two others started")
            gate.touch()  # the waiter's argument is there now
            assert taskmesh.get([spawned, *others], timeout=60) == [1, 0, 0]
        finally:
            taskmesh.shutdown()
            store.close()
    intervals = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    assert len(intervals) == 3
    assert _most_at_once(intervals) == 2  # three 2-CPU tasks never ran at once on 4 CPUs
