"""Objects, options and workers' environments as Ray documents them: numpy arrays from
the object store are read-only whatever their size, `bind(...).get_options()`,
runtime_env `env_vars` expansion and unavailable environments, OMP_NUM_THREADS from
num_cpus, and the node's CPUs never oversubscribed by running tasks."""

from __future__ import annotations

import os

import numpy as np
import pytest

import taskmesh
from taskmesh.exceptions import RuntimeEnvSetupError


def test_numpy_arrays_from_the_store_are_read_only(ray) -> None:
    # Ray ("Serialization", "Numpy Arrays"): arrays are stored zero-copy and come back
    # read-only; small ones, stored inline, too, in containers too, and as arguments.
    @ray.remote
    def make():
        return np.zeros(3)

    @ray.remote
    def nested():
        return [np.zeros(3), {"a": np.ones(2)}]

    @ray.remote
    def flags(a, box):
        return a.flags.writeable, box["a"].flags.writeable

    assert ray.get(make.remote()).flags.writeable is False
    assert ray.get(ray.put(np.zeros(3))).flags.writeable is False
    got = ray.get(nested.remote())
    assert got[0].flags.writeable is False and got[1]["a"].flags.writeable is False
    assert ray.get(flags.remote(np.zeros(3), {"a": np.ones(2)})) == (False, False)
    assert ray.get(flags.remote(ray.put(np.zeros(3)), {"a": np.ones(2)})) == (False, False)
    copy = ray.get(make.remote()).copy()  # Ray's advice: copy to write
    copy[0] = 1.0
    assert copy[0] == 1.0


def test_bind_get_options_holds_only_the_options_set() -> None:
    # Ray's DAG nodes keep the options given to the decorator and .options(), not the
    # defaults filled in for submission. No cluster: binding submits nothing.
    def f(x):
        return x

    class A:
        def m(self, x):
            return x

    plain, costly = taskmesh.remote(f), taskmesh.remote(num_cpus=3, max_retries=1)(f)
    assert plain.bind(1).get_options() == {}
    assert plain.options(num_cpus=2).bind(1).get_options() == {"num_cpus": 2}
    assert costly.bind(1).get_options() == {"num_cpus": 3, "max_retries": 1}
    assert costly.options(name="x").bind(1).get_options() == {
        "num_cpus": 3, "max_retries": 1, "name": "x"}
    actor = taskmesh.remote(A)
    assert actor.bind().get_options() == {}
    assert taskmesh.remote(num_cpus=2)(A).options(max_concurrency=2).bind().get_options() == {
        "num_cpus": 2, "max_concurrency": 2}
    node = actor.bind()
    assert node.m.bind(1).get_options() == {}
    assert node.m.options(num_returns=1).bind(1).get_options() == {"num_returns": 1}


def test_env_vars_expand_the_workers_variables(ray, monkeypatch) -> None:
    # Ray: "${VAR}" in an env_vars value is the worker's VAR (appending to PATH, say);
    # an unset one becomes "", and values may name keys set before them.
    monkeypatch.delenv("TM_TEST_UNSET", raising=False)

    @ray.remote
    def read(*names):
        import os

        return [os.environ.get(n) for n in names]

    env = {"env_vars": {"TM_TEST_PATH": "${PATH}:/opt/extra", "TM_TEST_GONE": "a${TM_TEST_UNSET}b",
                        "TM_TEST_BARE": "$TM_TEST_UNSET", "TM_TEST_CHAIN": "${TM_TEST_GONE}c"}}
    path, gone, bare, chain, home = ray.get(read.options(runtime_env=env).remote(
        "TM_TEST_PATH", "TM_TEST_GONE", "TM_TEST_BARE", "TM_TEST_CHAIN", "PATH"))
    assert path == f"{home}:/opt/extra" and "${" not in path
    assert (gone, bare, chain) == ("ab", "$TM_TEST_UNSET", "abc")
    assert ray.get(read.remote("TM_TEST_PATH")) == [None]  # undone after the task


def test_an_environment_that_cannot_be_set_up_fails_when_the_task_runs(ray) -> None:
    # Ray accepts pip/uv/conda/container at submission; a task whose environment cannot
    # be set up raises RuntimeEnvSetupError from get. taskmesh installs nothing.
    @ray.remote
    def f():
        return 1

    for env in ({"pip": ["requests"]}, {"uv": ["requests"]}, {"conda": "some-env"},
                {"container": {"image": "anyscale/ray:latest"}}):
        ref = f.options(runtime_env=env).remote()  # accepted here
        with pytest.raises(RuntimeEnvSetupError, match="Failed to set up runtime environment"):
            ray.get(ref, timeout=30)
    assert ray.get(f.options(runtime_env={"pip": []}).remote()) == 1  # nothing to install
    assert ray.get(f.remote()) == 1


def test_omp_num_threads_follows_num_cpus(ray) -> None:
    # Ray: unless set already, a task runs with OMP_NUM_THREADS = its CPUs (rounded
    # down, at least 1; unset again after it); an actor keeps its own for its life (1
    # when it holds no CPU); a runtime_env's env_vars value wins.
    inherited = os.environ.get("OMP_NUM_THREADS")  # the agents' environment wins too

    def rule(cpus: str) -> str:
        return inherited or cpus

    @ray.remote
    def omp():
        import os

        return os.environ.get("OMP_NUM_THREADS")

    @ray.remote
    class Holder:
        def __init__(self):
            import os

            self.at_init = os.environ.get("OMP_NUM_THREADS")

        def read(self):
            import os

            return self.at_init, os.environ.get("OMP_NUM_THREADS")

    got = ray.get([omp.options(num_cpus=c).remote() for c in (1, 2, 1.5, 0.5, 0)])
    assert got == [rule("1"), rule("2"), rule("1"), rule("1"), rule("1")]
    assert ray.get(omp.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "7"}}).remote()) == "7"
    assert ray.get(Holder.remote().read.remote()) == (rule("1"), rule("1"))
    assert ray.get(Holder.options(num_cpus=2).remote().read.remote()) == (rule("2"), rule("2"))


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    return most


def test_running_tasks_never_take_more_cpus_than_the_node_has(cluster_factory, tmp_path) -> None:
    # Ray: the logical resources of the tasks running on a node never exceed its total.
    # Each task records its own start and end; at most two 2-CPU tasks on 4 CPUs overlap.
    log = tmp_path / "intervals"

    with cluster_factory(num_cpus=4) as cluster:
        node_id = cluster.started[0]
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote(num_cpus=2)
            def work(i):
                import time

                node = taskmesh.get_runtime_context().get_node_id()
                start = time.time()
                time.sleep(0.2)
                with open(log, "a") as f:
                    f.write(f"{node} {start} {time.time()}\n")
                return i

            for _ in range(2):  # the second round runs on warm workers under grants
                assert sorted(taskmesh.get([work.remote(i) for i in range(6)])) == list(range(6))
        finally:
            taskmesh.shutdown()
    by_node: dict[str, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        node, start, end = line.split()
        by_node.setdefault(node, []).append((float(start), float(end)))
    assert list(by_node) == [node_id] and len(by_node[node_id]) == 12  # (the module's shared node is stopped)
    assert _most_at_once(by_node[node_id]) <= 2
