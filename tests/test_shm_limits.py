"""Shared memory that fits its container: the store is sized from the cgroup's memory
limit and what the shared-memory root can hold, and an object that does not fit there
fails with ObjectStoreFullError naming the cause (or spills), never with SIGBUS, and
leaves no partial file behind.

A tmpfs of 8 MiB mounted for the test stands in for a container's small /dev/shm
(mounting needs root; without it those tests skip and say so)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import taskmesh
from conftest import wait_until
from taskmesh import exceptions
from taskmesh._base import config
from taskmesh.cli import main
from taskmesh.objects import capacity as _capacity
from taskmesh.objects import shm as _shm

MB = 1024 * 1024
TMPFS_BYTES = 8 * MB


@pytest.fixture
def small_shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An 8 MiB tmpfs as this test's (and its agents') shared-memory root."""
    root = tmp_path / "shm"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=1777",
                              "tmpfs", str(root)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    monkeypatch.setenv(config.SHM_ROOT.name, str(root))
    try:
        yield root
    finally:
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=False)


def _partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(f"*{_shm.PARTIAL}")]


# ---- sizing (pure: fake cgroup files, a fake statvfs) ----------------------------------

def _fake_statvfs(free: int) -> object:
    def statvfs(path: Path) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, 1 << 30, free // 4096, free // 4096, 0, 0, 0, 0, 255))
    return statvfs


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_smallest_along_the_process_path(tmp_path: Path) -> None:
    assert _capacity.cgroup_memory_limit(tmp_path) is None  # nothing to read: no limit
    _write(tmp_path, "proc/self/cgroup", "0::/pod/app\n")
    _write(tmp_path, "sys/fs/cgroup/pod/app/memory.max", "max\n")
    assert _capacity.cgroup_memory_limit(tmp_path) is None
    _write(tmp_path, "sys/fs/cgroup/pod/memory.max", f"{2 * 1024 * MB}\n")
    assert _capacity.cgroup_memory_limit(tmp_path) == 2 * 1024 * MB
    _write(tmp_path, "sys/fs/cgroup/pod/app/memory.max", f"{512 * MB}\n")
    assert _capacity.cgroup_memory_limit(tmp_path) == 512 * MB


def test_cgroup_v1_limit_and_its_unlimited_value(tmp_path: Path) -> None:
    _write(tmp_path, "proc/self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
    _write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")
    assert _capacity.cgroup_memory_limit(tmp_path) is None
    _write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", f"{MB * 300}\n")
    assert _capacity.cgroup_memory_limit(tmp_path) == 300 * MB


def test_default_capacity_is_the_least_of_cgroup_ram_and_shm_space(tmp_path: Path) -> None:
    ram = 64 * 1024 * MB
    _write(tmp_path, "sys/fs/cgroup/memory.max", f"{1024 * MB}\n")  # in a container's namespace
    roomy = _capacity.default_capacity(Path("/dev/shm"), total_memory=ram, cgroup_root=tmp_path,
                                       statvfs=_fake_statvfs(10 * 1024 * MB))
    assert roomy.bytes == int(1024 * MB * 0.3), "30 % of the cgroup limit, not of the host's RAM"
    assert "cgroup memory limit" in roomy.note
    small = _capacity.default_capacity(Path("/dev/shm"), total_memory=ram, cgroup_root=tmp_path,
                                       statvfs=_fake_statvfs(64 * MB))
    assert small.bytes == 64 * MB and "/dev/shm" in small.note, "Docker's default 64 MiB /dev/shm"
    host = _capacity.default_capacity(Path("/dev/shm"), total_memory=ram,
                                      cgroup_root=tmp_path / "none",
                                      statvfs=_fake_statvfs(ram))
    assert host.bytes == int(ram * 0.3) and "RAM" in host.note


# ---- writing into a small tmpfs --------------------------------------------------------

def test_create_past_the_tmpfs_space_raises_store_full_and_leaves_nothing(small_shm: Path) -> None:
    store = _shm.ShmStore.create_for_node("limits-a", _shm.StoreConfig(capacity_bytes=64 * MB))
    try:
        # Before: a sparse file, mapped, whose writer would die of SIGBUS on the 9th MiB.
        with pytest.raises(exceptions.ObjectStoreFullError) as info:
            store.create("big", 12 * MB).abort()
        message = str(info.value)
        assert str(small_shm) in message and str(12 * MB) in message and "free" in message
        assert not _partials(small_shm) and not store.contains("big")
        with store.create("fits", 4 * MB) as seg:  # the store still works
            seg.buf[:] = b"x" * seg.size
        assert store.contains("fits")
    finally:
        store.destroy()


def test_create_past_the_tmpfs_space_spills_to_make_room(small_shm: Path, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    store = _shm.ShmStore.create_for_node(
        "limits-b", _shm.StoreConfig(capacity_bytes=64 * MB, spill_dir=spill))
    try:
        with store.create("old", 5 * MB) as seg:
            seg.buf[:] = b"o" * seg.size
        seg = store.create("new", 5 * MB)  # only ~3 MiB left: "old" goes to disk
        try:
            # Checked before writing: without the room made, the write would be a SIGBUS.
            assert (spill / "old").exists() and not store.contains("old")
            seg.buf[:] = b"n" * seg.size
        except BaseException:
            seg.abort()
            raise
        seg.seal()
        assert store.contains("new")
        assert not _partials(small_shm)
    finally:
        store.destroy()


def test_a_segment_that_cannot_be_mapped_leaves_no_partial_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.SHM_ROOT.name, str(tmp_path))
    store = _shm.ShmStore.create_for_node("limits-c")

    def no_mapping(*args: object, **kwargs: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(_shm.mmap, "mmap", no_mapping)
    with pytest.raises(OSError, match="allocate"):
        store.create("unmappable", 1 * MB)
    assert not _partials(tmp_path) and not store.contains("unmappable")
    store.destroy()


# ---- a cluster on a small tmpfs ----------------------------------------------------------

@taskmesh.remote(max_retries=0)
def _put_in_worker(nbytes: int) -> tuple[str, str]:
    try:
        ref = taskmesh.put(np.ones(nbytes // 8))
        return "stored", str(taskmesh.get(ref).nbytes)
    except Exception as e:
        return type(e).__name__, str(e)


@taskmesh.remote(max_retries=0)
def _array(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)


def test_put_and_result_past_the_tmpfs_fail_with_the_cause(small_shm: Path, cluster_factory) -> None:
    with cluster_factory(nodes=0) as cluster:
        sized = cluster.add_node(num_cpus=1)  # default capacity: what the tmpfs holds
        taskmesh.init(address=cluster.url)
        try:
            store = _shm.ShmStore.of_node(sized)
            assert store is not None and store.config.capacity_bytes is not None
            assert store.config.capacity_bytes <= TMPFS_BYTES
            assert str(small_shm) in store.config.capacity_note
            # `taskmesh memory` says why the store is that size.
            wait_until(lambda: f"capacity: the free space of {small_shm}" in CliRunner().invoke(
                main, ["memory", "--address", cluster.url]).output, what="the note in `taskmesh memory`")

            # A task result that does not fit: ObjectStoreFullError naming the tmpfs.
            with pytest.raises(exceptions.ObjectStoreFullError, match=str(small_shm)):
                taskmesh.get(_array.remote(16 * MB), timeout=30)
            # The worker lives on and the node keeps working.
            assert taskmesh.get(_array.remote(2 * MB), timeout=30).sum() == 2 * MB // 8
            assert taskmesh.get(_put_in_worker.remote(2 * MB), timeout=30) == ("stored", str(2 * MB))
            assert not _partials(small_shm)
        finally:
            taskmesh.shutdown()


@pytest.mark.cluster
def test_put_past_the_tmpfs_in_a_worker_raises_instead_of_sigbus(small_shm: Path, cluster_factory) -> None:
    with cluster_factory(nodes=0) as cluster:
        cluster.add_node(num_cpus=1, object_store_memory=64 * MB)  # larger than the tmpfs
        taskmesh.init(address=cluster.url)
        try:
            kind, message = taskmesh.get(_put_in_worker.remote(12 * MB), timeout=30)
            assert kind == "ObjectStoreFullError", message
            assert str(small_shm) in message and "out of space" in message and "free" in message
            assert not _partials(small_shm)
            assert taskmesh.get(_put_in_worker.remote(2 * MB), timeout=30) == ("stored", str(2 * MB))
        finally:
            taskmesh.shutdown()
