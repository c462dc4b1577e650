"""How large a node's object store is by default, and why.

Ray sizes its store at 30 % of the machine's RAM. In a container that number is wrong
twice over: the memory the container may use is its cgroup's limit, not the host's RAM,
and shared memory is a tmpfs of its own (Docker gives `/dev/shm` 64 MiB unless told
`--shm-size`). A store larger than its tmpfs does not fail cleanly when full: writing
through a mapping of a page the tmpfs cannot supply raises SIGBUS. So the default is

    min(30 % of (the cgroup memory limit if one is set, else the host's RAM),
        the free space statvfs reports for the shared-memory root)

and the reason travels with the number (`Capacity.note`), so that a put that does not
fit says which limit it met. The readers of the cgroup files and of statvfs take their
root / function as parameters: tests give them fake files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MEMORY_FRACTION = 0.3  # of the memory the node may use, as Ray
# cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages) rather than "max".
_UNLIMITED_V1 = 1 << 60


@dataclass(frozen=True, slots=True)
class Capacity:
    """A store size in bytes and the words that say where it came from."""

    bytes: int
    note: str


def cgroup_memory_limit(root: Path = Path("/")) -> int | None:
    """The memory limit of this process's cgroup (the smallest along its path up to the
    hierarchy's root, v2 `memory.max` or v1 `memory.limit_in_bytes`), None when none is
    set or none can be read. `root` is the file system root, so a test can point it at a
    directory holding a fake `proc/self/cgroup` and `sys/fs/cgroup`."""
    base = root / "sys" / "fs" / "cgroup"
    v2: Path | None = None
    v1: Path | None = None
    try:
        lines = (root / "proc" / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":
            v2 = Path(path.lstrip("/"))
        elif "memory" in controllers.split(","):
            v1 = Path(path.lstrip("/"))
    limits = _limits_up(base, v2 or Path("."), "memory.max")
    limits += _limits_up(base / "memory", v1 or Path("."), "memory.limit_in_bytes")
    return min(limits) if limits else None


def _limits_up(base: Path, relative: Path, name: str) -> list[int]:
    """The numeric limits in `name` from base/relative up to base (inside a container's
    cgroup namespace the whole path collapses to base itself)."""
    out = []
    for directory in (base / relative, *(base / p for p in relative.parents)):
        try:
            text = (directory / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < _UNLIMITED_V1:
            out.append(int(text))
    return out


def machine_memory() -> int:
    """Bytes of memory this machine gives its processes: its RAM, or its cgroup's limit
    when that is smaller."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(memory, cgroup_memory_limit() or memory)


def free_bytes(path: Path, statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> int:
    """Bytes an unprivileged writer can still allocate in the file system of `path`."""
    st = statvfs(path)
    return st.f_bavail * st.f_frsize


def default_capacity(shm_root: Path, *, total_memory: int | None = None,
                     cgroup_root: Path = Path("/"),
                     statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> Capacity:
    """The store size a node gets when none is asked for (see the module docstring)."""
    if total_memory is None:
        import psutil

        total_memory = int(psutil.virtual_memory().total)
    limit = cgroup_memory_limit(cgroup_root)
    if limit is not None and limit < total_memory:
        memory, source = limit, f"the cgroup memory limit ({_mib(limit)})"
    else:
        memory, source = total_memory, f"RAM ({_mib(total_memory)})"
    by_memory = int(memory * MEMORY_FRACTION)
    # The root may not exist yet (the store makes it): its nearest existing parent's
    # file system is where it will be.
    probe = next((p for p in (shm_root, *shm_root.parents) if p.exists()), shm_root)
    try:
        shm_free: int | None = free_bytes(probe, statvfs)
    except OSError:
        shm_free = None
    if shm_free is not None and shm_free < by_memory:
        return Capacity(shm_free, f"the free space of {shm_root} ({_mib(shm_free)}), less than "
                                  f"{MEMORY_FRACTION:.0%} of {source}")
    return Capacity(by_memory, f"{MEMORY_FRACTION:.0%} of {source}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
