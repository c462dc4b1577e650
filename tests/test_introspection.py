"""`taskmesh list` and `taskmesh.util.list_named_actors`: read from Redis."""

from __future__ import annotations

import time

from click.testing import CliRunner

import taskmesh
from taskmesh._core.context import get_runtime
from taskmesh.cli import main as cli
from taskmesh.util import list_named_actors


def _wait_alive(handle) -> None:
    taskmesh.get(handle.__ray_ready__.remote(), timeout=30)


def test_list_actors_and_filters(ray) -> None:
    @ray.remote
    class Probe:
        def ping(self):
            return "pong"

    a = Probe.options(name="probe-a").remote()
    b = Probe.remote()
    _wait_alive(a)
    _wait_alive(b)
    url = get_runtime().store.url
    result = CliRunner().invoke(cli, ["list", "actors", "--address", url, "--filter", "state=ALIVE"])
    assert result.exit_code == 0, result.output
    assert a._actor_id in result.output and b._actor_id in result.output
    assert "probe-a" in result.output and "Probe" in result.output
    taskmesh.kill(b)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        dead = CliRunner().invoke(cli, ["list", "actors", "--address", url, "--filter", "state=DEAD"])
        if b._actor_id in dead.output:
            break
        time.sleep(0.1)
    assert b._actor_id in dead.output and a._actor_id not in dead.output
    bad = CliRunner().invoke(cli, ["list", "actors", "--address", url, "--filter", "state"])
    assert bad.exit_code != 0 and "--filter" in bad.output


def test_list_nodes(ray) -> None:
    url = get_runtime().store.url
    result = CliRunner().invoke(cli, ["list", "nodes", "--address", url])
    assert result.exit_code == 0, result.output
    node_id = ray.nodes()[0]["NodeID"]
    assert node_id in result.output and "ALIVE" in result.output


def test_list_named_actors_per_namespace(ray) -> None:
    @ray.remote
    class Named:
        pass

    keep = Named.options(name="listed-one").remote()
    other = Named.options(name="listed-two", namespace="elsewhere").remote()
    _wait_alive(keep)
    _wait_alive(other)
    assert "listed-one" in list_named_actors()
    assert "listed-two" not in list_named_actors()
    everywhere = list_named_actors(all_namespaces=True)
    assert {"name": "listed-two", "namespace": "elsewhere"} in everywhere
    taskmesh.kill(other)


def test_list_objects_and_jobs(ray) -> None:
    import numpy as np

    url = get_runtime().store.url
    big = ray.put(np.ones(200_000))
    small = ray.put("small")
    result = CliRunner().invoke(cli, ["list", "objects", "--address", url, "--filter", "kind=shm"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if big.hex() in ln)
    assert "owner" in line and ray.get_runtime_context().get_node_id() in line
    assert small.hex() not in result.output  # inline, filtered out

    job_id = ray.get_runtime_context().get_job_id()
    jobs = CliRunner().invoke(cli, ["list", "jobs", "--address", url, "--filter", "state=RUNNING"])
    assert jobs.exit_code == 0, jobs.output
    assert any(ln.startswith(job_id) for ln in jobs.output.splitlines())
