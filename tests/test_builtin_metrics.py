"""The cluster's built-in Prometheus metrics (taskmesh.dashboard.metrics), scraped from
`taskmesh metrics --serve` on a real cluster and read with prometheus_client's parser."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until
from taskmesh.util.metrics import Counter

Samples = dict[tuple[str, frozenset], float]


def _samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def endpoint(shared_cluster) -> Iterator[str]:
    """`taskmesh metrics --serve 0` on the module's cluster: its /metrics URL."""
    proc = subprocess.Popen([sys.executable, "-m", "taskmesh.cli", "metrics", "--address",
                             shared_cluster.url, "--serve", "0"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # "Serving metrics on http://HOST:PORT/metrics"
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_tasks_queues_actors_and_nodes_are_scraped(ray, endpoint: str, tmp_path: Path) -> None:
    @ray.remote
    def f(x: int) -> int:
        Counter("builtin_test_calls").inc()
        return x

    @ray.remote(max_retries=0)
    def bad() -> None:
        raise ValueError("no")

    @ray.remote(max_retries=1, retry_exceptions=True)
    def flaky(marker: str) -> str:
        if not Path(marker).exists():
            Path(marker).touch()
            raise RuntimeError("first attempt fails")
        return "ok"

    @ray.remote(num_cpus=1)
    class Box:
        def get(self) -> int:
            return 1

    assert ray.get([f.remote(i) for i in range(5)]) == list(range(5))
    with pytest.raises(ValueError):
        ray.get(bad.remote())
    assert ray.get(flaky.remote(str(tmp_path / "marker"))) == "ok"
    box = Box.remote()
    assert ray.get(box.get.remote()) == 1
    # No node has this resource: the tasks wait in their shape queue.
    stuck = [f.options(resources={"nowhere": 1}).remote(i) for i in range(3)]

    def scraped() -> Samples | None:
        body = urllib.request.urlopen(endpoint, timeout=5).read().decode()
        got = _samples(body)
        done = (got.get(("taskmesh_tasks_finished_total", frozenset({("name", "f")}))) == 5
                and got.get(("taskmesh_tasks_retried_total", frozenset({("name", "flaky")}))) == 1
                and got.get(("taskmesh_tasks_failed_total", frozenset({("name", "bad")}))) == 1
                and got.get(("builtin_test_calls_total", frozenset())) == 5
                and got.get(("taskmesh_tasks_submitted_total", frozenset({("name", "f")}))) == 8
                and _cpu_used(got) == 1)  # the actor's
        return got if done else None  # submitted: 5 + the 3 stuck


    got = wait_until(scraped, what="the task counts in the scrape")
    name = {("name", "f")}
    assert got[("taskmesh_tasks_started_total", frozenset(name))] == 5
    assert got[("taskmesh_tasks_running", frozenset(name))] == 0
    assert got[("taskmesh_tasks_failed_total", frozenset({("name", "flaky")}))] == 1  # its first attempt
    assert got[("taskmesh_tasks_finished_total", frozenset({("name", "flaky")}))] == 1
    assert got[("taskmesh_queue_depth", frozenset({("queue", "CPU=1,nowhere=1"), ("kind", "shape")}))] == 3
    assert got[("taskmesh_nodes", frozenset({("state", "alive")}))] == 1
    assert got[("taskmesh_nodes", frozenset({("state", "dead")}))] == 0
    assert got[("taskmesh_actors", frozenset({("state", "ALIVE")}))] >= 1
    node = shared_cluster_node(got)
    assert got[("taskmesh_node_resources", frozenset({("node", node), ("resource", "CPU")}))] == 2
    assert got[("taskmesh_object_store_capacity_bytes", frozenset({("node", node)}))] > 0
    assert got[("taskmesh_dead_letters", frozenset())] == 0
    ray.cancel(stuck[0])
    del stuck


def _cpu_used(got: Samples) -> float:
    return sum(v for (name, labels), v in got.items()
               if name == "taskmesh_node_resources_used" and ("resource", "CPU") in labels)


def shared_cluster_node(got: Samples) -> str:
    nodes = {dict(labels)["node"] for name, labels in got if name == "taskmesh_node_resources"}
    assert len(nodes) == 1, nodes
    return nodes.pop()


def test_metrics_prints_the_same_text(ray, shared_cluster) -> None:
    out = subprocess.run([sys.executable, "-m", "taskmesh.cli", "metrics", "--address", shared_cluster.url],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    got = _samples(out)
    assert got[("taskmesh_nodes", frozenset({("state", "alive")}))] == 1
    assert "# TYPE taskmesh_tasks_finished_total counter" in out.splitlines()
