"""Task events: what `list_tasks`, `summarize_tasks` and `timeline()` report, written the
way Ray's state-API documentation uses them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import wait_until
from taskmesh.util.state import list_tasks, summarize_tasks


def _states(name: str) -> list[str]:
    return sorted(t.state for t in list_tasks(filters=[("name", "=", name)], limit=10_000))


def test_finished_tasks_have_state_node_pid_and_timings(ray) -> None:
    @ray.remote
    def add(x: int) -> int:
        return x + 1

    assert ray.get([add.remote(i) for i in range(5)]) == list(range(1, 6))
    # The submitter sends its events with a later flush: wait for both ends of each task.
    wait_until(lambda: _states("add") == ["FINISHED"] * 5 and all(
        t.creation_time_ms for t in list_tasks(filters=[("name", "=", "add")])), what="5 FINISHED events")
    nodes = {n["NodeID"] for n in ray.nodes()}
    for task in list_tasks(filters=[("name", "=", "add")]):
        assert task.node_id in nodes
        assert task["worker_pid"] > 0
        assert task.job_id == ray.get_runtime_context().get_job_id()
        assert task.creation_time_ms <= task.start_time_ms <= task.end_time_ms
        assert task.attempt_number == 0 and task.type == "NORMAL_TASK"


def test_running_and_failed_states(ray) -> None:
    @ray.remote
    def slow() -> None:
        time.sleep(1.5)

    @ray.remote(max_retries=0)
    def boom() -> None:
        raise ValueError("no")

    ref = slow.remote()
    wait_until(lambda: _states("slow") == ["RUNNING"], what="a RUNNING event")
    assert [t.name for t in list_tasks(filters=[("state", "=", "running")])] == ["slow"]
    with pytest.raises(ValueError):
        ray.get(boom.remote())
    ray.get(ref)
    wait_until(lambda: _states("boom") == ["FAILED"], what="a FAILED event")
    failed = list_tasks(filters=[("name", "=", "boom")])[0]
    assert failed.error_type == "TASK_EXECUTION_EXCEPTION"
    wait_until(lambda: _states("slow") == ["FINISHED"], what="slow FINISHED")


def test_retried_task_has_one_row_per_attempt(ray, tmp_path: Path) -> None:
    marker = tmp_path / "tried"

    @ray.remote(max_retries=2, retry_exceptions=True)
    def flaky() -> str:
        if not marker.exists():
            marker.write_text("x")
            raise RuntimeError("first attempt fails")
        return "ok"

    assert ray.get(flaky.remote()) == "ok"
    rows = wait_until(
        lambda: [(t.attempt_number, t.state) for t in list_tasks(filters=[("name", "=", "flaky")])]
        if _states("flaky") == ["FAILED", "FINISHED"] else None, what="two attempts")
    assert sorted(rows) == [(0, "FAILED"), (1, "FINISHED")]


def test_enable_task_events_false_records_nothing(ray) -> None:
    @ray.remote(enable_task_events=False)
    def quiet() -> int:
        return 1

    @ray.remote
    def loud() -> int:
        return 2

    assert ray.get([quiet.remote(), quiet.options(name="quiet2").remote(), loud.remote()]) == [1, 1, 2]
    wait_until(lambda: _states("loud") == ["FINISHED"], what="loud FINISHED")
    assert _states("quiet") == [] and _states("quiet2") == []


def test_summarize_tasks_counts_by_name_and_state(ray) -> None:
    @ray.remote
    def square(x: int) -> int:
        return x * x

    ray.get([square.remote(i) for i in range(3)])
    wait_until(lambda: _states("square") == ["FINISHED"] * 3, what="square FINISHED")
    summary = summarize_tasks()["cluster"]
    assert summary["summary"]["square"]["state_counts"] == {"FINISHED": 3}
    assert summary["summary"]["square"]["type"] == "NORMAL_TASK"
    assert summary["total_tasks"] >= 3


def test_timeline_writes_chrome_trace(ray, tmp_path: Path) -> None:
    @ray.remote
    def work(x: int) -> int:
        time.sleep(0.05)
        return x

    ray.get([work.remote(i) for i in range(4)])
    wait_until(lambda: _states("work") == ["FINISHED"] * 4, what="work FINISHED")
    path = tmp_path / "timeline.json"
    assert ray.timeline(filename=str(path)) is None
    trace = [e for e in json.loads(path.read_text()) if e["name"] == "work"]
    assert len(trace) == 4
    for e in trace:
        assert {"cat", "name", "pid", "tid", "ts", "dur", "ph", "args"} <= e.keys()
        assert e["ph"] == "X" and e["dur"] >= 50_000  # µs: the task slept 50 ms
        assert e["tid"].startswith("worker ")
    assert ray.timeline() == json.loads(path.read_text())


def test_actor_creation_and_method_calls_are_recorded(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> int:
            self.n += 1
            return self.n

        def fail(self) -> None:
            raise ValueError("no")

    counter = Counter.remote()
    assert ray.get([counter.incr.remote() for _ in range(3)]) == [1, 2, 3]
    with pytest.raises(ValueError):
        ray.get(counter.fail.remote())

    def rows() -> list[tuple[str, str, str]]:
        found = list_tasks(filters=[("actor_id", "=", counter._actor_id)])
        return sorted((t.name, t.type, t.state) for t in found)

    wait_until(lambda: len(rows()) == 5 and all(s in ("FINISHED", "FAILED") for *_, s in rows()),
               what="the actor's 5 tasks ended")
    assert rows() == [("Counter.__init__", "ACTOR_CREATION_TASK", "FINISHED"),
                      ("Counter.fail", "ACTOR_TASK", "FAILED")] + [
                      ("Counter.incr", "ACTOR_TASK", "FINISHED")] * 3
    pids = {t.worker_pid for t in list_tasks(filters=[("actor_id", "=", counter._actor_id)])}
    assert len(pids) == 1  # the actor's own process


def test_actor_with_task_events_disabled_records_nothing(ray) -> None:
    @ray.remote(enable_task_events=False)
    class Quiet:
        def ping(self) -> str:
            return "pong"

    @ray.remote
    def marker() -> None:
        pass

    quiet = Quiet.remote()
    assert ray.get(quiet.ping.remote()) == "pong"
    ray.get(marker.remote())  # its events are flushed after the actor's would have been
    wait_until(lambda: _states("marker") == ["FINISHED"], what="marker FINISHED")
    assert list_tasks(filters=[("actor_id", "=", quiet._actor_id)]) == []


def test_attempt_whose_worker_died_is_failed_and_retried(ray, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"

    @ray.remote(max_retries=1)
    def crash_once() -> str:
        import os

        if not marker.exists():
            marker.write_text("x")
            os._exit(1)  # the worker dies: the agent retries the task
        return "second attempt"

    assert ray.get(crash_once.remote()) == "second attempt"
    rows = wait_until(
        lambda: r if len(r := [(t.attempt_number, t.state) for t in
                               list_tasks(filters=[("name", "=", "crash_once")])]) == 2
        and ("FINISHED" in {s for _, s in r}) else None, what="both attempts")
    assert sorted(rows) == [(0, "FAILED"), (1, "FINISHED")]
