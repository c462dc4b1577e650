"""The running slot a worker shares with its agent: what the worker wrote last is what
the agent reads after the worker is gone."""

from __future__ import annotations

import os

import pytest

from taskmesh.workers.process import RunningSlot


def test_the_agent_reads_what_a_dead_worker_was_running() -> None:
    made = RunningSlot.create()
    if made is None:
        pytest.skip("no memfd_create on this system: workers lease one entry at a time")
    slot, fd = made
    try:
        assert slot.get() is None
        pid = os.fork()
        if pid == 0:  # the worker: its own mapping of the same memory
            mine = RunningSlot(fd)
            mine.set(b"1733456000000-0")
            mine.clear()
            mine.set(b"1733456000123-17")
            os._exit(0)
        os.waitpid(pid, 0)
        assert slot.get() == b"1733456000123-17"
        slot.clear()
        assert slot.get() is None
    finally:
        os.close(fd)
        slot.close()
