"""taskmesh.cancel: queued tasks never run, running ones are interrupted (or killed with
force), and `get` raises TaskCancelledError; finished tasks are left alone."""

from __future__ import annotations

import time

import pytest

import taskmesh
from conftest import wait_until
from taskmesh import exceptions


@taskmesh.remote
class Marks:
    """Where tasks record what happened to them (a test can't see a worker's memory)."""

    def __init__(self):
        self.marks = []

    def add(self, mark):
        self.marks.append(mark)

    def all(self):
        return list(self.marks)


def test_a_running_task_is_interrupted(ray) -> None:
    marks = Marks.remote()

    @ray.remote(max_retries=3)
    def sleeper(marks):
        marks.add.remote("started")
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            taskmesh.get(marks.add.remote("interrupted"))
            raise
        return "finished"

    ref = sleeper.remote(marks)
    wait_until(lambda: "started" in ray.get(marks.all.remote()))
    ray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: "interrupted" in ray.get(marks.all.remote()))
    assert ray.get(marks.all.remote()).count("started") == 1  # cancelled, not retried


def test_force_kills_the_worker_and_does_not_retry(ray, shared_cluster) -> None:
    marks = Marks.remote()

    @ray.remote(max_retries=3)
    def stubborn(marks):
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignores a polite cancel
        marks.add.remote("started")
        time.sleep(60)

    ref = stubborn.remote(marks)
    wait_until(lambda: "started" in ray.get(marks.all.remote()))
    ray.cancel(ref, force=True)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    time.sleep(0.5)
    assert ray.get(marks.all.remote()) == ["started"]  # no retry ran it again

    @ray.remote
    def ok():
        return 1

    assert ray.get(ok.remote(), timeout=30) == 1  # the pool replaced the killed worker


def test_queued_and_unsent_tasks_never_run(ray) -> None:
    marks = Marks.remote()

    @ray.remote
    def blocker():
        time.sleep(1.5)
        return 1

    @ray.remote
    def record(marks, tag, dep=None):
        taskmesh.get(marks.add.remote(tag))
        return tag

    busy = [blocker.remote() for _ in range(2)]  # both CPUs taken
    queued = record.remote(marks, "queued")  # sent, waits in the queue
    waiting = record.remote(marks, "waiting", busy[0])  # not sent: its argument is pending
    ray.cancel(queued)
    ray.cancel(waiting)
    for ref in (queued, waiting):
        with pytest.raises(exceptions.TaskCancelledError):
            ray.get(ref, timeout=30)
    assert ray.get(busy) == [1, 1]
    assert ray.get(record.remote(marks, "after")) == "after"
    assert "queued" not in ray.get(marks.all.remote())
    assert "waiting" not in ray.get(marks.all.remote())


def test_a_finished_task_stays_finished_and_bad_input_is_rejected(ray) -> None:
    @ray.remote
    def one():
        return 1

    ref = one.remote()
    assert ray.get(ref) == 1
    ray.cancel(ref)
    assert ray.get(ref) == 1
    with pytest.raises(TypeError, match="object refs"):
        ray.cancel("not a ref")
    with pytest.raises(TypeError, match="force"):
        ray.cancel(ref, force="yes")


def test_cancelling_a_task_cancels_the_tasks_it_submitted(ray) -> None:
    marks = Marks.remote()

    @ray.remote
    def child(marks):
        marks.add.remote("child started")
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            taskmesh.get(marks.add.remote("child interrupted"))
            raise

    @ray.remote
    def parent(marks):
        return taskmesh.get(child.remote(marks))

    ref = parent.remote(marks)
    wait_until(lambda: "child started" in ray.get(marks.all.remote()))
    ray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: "child interrupted" in ray.get(marks.all.remote()))
