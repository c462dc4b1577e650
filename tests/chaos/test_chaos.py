"""A short seeded chaos run in the suite: kill -9 of workers and node agents (not of
Redis: restarting it from its append-only file is left to `python -m taskmesh.tools.chaos`)
while tasks, actors and shared-memory objects are in use; every result must be right,
no `get` may hang, and nothing may be left in Redis once the driver has shut down."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskmesh.tools import chaos

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_seeded_chaos_run_loses_nothing(tmp_path: Path) -> None:
    report = chaos.run(25, 1, kill_redis=False, work_dir=tmp_path)
    assert report.ok, report.summary()
    assert report.kills["worker"] > 0 and report.kills["agent"] > 0, report.summary()
    assert report.rounds > 0 and report.tasks_checked > 0 and report.actor_calls_checked > 0
    assert report.executions >= report.tasks_checked  # a task checked ran at least once
