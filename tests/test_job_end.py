"""A driver's end ends its work, as in Ray: whichever way the driver goes (shutdown at
exit, SIGTERM, kill -9), its job's queued tasks are dropped, its running ones killed,
results that still come are not stored, and a node that joins later never runs a task
of the finished job. Work of a detached actor outlives the job, as the actor does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_until
from taskmesh._base.ids import new_owner_tag, new_task_id, object_id
from taskmesh._base.wire import ActorSpec, QueueEntry, TaskSpec
from taskmesh._core.lifecycle import EndedJobs, dropped_with_job
from taskmesh.store import Completion, Store
from taskmesh.workers import monitor

MB = 1 << 20

# Submits 20 tasks of 2 s (each returns 8 MB, stored in shared memory) on a 1-CPU
# cluster, prints its owner tag and job id, then exits at once or waits to be killed.
_DRIVER = """
import sys, time
import taskmesh

@taskmesh.remote
def work(i, log):
    with open(log, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(2)
    import numpy as np
    return np.ones(MB // 8)

MB = 1 << 20
taskmesh.init(address=sys.argv[1])
refs = [work.remote(i, sys.argv[2]) for i in range(20)]
runtime = taskmesh.api.get_runtime()
runtime._flush_once(everything=True)
print(runtime.owner, runtime.job_id, flush=True)
if sys.argv[3] == "wait":
    time.sleep(600)
"""

_DISK_DRIVER = """
import sys, time
import taskmesh

@taskmesh.remote(resources={"disk": 1})
def on_disk_node(log):
    with open(log, "a") as f:
        f.write("ran\\n")

taskmesh.init(address=sys.argv[1])
ref = on_disk_node.remote(sys.argv[2])
runtime = taskmesh.api.get_runtime()
runtime._flush_once(everything=True)
print(runtime.owner, runtime.job_id, flush=True)
time.sleep(600)
"""

_STREAMING_DRIVER = """
import sys, time
import taskmesh

@taskmesh.remote(num_returns="streaming")
def items():
    for i in range(200):
        time.sleep(0.01)
        yield b"x" * 1000

taskmesh.init(address=sys.argv[1])
gen = items.remote()
taskmesh.get(next(gen))
time.sleep(0.3)  # items arrive meanwhile, some not read by the driver
runtime = taskmesh.api.get_runtime()
print(runtime.owner, runtime.job_id, flush=True)
"""

_DETACHED_DRIVER = """
import sys, time
import taskmesh

@taskmesh.remote
def slow(log):
    time.sleep(1.5)
    with open(log, "a") as f:
        f.write("ran\\n")

@taskmesh.remote
class Launcher:
    def go(self, log):
        self.ref = slow.remote(log)  # its owner is the actor, which outlives the job
        return True

taskmesh.init(address=sys.argv[1])
launcher = Launcher.options(name="launcher", namespace="jobend", lifetime="detached").remote()
taskmesh.get(launcher.go.remote(sys.argv[2]))
print("launched", flush=True)
"""


def _owner_keys(store: Store, owner: str) -> list[str]:
    """Keys the driver `owner` left, but the fence hash marking it gone (1 day TTL)."""
    return sorted(k.decode() for k in store.redis.scan_iter(match=f"{store.keys.prefix}:{{{owner}}}:*")
                  if not k.decode().endswith(":fence"))


def _object_keys(store: Store) -> int:
    return sum(1 for _ in store.redis.scan_iter(match=f"{store.keys.prefix}:*:obj:*"))


def _queue_idle(store: Store, shape: str) -> bool:
    key = store.keys.queue(shape)
    return store.redis.xlen(key) == 0 and store.redis.xpending(key, "agents")["pending"] == 0


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _store_used(store: Store, node_id: str) -> int:
    return int(store.redis.hget(store.keys.node(node_id), "store_used") or 0)


@pytest.mark.parametrize("how", ["exit", "sigterm", "sigkill"])
def test_a_drivers_end_drops_and_kills_its_tasks(cluster_factory, monkeypatch, tmp_path, how) -> None:
    """20 tasks of 2 s on one CPU: once the driver is gone (it exits at once, or is
    killed: the monitor ends its job when its heartbeat is older than the driver
    timeout), nothing of its job is queued or running, few ran, and neither its objects
    nor their shared memory are left."""
    # SIGTERM: the driver ends its job itself (the monitor would wait 10 minutes).
    monkeypatch.setenv(monitor.ENV_DRIVER_TIMEOUT_MS, "600000" if how == "sigterm" else "2000")
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        node_id = cluster.started[0]
        store = Store(cluster.url)
        objects_before = _object_keys(store)
        script, log = tmp_path / "driver.py", tmp_path / "ran.log"
        script.write_text(_DRIVER)
        driver = subprocess.Popen(
            [sys.executable, str(script), cluster.url, str(log), "exit" if how == "exit" else "wait"],
            stdout=subprocess.PIPE, text=True)
        try:
            owner, job_id = driver.stdout.readline().split()
            if how != "exit":
                wait_until(lambda: _lines(log) >= 1, timeout_s=30, what="the first task to start")
                driver.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            gone_at = time.monotonic()
            code = driver.wait(timeout=30)
            if how == "sigterm":  # ended its job, then died of the signal as it would have
                assert code == -signal.SIGTERM
        finally:
            driver.kill()
            driver.wait()
        wait_until(lambda: store.redis.zscore(store.keys.jobs_ended(), job_id) is not None,
                   timeout_s=30, what="the job's end")
        ended_in = time.monotonic() - gone_at  # the monitor's part: the driver timeout and more
        wait_until(lambda: _queue_idle(store, "CPU=1"), timeout_s=20, what="no task queued or running")
        ran = _lines(log)
        time.sleep(2.5)  # longer than a task: none started meanwhile, none runs now
        assert _lines(log) == ran
        # One CPU, 2 s a task: what ran is what started until the end was seen, no more.
        assert ran <= 2 + ended_in / 2 and ran < 10, f"{ran} of 20 tasks started ({ended_in:.1f} s)"
        assert wait_until(lambda: not _owner_keys(store, owner), timeout_s=20, what="the owner's keys")
        assert _object_keys(store) == objects_before
        # A result stored before the end was freed with its owner's holds; one that
        # came after was never stored, and its copy is swept (SWEEP_EVERY_S).
        wait_until(lambda: _store_used(store, node_id) == 0, timeout_s=40, what="shared memory freed")


def test_a_finished_jobs_task_never_runs_on_a_node_that_joins_later(
        cluster_factory, monkeypatch, tmp_path) -> None:
    """A task needing `disk` waits for a node that has it; its driver is killed
    (SIGTERM) and its job ends. A disk node that joins afterwards drops the task."""
    monkeypatch.setenv(monitor.ENV_DRIVER_TIMEOUT_MS, "2000")
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        store = Store(cluster.url)
        script, log = tmp_path / "driver.py", tmp_path / "ran.log"
        script.write_text(_DISK_DRIVER)
        driver = subprocess.Popen([sys.executable, str(script), cluster.url, str(log)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            owner, job_id = driver.stdout.readline().split()
            driver.terminate()
            driver.wait(timeout=30)
        finally:
            driver.kill()
            driver.wait()
        wait_until(lambda: store.redis.zscore(store.keys.jobs_ended(), job_id) is not None,
                   timeout_s=30, what="the job's end")
        shape = next(s for s in store.shapes() if "disk" in s)
        assert store.redis.xlen(store.keys.queue(shape)) == 1  # no node could take it yet
        cluster.add_node(num_cpus=1, resources={"disk": 1})
        wait_until(lambda: _queue_idle(store, shape), timeout_s=20, what="the entry dropped")
        time.sleep(1)
        assert not log.exists()
        assert not _owner_keys(store, owner)


def test_a_streaming_calls_items_go_with_its_driver(cluster_factory, tmp_path) -> None:
    """A driver exits in the middle of a streaming generator call: the call is killed,
    and none of its items, taken or not, is left in Redis."""
    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        store = Store(cluster.url)
        script = tmp_path / "driver.py"
        script.write_text(_STREAMING_DRIVER)
        out = subprocess.run([sys.executable, str(script), cluster.url], capture_output=True,
                             text=True, timeout=60)
        owner, job_id = out.stdout.split()
        assert store.redis.zscore(store.keys.jobs_ended(), job_id) is not None
        wait_until(lambda: _queue_idle(store, "CPU=1"), timeout_s=20, what="the call ended")
        time.sleep(0.5)
        assert not _owner_keys(store, owner)
        store.close()


def test_a_detached_actors_tasks_outlive_the_job(cluster_factory, tmp_path) -> None:
    """A task submitted by a detached actor runs to its end although the job that
    created the actor ended meanwhile."""
    import taskmesh

    with cluster_factory(nodes=1, num_cpus=2) as cluster:
        script, log = tmp_path / "driver.py", tmp_path / "ran.log"
        script.write_text(_DETACHED_DRIVER)
        out = subprocess.run([sys.executable, str(script), cluster.url, str(log)],
                             capture_output=True, text=True, timeout=60)
        assert "launched" in out.stdout, out.stderr
        wait_until(lambda: _lines(log) == 1, timeout_s=20, what="the detached actor's task")
        taskmesh.init(address=cluster.url)
        try:
            taskmesh.kill(taskmesh.get_actor("launcher", namespace="jobend"))
        finally:
            taskmesh.shutdown()


def test_a_task_run_before_its_jobs_end_keeps_its_worker_and_its_events(cluster_factory) -> None:
    """The first task of a lease grant is stored by its worker, so its caller can have
    the result, and end its job, before the agent hears that the task ended. Here the
    task holds its worker's `Done` back until the worker has heard of the job's end, so
    the agent sees the end with the task still sent to that worker: the worker, which
    ran it, is not killed for it (the running slot says it ran), and the task's
    FINISHED event is recorded."""
    import taskmesh
    from taskmesh.util.state import list_tasks

    with cluster_factory(nodes=1, num_cpus=1) as cluster:
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote
            def hold_done_until_the_job_ends() -> int:
                worker_class = sys.modules["__main__"].Worker  # worker_main runs as __main__
                send = worker_class._send
                job_id = taskmesh.get_runtime_context().get_job_id()

                def held(self, msg):
                    if type(msg).__name__ == "Done" and msg.stored:
                        worker_class._send = send
                        deadline = time.monotonic() + 30
                        while job_id not in self._ended_jobs and time.monotonic() < deadline:
                            time.sleep(0.01)
                    send(self, msg)

                worker_class._send = held
                return os.getpid()

            pid = taskmesh.get(hold_done_until_the_job_ends.remote(), timeout=30)
            job_id = taskmesh.get_runtime_context().get_job_id()
        finally:
            taskmesh.shutdown()  # ends the job
        rows = wait_until(lambda: list_tasks(cluster.url, filters=[("job_id", "=", job_id),
                                                                  ("state", "=", "FINISHED")]),
                          timeout_s=20, what="the task's FINISHED row")
        assert rows[0]["worker_pid"] == pid
        # The node's one worker lives on: the next job's task runs in it.
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote
            def where() -> int:
                return os.getpid()

            assert taskmesh.get(where.remote(), timeout=30) == pid
        finally:
            taskmesh.shutdown()


# ---- without processes ---------------------------------------------------------------------


def _entry(job: str | None, *, detached: bool = False, rebuild: bool = False) -> QueueEntry:
    owner = new_owner_tag()
    spec = TaskSpec("f" * 16, b"", 1, owner, job, detached=detached)
    return QueueEntry(new_task_id(owner), "f", 0, spec, rebuild=rebuild)


def test_which_entries_an_ended_job_drops() -> None:
    ended = {"00000001"}
    assert dropped_with_job(_entry("00000001"), ended)
    assert not dropped_with_job(_entry("00000002"), ended)
    assert not dropped_with_job(_entry(None), ended)
    assert not dropped_with_job(_entry("00000001", detached=True), ended)  # a detached actor's work
    assert not dropped_with_job(_entry("00000001", rebuild=True), ended)  # others may hold the objects
    actor = ActorSpec("f" * 16, b"", new_owner_tag(), "00000001", "A")
    assert not dropped_with_job(QueueEntry("a" * 24, "A.__init__", 0, actor, kind="actor"), ended)


def test_the_detached_flag_travels_in_task_and_actor_specs() -> None:
    spec = TaskSpec("f" * 16, b"", 1, new_owner_tag(), "00000001", detached=True)
    assert TaskSpec.from_wire(spec.to_wire(), b"").detached
    attached = TaskSpec("f" * 16, b"", 1, new_owner_tag(), "00000001")
    assert not TaskSpec.from_wire(attached.to_wire(), b"").detached
    actor = ActorSpec("f" * 16, b"", new_owner_tag(), "00000001", "A", detached=True)
    assert ActorSpec.from_wire(actor.to_wire()).detached


def test_nothing_is_stored_for_an_owner_that_is_gone(store: Store) -> None:
    """complete.lua stores no object and no notice once the owner is marked gone."""
    owner = new_owner_tag()
    task = new_task_id(owner)
    oid = object_id(task, 1)
    notice = b"\x92\xa1t\x90"
    store.owners_gone([owner])
    store.complete_tasks([Completion(owner, notice, ((oid, b"value", b"x"),))], {})
    assert not store.redis.exists(store.keys.obj(oid))
    assert not store.redis.exists(store.keys.done(owner))
    other = new_owner_tag()
    oid2 = object_id(new_task_id(other), 1)
    store.complete_tasks([Completion(other, notice, ((oid2, b"value", b"x"),))], {})
    assert store.redis.exists(store.keys.obj(oid2))


def test_ended_jobs_are_recorded_once_and_read_since_a_time(store: Store) -> None:
    store.end_job("00000001")
    first = store.redis.hget(store.keys.job("00000001"), "end_ms")
    time.sleep(0.01)
    store.end_job("00000001")
    assert store.redis.hget(store.keys.job("00000001"), "end_ms") == first
    store.end_job("00000002")
    ended = store.ended_jobs()
    assert [j for j, _ in ended] == ["00000001", "00000002"]
    assert [j for j, _ in store.ended_jobs(ended[1][1])] == ["00000002"]


def test_a_remembered_end_is_forgotten_once_redis_lost_it(store: Store) -> None:
    """Job numbers start again when Redis loses its data: an agent's memory of job 1's
    end must not drop the tasks of the new job 1 (a hit is confirmed in Redis)."""
    ended = EndedJobs(store)
    store.end_job("00000001")
    ended["00000001"] = None
    assert dropped_with_job(_entry("00000001"), ended)
    store.redis.flushall()  # a restart without persistence, say; the counter starts again
    assert not dropped_with_job(_entry("00000001"), ended)
    assert list(ended) == []  # forgotten, not asked again
