"""The microbenchmark suite runs end to end on an embedded local cluster.

No timing thresholds: the machine running the tests decides the numbers; this only checks
that every workload runs, reports a usable number, and leaves nothing running.
"""

from __future__ import annotations

import math
import time

import psutil
import pytest

import taskmesh
from taskmesh.tools import microbenchmark

ACTOR_ROWS = (
    "1:1 actor calls sync",
    "1:1 actor calls async",
    "1:1 actor calls concurrent",
    "1:n actor calls async",
    "n:n actor calls async",
    "1:1 async-actor calls sync",
    "1:1 async-actor calls async",
)
QUICK_OBJECT_ROWS = ("memcpy 100 MB", "single client put 100 MB", "single client get 100 MB")
LARGE_OBJECT_ROWS = ("memcpy 1 GB", "single client put 1 GB", "single client get 1 GB")
CROSS_NODE_ROW = "cross-node get 100 MB"


@pytest.mark.slow
@pytest.mark.cluster
def test_run_all_quick_reports_every_row() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        rows = microbenchmark.run_all("taskmesh", quick=True)
    finally:
        taskmesh.shutdown()  # a no-op when run_all shut down, as it should

    assert not taskmesh.is_initialized()
    assert [r["name"] for r in rows] == list(microbenchmark.row_names("taskmesh", quick=True))
    assert set(ACTOR_ROWS) <= set(microbenchmark.ROW_NAMES)
    units = {r["name"]: r["unit"] for r in rows}
    assert {units[name] for name in (*QUICK_OBJECT_ROWS, CROSS_NODE_ROW)} == {"GB/s"}
    for row in rows:
        assert isinstance(row["value"], float) and math.isfinite(row["value"]), row
        assert row["value"] > 0, row
        assert row["unit"], row

    deadline = time.monotonic() + 10
    while (leaked := _new_children(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, leaked


def test_actor_rows_are_named_like_rays() -> None:
    """The rows `ray microbenchmark` prints for actors, spelled exactly as Ray does, so
    that the two outputs can be matched row by row."""
    assert list(microbenchmark.TIMED_ROWS[-len(ACTOR_ROWS):]) == list(ACTOR_ROWS)
    assert microbenchmark.ROW_NAMES[0] == microbenchmark.IDLE_RSS
    assert len(set(microbenchmark.ROW_NAMES)) == len(microbenchmark.ROW_NAMES)


def test_object_rows_exist_for_both_libraries() -> None:
    """Both libraries run every object row in a full run; a quick run skips only the 1 GB
    rows (their setup alone takes seconds), and only taskmesh has the cross-node row."""
    object_rows = (*QUICK_OBJECT_ROWS, *LARGE_OBJECT_ROWS)
    assert list(microbenchmark.OBJECT_ROWS) == list(object_rows)
    assert microbenchmark.ROW_NAMES[-1] == CROSS_NODE_ROW
    assert microbenchmark.row_names("taskmesh") == microbenchmark.ROW_NAMES
    assert microbenchmark.row_names("ray") == microbenchmark.ROW_NAMES[:-1]
    quick = microbenchmark.row_names("taskmesh", quick=True)
    assert set(microbenchmark.ROW_NAMES) - set(quick) == set(LARGE_OBJECT_ROWS)
    assert microbenchmark.FULL.full_only and not microbenchmark.QUICK.full_only
    assert set(object_rows) <= set(microbenchmark._WORKLOADS)


def test_many_core_mode_runs_the_rows_that_scale_with_cores() -> None:
    """`--cpus 16`: tasks sync and async, multi-client tasks, n:n actor calls, a 1 GB
    put beside a 1 GB memcpy and the idle RSS; no cross-node row; 8 clients."""
    rows = microbenchmark.row_names("taskmesh", cpus=16)
    assert rows == microbenchmark.row_names("ray", cpus=16)
    assert set(rows) == set(microbenchmark.MANY_CORE_ROWS)
    assert CROSS_NODE_ROW not in rows
    assert microbenchmark.make_kit(taskmesh, 10, cpus=16).clients == 8
    assert microbenchmark.make_kit(taskmesh, 10).clients == 2


def _new_children(before: set[int]) -> list[tuple[int, list[str]]]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                out.append((p.pid, p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return out
