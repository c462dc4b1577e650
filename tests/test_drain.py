"""Graceful drain of a node agent (SIGTERM, as `taskmesh stop` sends): it leases nothing
more, lets its running tasks finish (up to its grace period, then hands them back to
their queues without counting a retry), hands back what it leased but had not started,
and its actors finish the calls they have read and restart elsewhere without using up a
restart (as Ray's for preempted nodes). Real agents, real tasks: nothing may be lost and
no attempt may be counted as a failure (every task here has max_retries=0)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import taskmesh
from conftest import TestCluster, wait_until
from taskmesh.store import Store
from taskmesh.workers import ENV_GRACE_PERIOD_S


@taskmesh.remote(max_retries=0)
def slow_square(log: str, i: int, sleep_s: float) -> tuple[int, str]:
    with open(log, "a") as f:
        f.write(f"{i}\n")
    time.sleep(sleep_s)
    return i * i, taskmesh.get_runtime_context().get_node_id()


@taskmesh.remote(max_restarts=1)
class Scaler:
    def __init__(self, factor: int):
        self.factor = factor

    def apply(self, x: int, sleep_s: float = 0.0, mark: str = "") -> tuple[int, str]:
        if mark:
            Path(mark).touch()
        time.sleep(sleep_s)
        return self.factor * x, taskmesh.get_runtime_context().get_node_id()


@taskmesh.remote(max_restarts=1)
class AsyncScaler:
    """The same, as an async actor (its calls overlap; a drain waits for those started)."""

    def __init__(self, factor: int):
        self.factor = factor

    async def apply(self, x: int, sleep_s: float = 0.0, mark: str = "") -> tuple[int, str]:
        import asyncio

        if mark:
            Path(mark).touch()
        await asyncio.sleep(sleep_s)
        return self.factor * x, taskmesh.get_runtime_context().get_node_id()


def _starts(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _drain(cluster: TestCluster, node_id: str) -> None:
    """SIGTERM the node's agent and wait for it to finish draining and exit cleanly."""
    proc = cluster.agents.pop(node_id)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_drain_finishes_running_tasks_and_hands_back_the_rest(cluster_factory, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_GRACE_PERIOD_S, "30")
    log = tmp_path / "starts.log"
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        draining = cluster.started[0]
        taskmesh.init(address=cluster.url)
        try:
            refs = [slow_square.remote(str(log), i, 1.0) for i in range(6)]
            wait_until(lambda: len(_starts(log)) >= 2, 30, "two tasks running on the first node")
            cluster.add_node(num_cpus=2)
            running = set(_starts(log))
            _drain(cluster, draining)
            results = taskmesh.get(refs, timeout=60)
        finally:
            taskmesh.shutdown()
    assert [r[0] for r in results] == [i * i for i in range(6)]
    # The tasks running when the drain began finished where they ran; every task ran
    # exactly once (none was retried, none handed back while running).
    assert all(results[int(i)][1] == draining for i in running)
    assert _starts(log) == Counter(str(i) for i in range(6))


def test_tasks_still_running_after_the_grace_period_are_handed_back(
        cluster_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_GRACE_PERIOD_S, "0.5")
    log = tmp_path / "starts.log"
    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        draining = cluster.started[0]
        taskmesh.init(address=cluster.url)
        try:
            refs = [slow_square.remote(str(log), i, 3.0) for i in range(2)]
            wait_until(lambda: len(_starts(log)) == 2, 30, "both tasks running on the first node")
            other = cluster.add_node(num_cpus=2)
            _drain(cluster, draining)
            results = taskmesh.get(refs, timeout=60)
        finally:
            taskmesh.shutdown()
    # max_retries=0, yet no WorkerCrashedError: a hand-back is not a failed attempt.
    assert results == [(0, other), (1, other)]
    assert _starts(log) == Counter({"0": 2, "1": 2})


@pytest.mark.parametrize("actor_class", [Scaler, AsyncScaler], ids=["sync", "async"])
def test_drained_actor_finishes_its_call_and_restarts_elsewhere_without_using_a_restart(
        cluster_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, actor_class) -> None:
    monkeypatch.setenv(ENV_GRACE_PERIOD_S, "30")
    mark = tmp_path / "call-started"
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        store = Store(cluster.url)
        try:
            scaler = actor_class.remote(3)
            assert taskmesh.get(scaler.apply.remote(1), timeout=30) == (3, cluster.started[0])
            for drains in (1, 2):  # max_restarts=1: only uncounted restarts allow a second
                here = cluster.started[-1]
                cluster.add_node(num_cpus=1)
                in_flight = scaler.apply.remote(drains, 1.0, str(mark))
                wait_until(mark.exists, 30, "the call to start")
                mark.unlink()
                _drain(cluster, here)
                assert taskmesh.get(in_flight, timeout=30) == (3 * drains, here)
                after = taskmesh.get(scaler.apply.remote(10), timeout=60)
                assert after == (30, cluster.started[-1])
                info = store.actor_info(scaler._actor_id)
                assert (info["state"], info["restarts"], info["restarts_drained"]) == (
                    "ALIVE", str(drains), str(drains))
        finally:
            store.close()
            taskmesh.shutdown()


def test_a_bad_grace_period_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from taskmesh.cli import main as cli
    from taskmesh.workers import NodeAgent, grace_period_from_env

    for command in (["worker", "--address", "127.0.0.1:1"], ["stop"]):
        result = CliRunner().invoke(cli, [*command, "--grace-period-s", "-1"])
        assert result.exit_code != 0 and "--grace-period-s" in result.output
    with pytest.raises(ValueError, match="grace_period_s"):
        NodeAgent("redis://127.0.0.1:1", resources={"CPU": 1}, node_ip="127.0.0.1", grace_period_s=-1)
    monkeypatch.setenv(ENV_GRACE_PERIOD_S, "soon")
    with pytest.raises(ValueError, match=ENV_GRACE_PERIOD_S):
        grace_period_from_env()
