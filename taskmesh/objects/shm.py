"""A node's shared-memory object store: one file per object under /dev/shm.

Layout (one directory per node agent, removed when the agent exits):

    /dev/shm/taskmesh-{node_id}/{object_id}           sealed objects (framed, see objects.py)
    /dev/shm/taskmesh-{node_id}/{object_id}.partial   being written: by a put, a task's
                                                       return, or a transfer from another node
    /dev/shm/taskmesh-{node_id}/free/{size}-{rand}     freed segments kept for reuse
    /dev/shm/taskmesh-{node_id}/held/{object_id}-{rand} freed segments still mapped by a reader
    /dev/shm/taskmesh-{node_id}/.agent                 "<pid> <start time>" of the node agent
    /dev/shm/taskmesh-{node_id}/.config                capacity and spill directory (JSON)
    {spill_dir}/{object_id}                            objects spilled to disk

Any process of the node (driver, worker, agent) writes and maps objects directly; no
process hands out memory. Why files and a free pool rather than one arena: a file per
object needs no allocator shared across processes (a crashed writer leaves one
`.partial` file, not a corrupt heap), and readers map it read-only so numpy arrays come
back zero-copy and immutable. But the first write into fresh shared memory runs at about
a tenth of memcpy speed (page faults), so freed segments are not unlinked: they go to
`free/`, and the next object of similar size reuses their already-touched pages.

Readers hold a shared `flock` on the file for as long as their mapping lives (Python's
mmap keeps a dup of the descriptor, which keeps the lock). A freed segment is recycled
only when an exclusive lock succeeds, that is when nobody maps it; otherwise it moves to
`held/` (still counted as used memory) until its readers let go, then it is recycled.

Capacity (`--object-store-memory`) is enforced by the writer: when a new object does not
fit, it shrinks the free pool, then spills the least recently used objects that nobody
maps (the same exclusive-lock test: mapped objects are pinned) to the spill directory on
disk, then waits a bounded time for readers to let go before raising
ObjectStoreFullError. A reader that misses an object in shared memory restores it from
the spill directory first, so spilling is invisible to users. The default capacity is
what the node's memory and its shared-memory root allow (see capacity.py).

The file system can still run out before the capacity does (other nodes and programs
share /dev/shm; a container's is small), and a write through a mapping of a page tmpfs
cannot supply is a SIGBUS, the writer's death. So a segment's pages are reserved with
fallocate before it is mapped, under its private name: ENOSPC there frees the pool and
spills once, then raises ObjectStoreFullError naming the root and the bytes free, and no
`.partial` file was ever published.

Objects hold users' data and /dev/shm is writable by every user of the machine:
the node's directory and its spill directory are 0700, every object file 0600 from its
creation, and an agent that reaps the directories of dead agents touches only its own
user's, removing nothing outside them and its own spill root (see reap_dead_stores).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taskmesh._base import config
from taskmesh.exceptions import ObjectStoreFullError
from taskmesh.objects.capacity import free_bytes

DIR_PREFIX = "taskmesh-"
PARTIAL = ".partial"
AGENT_FILE = ".agent"
CONFIG_FILE = ".config"
# Freed segments kept for reuse, at most this many bytes in all (the rest are unlinked).
FREE_POOL_BYTES = 2 * 1024**3
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def node_dir(node_id: str) -> Path:
    return config.shm_root() / f"{DIR_PREFIX}{node_id}"


def default_spill_root() -> Path:
    """Where node agents spill when given no spill directory (each node in a
    subdirectory of its own)."""
    return config.temp_root() / "spill"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Limits of one node's store, chosen by its agent and read by every process."""

    capacity_bytes: int | None = None  # None: no limit but the machine's
    spill_dir: Path | None = None  # None: no spilling
    full_wait_s: float = 10.0  # how long a writer waits for room before ObjectStoreFullError
    capacity_note: str = ""  # where capacity_bytes came from, for error messages

    def to_json(self) -> str:
        return json.dumps({"capacity_bytes": self.capacity_bytes, "full_wait_s": self.full_wait_s,
                           "spill_dir": str(self.spill_dir) if self.spill_dir else None,
                           "capacity_note": self.capacity_note})

    @classmethod
    def from_json(cls, text: str) -> StoreConfig:
        raw = json.loads(text)
        spill = raw.get("spill_dir")
        return cls(raw.get("capacity_bytes"), Path(spill) if spill else None,
                   float(raw.get("full_wait_s", 10.0)), str(raw.get("capacity_note") or ""))


@dataclass(frozen=True, slots=True)
class Usage:
    """What a node's store holds right now."""

    used_bytes: int
    objects: int
    free_pool_bytes: int
    spilled_bytes: int = 0
    spilled_objects: int = 0


class Segment:
    """A writable object being created: fill `buf`, then `seal()` (or `abort()`)."""

    def __init__(self, store: ShmStore, object_id: str, fd: int, size: int):
        self._store = store
        self.object_id = object_id
        self.size = size
        self._fd = fd
        # MAP_POPULATE maps every page up front: one call instead of a fault per page.
        self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE) if size else None
        self.buf = memoryview(self._mm) if self._mm is not None else memoryview(b"")

    def seal(self) -> None:
        """Publish the object: readers see it complete or not at all. The writer's lock
        is released only after the rename, so nobody takes the writer for dead."""
        try:
            os.rename(self._store.partial_path(self.object_id), self._store.path(self.object_id))
        finally:
            self._close()

    def abort(self) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._store.partial_path(self.object_id))
        finally:
            self._close()

    def _close(self) -> None:
        self.buf.release()
        if self._mm is not None:
            self._mm.close()
        os.close(self._fd)  # releases the writer's exclusive lock

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.seal()
        else:
            self.abort()


class ShmStore:
    """The objects of one node, as files in its shared-memory directory."""

    def __init__(self, root: Path, config: StoreConfig | None = None):
        self.root = root
        self.free_dir = root / "free"
        self.held_dir = root / "held"
        self.config = config or StoreConfig()
        self.spill_dir = self.config.spill_dir

    @classmethod
    def create_for_node(cls, node_id: str, config: StoreConfig | None = None) -> ShmStore:
        """Make the node's directory (the agent does this before registering), marked
        with the agent's pid so that a crashed agent's directory can be reaped."""
        root = node_dir(node_id)
        config = config or StoreConfig()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "free").mkdir(exist_ok=True)
        (root / "held").mkdir(exist_ok=True)
        if config.spill_dir is not None:
            config.spill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / CONFIG_FILE).write_text(config.to_json())
        (root / AGENT_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}")
        return cls(root, config)

    @classmethod
    def of_node(cls, node_id: str | None) -> ShmStore | None:
        """The store of a node running on this machine, or None when there is none here."""
        if not node_id:
            return None
        root = node_dir(node_id)
        try:
            return cls(root, StoreConfig.from_json((root / CONFIG_FILE).read_text()))
        except FileNotFoundError:
            return cls(root) if root.is_dir() else None

    def path(self, object_id: str) -> Path:
        return self.root / object_id

    def partial_path(self, object_id: str) -> Path:
        return self.root / (object_id + PARTIAL)

    # ---- writing ----------------------------------------------------------------------

    def create(self, object_id: str, size: int) -> Segment:
        """A new segment of `size` bytes for the object, reusing a freed one when there
        is one. Raises FileExistsError when the object exists or is being written (a
        concurrent transfer of the same object: wait for it with `wait_sealed`)."""
        if self.path(object_id).exists():
            raise FileExistsError(errno.EEXIST, "object exists", str(self.path(object_id)))
        self._make_room(object_id, size)
        # The segment is prepared and locked under a name of our own, then published
        # as `{id}.partial` with link(): that name never exists without a live writer's
        # lock, so a waiter never mistakes a writer that is starting for a dead one.
        private = self.root / f".{object_id}-{os.getpid()}-{os.urandom(4).hex()}{PARTIAL}"
        recycled = self._take_free(size)
        if recycled is not None:
            os.rename(recycled, private)
            fd = os.open(private, os.O_RDWR)
        else:
            fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        linked = False
        try:
            # Blocking: the process that freed a recycled segment may still hold its
            # lock for a moment after moving it to the pool.
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, size)
            self._reserve(fd, object_id, size)
            os.link(private, self.partial_path(object_id))  # fails while another writes it
            linked = True
            return Segment(self, object_id, fd, size)
        except BaseException as e:
            if linked:  # mapping it failed: no partial file outlives its writer's attempt
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.partial_path(object_id))
            os.close(fd)
            if recycled is not None and isinstance(e, FileExistsError):
                with contextlib.suppress(OSError):
                    self._return_free(private)  # keep the touched pages for the next object
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(private)

    def _reserve(self, fd: int, object_id: str, size: int) -> None:
        """Allocate every page of the segment now. A tmpfs with too little room does not
        fail a write through a mapping: the writer gets SIGBUS and dies. fallocate fails
        with ENOSPC instead; then the free pool is given back and objects are spilled to
        make room, once, before ObjectStoreFullError names what is short."""
        if size == 0 or os.fstat(fd).st_blocks * 512 >= size:
            return  # a recycled segment whose pages are all there already
        for attempt in (1, 2):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.ENOMEM):
                    raise
                if attempt == 1 and self._free_shm(size - free_bytes(self.root)) > 0:
                    continue
                raise ObjectStoreFullError(self._no_room_message(object_id, size, e)) from None

    def _free_shm(self, need_bytes: int) -> int:
        """Give shared memory back to the file system (held and pooled segments, then
        spilled objects) until `need_bytes` are freed; returns the bytes freed."""
        need_bytes = max(need_bytes, 1)
        self.reclaim_held()
        pool = self._free_bytes()
        freed = self.trim_free_pool(max(0, pool - need_bytes))
        if freed < need_bytes:
            freed += self.spill(need_bytes - freed)
        return freed

    def _no_room_message(self, object_id: str, size: int, error: OSError) -> str:
        st = os.statvfs(self.root)
        free, total = free_bytes(self.root), st.f_blocks * st.f_frsize
        capacity = self.config.capacity_bytes
        store = (f"{capacity} bytes{': ' + self.config.capacity_note if self.config.capacity_note else ''}"
                 if capacity is not None else "no limit set")
        why = "out of space" if error.errno == errno.ENOSPC else "out of memory (the cgroup's limit?)"
        return (f"Could not store object {object_id} ({size} bytes) in shared memory: "
                f"{self.root.parent} is {why}, {free} of its {total} bytes free; nothing more "
                f"could be spilled{'' if self.spill_dir else ' (spilling is off)'}. This node's "
                f"object store is sized {store}, but other processes and nodes on this machine "
                f"share that file system. Give it more room (docker: --shm-size, compose: "
                f"shm_size) or start the node with a smaller --object-store-memory.")

    def _take_free(self, size: int) -> Path | None:
        """Claim the smallest free segment that holds `size` bytes (or else the largest),
        renamed to a name of this process's own so no other writer can take it."""
        try:
            names = sorted(os.listdir(self.free_dir))
        except FileNotFoundError:
            return None
        fitting = [n for n in names if _free_size(n) >= size]
        candidates = fitting or names[::-1]
        for name in candidates[:8]:
            claimed = self.free_dir / f".claimed-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                os.rename(self.free_dir / name, claimed)
                return claimed
            except FileNotFoundError:
                continue  # another writer took it first
        return None

    def _return_free(self, path: Path) -> None:
        size = path.stat().st_size
        os.rename(path, self.free_dir / f"{size:016d}-{os.urandom(4).hex()}")

    # ---- reading ----------------------------------------------------------------------

    def open(self, object_id: str) -> memoryview | None:
        """The sealed object mapped read-only (restored from disk first if it was
        spilled), or None when this node has no copy. The mapping holds a shared lock,
        so the segment is neither reused nor spilled while it is mapped."""
        view = self._open_sealed(object_id)
        if view is None and self.spill_dir is not None and (self.spill_dir / object_id).exists():
            view = self._restore(object_id)
        return view

    def _open_sealed(self, object_id: str) -> memoryview | None:
        path = self.path(object_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            try:
                if os.stat(path).st_ino != st.st_ino:
                    return None  # freed and recycled between our open and our lock
            except FileNotFoundError:
                return None
            if st.st_size == 0:
                return memoryview(b"")
            mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
            with contextlib.suppress(OSError):
                os.utime(fd)  # last use, for choosing what to spill
        finally:
            os.close(fd)
        return memoryview(mm)

    def contains(self, object_id: str) -> bool:
        return self.path(object_id).exists()

    def wait_sealed(self, object_id: str, timeout_s: float) -> memoryview | None:
        """Wait for a copy another process is writing here. None if the writer went away
        without sealing it (its partial file is then removed) or on timeout."""
        deadline = time.monotonic() + timeout_s
        delay = 0.0005
        while time.monotonic() < deadline:
            view = self._open_sealed(object_id)
            if view is not None:
                return view
            if not self._writer_alive(object_id):
                view = self._open_sealed(object_id)  # sealed just now?
                if view is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.partial_path(object_id))
                return view
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return None

    def _writer_alive(self, object_id: str) -> bool:
        try:
            fd = os.open(self.partial_path(object_id), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False  # nobody holds the writer's exclusive lock
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    # ---- freeing ----------------------------------------------------------------------

    def delete(self, object_ids: list[str]) -> int:
        """Remove this node's copies; returns how many there were. An unmapped segment
        goes to the free pool (while it has room), a mapped one is unlinked."""
        removed = 0
        pool = self._free_bytes()
        for oid in object_ids:
            if self.spill_dir is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spill_dir / oid)
                    removed += 1
            path = self.path(oid)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            removed += 1
            try:
                size = os.fstat(fd).st_size
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    reusable = size > 0 and pool + size <= FREE_POOL_BYTES
                except BlockingIOError:
                    locked = reusable = False  # mapped by a reader: never overwrite it
                if reusable:
                    os.rename(path, self.free_dir / f"{size:016d}-{os.urandom(4).hex()}")
                    pool += size
                elif locked:
                    os.unlink(path)
                else:  # its readers keep the memory: count it until they let go
                    os.rename(path, self.held_dir / f"{oid}-{os.urandom(4).hex()}")
            except FileNotFoundError:
                removed -= 1  # another process freed it at the same time
            finally:
                os.close(fd)
        return removed

    def reclaim_held(self) -> int:
        """Recycle (or unlink) freed segments whose readers have let go; returns bytes."""
        reclaimed = 0
        pool = self._free_bytes()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.held_dir):
                try:
                    fd = os.open(entry.path, os.O_RDWR)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    size = os.fstat(fd).st_size
                    if size > 0 and pool + size <= FREE_POOL_BYTES:
                        os.rename(entry.path, self.free_dir / f"{size:016d}-{os.urandom(4).hex()}")
                        pool += size
                    else:
                        os.unlink(entry.path)
                    reclaimed += size
                except (BlockingIOError, FileNotFoundError):
                    continue
                finally:
                    os.close(fd)
        return reclaimed

    def trim_free_pool(self, keep_bytes: int = 0) -> int:
        """Unlink free segments beyond `keep_bytes`, largest first; returns bytes freed."""
        freed = 0
        names = sorted(os.listdir(self.free_dir), reverse=True)
        total = sum(_free_size(n) for n in names)
        for name in names:
            if total - freed <= keep_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.free_dir / name)
                freed += _free_size(name)
        return freed

    def _free_bytes(self) -> int:
        try:
            return sum(_free_size(n) for n in os.listdir(self.free_dir))
        except FileNotFoundError:
            return 0

    def object_ids(self) -> list[str]:
        """Sealed objects held here."""
        with contextlib.suppress(FileNotFoundError):
            return [e.name for e in os.scandir(self.root) if _is_object(e)]
        return []

    def files_older_than(self, age_s: float) -> list[str]:
        """Sealed objects last changed more than `age_s` seconds ago."""
        cutoff = time.time() - age_s
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if _is_object(entry):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime < cutoff:
                            out.append(entry.name)
        return out

    def remove_dead_partials(self, age_s: float) -> int:
        """Unlink partial files older than `age_s` whose writer died (no writer lock)."""
        cutoff = time.time() - age_s
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not entry.name.endswith(PARTIAL):
                    continue
                oid = entry.name[:-len(PARTIAL)]
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff and not self._writer_alive(oid):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def usage(self) -> Usage:
        used, count = _sizes(self.root)
        used += _sizes(self.held_dir)[0]
        spilled, spilled_count = _sizes(self.spill_dir) if self.spill_dir else (0, 0)
        return Usage(used, count, self._free_bytes(), spilled, spilled_count)

    def destroy(self) -> None:
        """Remove the whole directory and the spilled objects (the agent, when it exits)."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    # ---- capacity and spilling ----------------------------------------------------------

    def _make_room(self, object_id: str, size: int) -> None:
        capacity = self.config.capacity_bytes
        if capacity is None:
            return
        if size > capacity:
            note = self.config.capacity_note
            raise ObjectStoreFullError(
                f"Object {object_id} ({size} bytes) is larger than this node's object store "
                f"({capacity} bytes{', sized by ' + note if note else ''}); start the node with a "
                f"larger --object-store-memory, and where {self.root.parent} is what limits it, give "
                f"it more room (docker: --shm-size, compose: shm_size).")
        deadline = time.monotonic() + self.config.full_wait_s
        while True:
            usage = self.usage()
            excess = usage.used_bytes + usage.free_pool_bytes + size - capacity
            if excess > 0 and self.reclaim_held():
                usage = self.usage()
                excess = usage.used_bytes + usage.free_pool_bytes + size - capacity
            if excess > 0:
                excess -= self.trim_free_pool(max(0, usage.free_pool_bytes - excess))
            if excess > 0:
                excess -= self.spill(excess)
            if excess <= 0:
                return
            if time.monotonic() > deadline:
                raise ObjectStoreFullError(
                    f"Could not store object {object_id} ({size} bytes): this node's object "
                    f"store is full ({usage.used_bytes} of {capacity} bytes in use by "
                    f"{usage.objects} objects that are mapped by readers or cannot be "
                    f"spilled{'' if self.spill_dir else ', and spilling is off'}).")
            time.sleep(0.05)  # mapped objects are released as their readers drop them

    def spill(self, need_bytes: int) -> int:
        """Move least recently used, unmapped objects to disk until `need_bytes` are
        freed; returns the bytes freed."""
        if self.spill_dir is None:
            return 0
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if _is_object(entry):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        entries.append((st.st_mtime, entry.name, st.st_size))
        freed = 0
        for _, oid, size in sorted(entries):
            if freed >= need_bytes:
                break
            if self._spill_one(oid):
                freed += size
        return freed

    def _spill_one(self, object_id: str) -> bool:
        assert self.spill_dir is not None
        path = self.path(object_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return False
            tmp = self.spill_dir / f".{object_id}-{os.urandom(4).hex()}{PARTIAL}"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _copy_fd(fd, out, os.fstat(fd).st_size)
                os.rename(tmp, self.spill_dir / object_id)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            finally:
                os.close(out)
            os.unlink(path)
            return True
        except (BlockingIOError, FileNotFoundError):
            return False  # mapped by a reader (pinned), or freed meanwhile
        finally:
            os.close(fd)

    def _restore(self, object_id: str) -> memoryview | None:
        assert self.spill_dir is not None
        src = self.spill_dir / object_id
        try:
            fd = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            return self._open_sealed(object_id)  # restored by another reader just now
        try:
            try:
                segment = self.create(object_id, os.fstat(fd).st_size)
            except FileExistsError:
                return self.wait_sealed(object_id, 60.0)
            with segment:
                _read_fully(fd, segment.buf)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(src)
        return self._open_sealed(object_id)


def reap_dead_stores(spill_root: Path | None = None) -> list[Path]:
    """Remove the directories of node agents on this machine that died without cleaning
    up (kill -9): nothing can read them any more. Returns what was removed.

    The shm root is writable by every user, so a directory there is taken for a store
    only when it is this user's (not a symbolic link, not writable by others) and so
    are its `.agent` and `.config` files. The spill directory `.config` names is removed
    only when it lies inside `spill_root` (the reaping agent's own; None: no spilled
    objects are removed) and is this user's too."""
    removed = []
    for root in config.shm_root().glob(f"{DIR_PREFIX}*"):
        if not _is_own(root, stat.S_ISDIR):
            continue
        agent = _read_own_file(root / AGENT_FILE)
        if agent is None:
            continue  # not a store, or being created
        pid_text, _, started = agent.partition(" ")
        if not pid_text.isdigit() or _start_time(int(pid_text)) == started:
            continue  # its agent lives
        spill = _spill_dir_to_reap(root, spill_root)
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _spill_dir_to_reap(root: Path, spill_root: Path | None) -> Path | None:
    """The dead store's spill directory, resolved, when it is strictly inside
    `spill_root` and this user's own; else None."""
    if spill_root is None:
        return None
    text = _read_own_file(root / CONFIG_FILE)
    try:
        spill = StoreConfig.from_json(text).spill_dir if text is not None else None
        if spill is None:
            return None
        spill = spill.resolve(strict=True)
        inside = spill.relative_to(spill_root.resolve(strict=True))
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # unreadable, gone, or not under the spill root
    return spill if inside.parts and _is_own(spill, stat.S_ISDIR) else None


def _is_own(path: Path, is_kind: Callable[[int], bool]) -> bool:
    """`path` itself (not what a symbolic link points to) is of that kind, this user's,
    and not writable by group or others."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return is_kind(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _read_own_file(path: Path, limit: int = 64 * 1024) -> str | None:
    """The text of a regular file of this user's that others cannot write (checked on
    the open file, following no symbolic link), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        return os.read(fd, limit).decode()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat), '' when it is gone: a pid
    plus its start time names one process even when pids are reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _sizes(root: Path) -> tuple[int, int]:
    """(bytes, sealed objects) of the object files in `root`, partial files included
    in the bytes."""
    used = count = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if entry.is_file() and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    used += entry.stat().st_size
                    count += not entry.name.endswith(PARTIAL)
    return used, count


def _copy_fd(src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        sent = os.sendfile(dst, src, offset, size - offset)
        if sent == 0:
            raise OSError(f"short copy: {offset} of {size} bytes")
        offset += sent


def _read_fully(fd: int, buf: memoryview) -> None:
    offset = 0
    while offset < buf.nbytes:
        n = os.readv(fd, [buf[offset:]])
        if n == 0:
            raise OSError(f"spilled object truncated at {offset} of {buf.nbytes} bytes")
        offset += n


def _is_object(entry: os.DirEntry) -> bool:
    return entry.is_file() and not entry.name.startswith(".") and not entry.name.endswith(PARTIAL)


def _free_size(name: str) -> int:
    head = name.partition("-")[0]
    return int(head) if head.isdigit() else 0
