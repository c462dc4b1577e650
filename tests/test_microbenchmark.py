"""The microbenchmark suite runs end to end on an embedded local cluster.

No timing thresholds: the machine running the tests decides the numbers; this only checks
that every workload runs, reports a usable number, and leaves nothing running.
"""

from __future__ import annotations

import math
import time

import psutil

import taskmesh
from taskmesh import microbenchmark


def test_run_all_quick_reports_every_row() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        rows = microbenchmark.run_all("taskmesh", quick=True)
    finally:
        taskmesh.shutdown()  # a no-op when run_all shut down, as it should

    assert not taskmesh.is_initialized()
    assert [r["name"] for r in rows] == list(microbenchmark.ROW_NAMES)
    for row in rows:
        assert isinstance(row["value"], float) and math.isfinite(row["value"]), row
        assert row["value"] > 0, row
        assert row["unit"], row

    deadline = time.monotonic() + 10
    while (leaked := _new_children(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, leaked


def _new_children(before: set[int]) -> list[tuple[int, list[str]]]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                out.append((p.pid, p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return out
