"""Process plumbing: fate-sharing with a parent, and stopping process trees."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent thread exits.
    Linux only; elsewhere the parent-pid watch does the job. Survives exec, so it is
    also used as a preexec_fn for servers we start."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass


def fate_share_with_parent(poll_s: float = 1.0) -> None:
    """Die with the parent: PR_SET_PDEATHSIG, plus a thread watching the parent pid
    (covers non-Linux systems and a parent that died before prctl ran)."""
    parent = os.getppid()
    set_pdeathsig()
    if os.getppid() != parent or parent == 1:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="taskmesh-parent-watch", daemon=True).start()


def detach_in_forks(fd: int) -> None:
    """Make the socket `fd` (a worker's to its agent) useless to processes this one forks:
    a task's child gets /dev/null in its place, so it can neither read the agent's
    messages nor write into the worker's stream, and the agent sees EOF when the worker
    ends whatever the child does. (Programs started with exec do not get it at all: the
    caller marks it non-inheritable.)"""

    def replace() -> None:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd, inheritable=False)
            os.close(null)
        except OSError:
            pass

    os.register_at_fork(after_in_child=replace)


def end_if_forked(pid: int) -> None:
    """A process forked by a task or an actor method that came back into the worker's
    code (its child returned instead of exiting) ends here, before it could act as the
    worker `pid`: store results, ack entries or lease more."""
    if os.getpid() != pid:
        os._exit(0)


def stop_processes(pids: Iterable[int | psutil.Process], timeout_s: float = 5.0) -> list[int]:
    """SIGTERM the processes (and their children), SIGKILL what is left after the
    timeout. Returns the pids that were running. A pid is taken for the process it
    names now: give a psutil.Process, checked to be the one meant, where the pid may
    have been reused (psutil then refuses to signal a different process under it)."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            p = pid if isinstance(pid, psutil.Process) else psutil.Process(pid)
            if not p.is_running():
                continue
            procs.extend(p.children(recursive=True))
            procs.append(p)
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    alive = wait_exited(procs, timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    wait_exited(alive, timeout_s)
    return [p.pid for p in procs]


def has_exited(proc: psutil.Process) -> bool:
    """Gone, or a zombie: exited, waiting for its parent to reap it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_exited(procs: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to `timeout_s` for the processes to exit; returns those still running.
    Our children are reaped; another's process counts as exited once it is a zombie:
    reaping it is its parent's business (init's for an orphan, which the pid 1 of some
    containers does late or never), and psutil's wait would wait for that."""
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    delay = 0.002
    while True:
        _, alive = psutil.wait_procs(alive, timeout=0)  # reaps our children
        alive = [p for p in alive if not has_exited(p)]
        remaining = deadline - time.monotonic()
        if not alive or remaining <= 0:
            return alive
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


# ---- stack dumps (`taskmesh stack`) -------------------------------------------------------

STACK_SIGNAL = signal.SIGUSR2


def stack_file(root: Path, pid: int) -> Path:
    return root / "stacks" / f"{pid}.txt"


def enable_stack_dumps(root: Path) -> None:
    """On STACK_SIGNAL, write every thread's Python stack to this process's stack file
    (faulthandler: works even while the process is stuck in a long call)."""
    import faulthandler

    path = stack_file(root, os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "w")  # kept open: faulthandler writes to its descriptor
    faulthandler.register(STACK_SIGNAL, file=out, all_threads=True, chain=False)


def _runs_taskmesh(pid: int) -> bool:
    try:
        return any("taskmesh" in arg for arg in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def dump_stacks(root: Path, pids: Iterable[int], timeout_s: float = 3.0) -> dict[int, str]:
    """Signal each process and return what it wrote (pid -> stacks; "" when it did not
    answer in time: not a taskmesh process with dumps enabled, or stuck in the kernel)."""
    sizes = {}
    for pid in pids:
        path = stack_file(root, pid)
        if not path.exists() or not _runs_taskmesh(pid):
            continue  # (a stale file's pid may now be another program: never signal it)
        sizes[pid] = path.stat().st_size
        try:
            os.kill(pid, STACK_SIGNAL)
        except ProcessLookupError:
            sizes.pop(pid)
    out: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    while sizes and time.monotonic() < deadline:
        for pid, size in list(sizes.items()):
            path = stack_file(root, pid)
            if path.stat().st_size > size:
                time.sleep(0.05)  # let it finish writing
                with open(path) as f:
                    f.seek(size)
                    out[pid] = f.read()
                del sizes[pid]
        time.sleep(0.02)
    out.update({pid: "" for pid in sizes})
    return out


class RunningSlot:
    """A few bytes of memory a worker shares with its agent (a memfd the agent passes
    it): the id of the queue entry the worker is running, empty between tasks. A worker
    leases several entries at a time under a grant; when it dies, its agent reads the
    slot to tell the entry it died running (retried or failed) from those it never
    started (handed back as they were). The agent also writes there the entry of a task
    it sends the worker, which clears it once the task has run: a job's end then kills
    only a worker that has yet to finish its job's task."""

    SIZE = 64  # a length byte, then the id (stream ids are at most 41 bytes)

    def __init__(self, fd: int):
        self._map = mmap.mmap(fd, self.SIZE)

    @classmethod
    def create(cls) -> tuple[RunningSlot, int] | None:
        """(slot, fd to pass to the worker, which the caller closes once it is
        started); None where memfds are not available."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            fd = os.memfd_create("taskmesh-running", os.MFD_CLOEXEC)
            os.ftruncate(fd, cls.SIZE)
            return cls(fd), fd
        except OSError:
            return None

    def set(self, entry_id: bytes) -> None:
        # One copy of the whole slot: the id and its length change together.
        self._map[:] = bytes((len(entry_id),)) + entry_id.ljust(self.SIZE - 1, b"\0")

    def clear(self) -> None:
        self._map[0] = 0

    def get(self) -> bytes | None:
        n = self._map[0]
        return bytes(self._map[1:1 + n]) if 0 < n < self.SIZE else None

    def close(self) -> None:
        self._map.close()
