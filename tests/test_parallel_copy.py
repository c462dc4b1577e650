"""Large values are copied into shared memory by several threads in chunks (numpy's copy
releases the GIL) when the machine has cores to spare; the bytes are the same."""

from __future__ import annotations

import numpy as np
import pytest

from taskmesh.objects import ref


def test_copy_threads_leave_a_core_and_need_large_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ref.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert ref.copy_threads(ref.PARALLEL_COPY_MIN_BYTES - 1) == 1
    assert ref.copy_threads(64 * 2**20) == 4  # 16 MiB chunks at least
    assert ref.copy_threads(2**30) == 8
    monkeypatch.setattr(ref.os, "sched_getaffinity", lambda pid: {0, 1})
    assert ref.copy_threads(2**30) == 1  # 2 cores: one thread, as before


def test_a_parallel_copy_writes_the_same_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ref.os, "sched_getaffinity", lambda pid: set(range(8)))
    value = {"a": np.arange(20 * 2**20, dtype=np.int64), "b": b"x" * 10}  # a 160 MiB buffer
    ser = ref.serialize_oob(value)
    assert ref.copy_threads(ser.buffers[0].nbytes) > 1
    out = bytearray(ser.size)
    ser.write_into(memoryview(out))
    monkeypatch.setattr(ref.os, "sched_getaffinity", lambda pid: {0})
    serial = bytearray(ser.size)
    ser.write_into(memoryview(serial))
    assert out == serial
    back = ref.deserialize(memoryview(out))
    assert np.array_equal(back["a"], value["a"]) and back["b"] == value["b"]
