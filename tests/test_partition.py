"""Completions fenced by attempt number. A node cut off from Redis looks dead: the monitor
declares it so, fences its tasks at the next attempt and retries them elsewhere. When
the node comes back it may still hold a finished result of the old attempt; that result
must not be committed (it could overwrite the retry's, or bring back an object the owner
already freed). The first test drives the completion script directly, the last cuts a
real agent off in a network namespace (needs root, as tests/test_netns.py). The other
side of it: when Redis itself was away, every heartbeat is old and no node is to blame."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest

import taskmesh
from conftest import assert_no_leaked_children, done_notices, wait_until
from netns import NamespacePair
from taskmesh.exceptions import StoreUnavailableError
from taskmesh.objects import KIND_VALUE, new_owner_tag, new_task_id, object_id
from taskmesh.objects import shm as _shm
from taskmesh.store import KIND_FENCE, Completion, Release, Store
from taskmesh.workers import launch, monitor
from taskmesh.workers import process as _process


def _completion(owner: str, task: str, value: bytes, attempt: int) -> Completion:
    return Completion(owner, b"notice " + value, (
        (object_id(task, 1), KIND_VALUE, value), ("", KIND_FENCE, f"{task} {attempt}".encode())))


def test_a_fenced_out_attempt_commits_nothing(store: Store) -> None:
    owner = new_owner_tag()
    task, other = new_task_id(owner), new_task_id(owner)
    oid = object_id(task, 1)
    store.fence_tasks([(owner, task, 1)])  # the monitor retried it: attempt 1 from now on
    # In one batch with another task, so the keys of what follows stay in step.
    store.complete_tasks([_completion(owner, task, b"old", 0), _completion(owner, other, b"x", 0)], {})
    assert not store.redis.exists(store.keys.obj(oid))
    assert store.redis.hget(store.keys.obj(object_id(other, 1)), "data") == b"x"
    store.complete_tasks([_completion(owner, task, b"new", 1)], {})
    assert store.redis.hget(store.keys.obj(oid), "data") == b"new"
    # Once the owner has freed it, the old attempt still cannot bring it back.
    store.release([Release(oid, "owner", -1)])
    store.complete_tasks([_completion(owner, task, b"old", 0)], {})
    assert not store.redis.exists(store.keys.obj(oid))
    notices = done_notices(store, owner)
    assert notices == [b"notice x", b"notice new"]
    assert 0 < store.redis.pttl(store.keys.fence(owner))


def test_after_redis_was_away_the_monitor_gives_nodes_time_to_heartbeat(tmp_path: Path) -> None:
    """Heartbeats stop reaching a restarting Redis; when it is back they are old because
    Redis was away, not because the nodes were: none is declared dead until each has had
    a node timeout to heartbeat again."""
    server = launch.start_redis(data_dir=tmp_path / "redis", persistent=True,
                                   extra_args=("--appendfsync", "always"))
    store = Store(server.url)
    try:
        watcher = monitor.Monitor(store, "watcher", node_timeout_ms=500)
        store.register_node("quiet", {"node_id": "quiet", "state": "ALIVE"})
        watcher.tick()
        assert watcher.holding
        port = server.port
        server.stop()
        with pytest.raises(StoreUnavailableError):
            watcher.tick()
        time.sleep(0.6)  # past the node timeout without a heartbeat
        server = launch.start_redis(data_dir=tmp_path / "redis", port=port, persistent=True,
                                       extra_args=("--appendfsync", "always"))
        wait_until(lambda: _ticked(watcher), 10, "Redis to answer again")
        assert store.redis.zscore(store.keys.nodes_alive(), "quiet") is not None
        # A node that stays silent past the quiet window is declared dead after all.
        wait_until(lambda: _ticked(watcher) and store.redis.zscore(store.keys.nodes_alive(), "quiet") is None,
                   10, "the silent node to be declared dead")
    finally:
        store.close()
        server.stop()


def _ticked(watcher: monitor.Monitor) -> bool:
    try:
        watcher.tick()
        return True
    except StoreUnavailableError:
        return False


# ---- a real partition ------------------------------------------------------------------

NODE_TIMEOUT_MS = 2_000
TASK_S = 4.0


@taskmesh.remote
def where(log: str, sleep_s: float) -> str:
    """The node it ran on; a retry runs longer, so that the old attempt's result, sent
    when its node is back, would arrive first were it not fenced out."""
    node = taskmesh.get_runtime_context().get_node_id()
    retry = Path(log).exists()
    with open(log, "a") as f:
        f.write(f"{node}\n")
    time.sleep(1.5 * sleep_s if retry else sleep_s)
    return node


def _start_agent(pair: NamespacePair, i: int, port: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    return launch.start_agent(
        f"redis://{pair.host_ip(i)}:{port}", num_cpus=1, log_path=log_path, fate_share=True,
        node_ip=pair.ns_ip(i), command_prefix=pair.exec_prefix(i))


def _link(pair: NamespacePair, i: int, state: str) -> None:
    subprocess.run(["ip", "link", "set", "dev", pair.host_link(i), state], check=True)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_node_cut_off_and_back_does_not_commit_its_old_attempt(
        pair: NamespacePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(monitor.ENV_NODE_TIMEOUT_MS, str(NODE_TIMEOUT_MS))
    monkeypatch.setenv("TASKMESH_ALLOW_INSECURE", "1")  # Redis on a private test link
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    server = launch.start_redis(
        data_dir=tmp_path / "redis", extra_args=("--bind", "127.0.0.1", pair.host_ip(1), pair.host_ip(2)))
    agents: list[subprocess.Popen] = []
    started: list[str] = []
    log = tmp_path / "starts.log"
    try:
        proc_a, node_a = _start_agent(pair, 1, server.port, tmp_path / "agent-a.log")
        agents.append(proc_a)
        started.append(node_a)
        taskmesh.init(address=server.url)
        try:
            ref = where.remote(str(log), TASK_S)
            wait_until(lambda: log.exists() and log.read_text().split() == [node_a], 30,
                       "the task to start on node A")
            proc_b, node_b = _start_agent(pair, 2, server.port, tmp_path / "agent-b.log")
            agents.append(proc_b)
            started.append(node_b)
            _link(pair, 1, "down")  # A keeps running its task, but cannot tell Redis
            try:
                wait_until(lambda: log.read_text().split() == [node_a, node_b], 60,
                           "the monitor to retry the task on node B")
            finally:
                _link(pair, 1, "up")
            # A's attempt finished meanwhile; back online it learns it was declared dead
            # and exits, and its result, fenced out, is not what the owner gets.
            assert proc_a.wait(timeout=60) == 0
            assert taskmesh.get(ref, timeout=60) == node_b
        finally:
            taskmesh.shutdown()
    finally:
        _process.stop_processes([p.pid for p in agents], timeout_s=10)
        server.stop()
    assert "declared dead" in (tmp_path / "agent-a.log").read_text()
    assert_no_leaked_children(before)
    leftover = [d for d in map(_shm.node_dir, started) if d.exists()]
    assert not leftover, f"shared memory left behind: {leftover}"


def test_a_kept_result_is_only_notified_and_fenced_like_any(store: Store) -> None:
    """A completion whose owner keeps its results (Completion.kept) writes no object:
    its owner gets the notice, unless the attempt was fenced out or the owner is gone."""
    owner = new_owner_tag()
    task, late = new_task_id(owner), new_task_id(owner)

    def kept(task_id: str, value: bytes, attempt: int) -> Completion:
        c = _completion(owner, task_id, value, attempt)
        return Completion(c.owner, c.notice, c.objects, kept=True)

    store.fence_tasks([(owner, late, 1)])  # the monitor retried it: attempt 0 is out
    store.complete_tasks([kept(task, b"mine", 0), kept(late, b"old", 0)], {})
    assert not store.redis.exists(store.keys.obj(object_id(task, 1)))
    assert done_notices(store, owner) == [b"notice mine"]
    store.complete_tasks([kept(late, b"new", 1)], {})
    assert done_notices(store, owner) == [b"notice mine", b"notice new"]
    store.owners_gone([owner])
    store.complete_tasks([kept(new_task_id(owner), b"after", 0)], {})
    assert done_notices(store, owner) == [b"notice mine", b"notice new"]
