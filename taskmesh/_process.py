"""Process plumbing: fate-sharing with a parent, and stopping process trees."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable

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


def stop_processes(pids: Iterable[int], timeout_s: float = 5.0) -> list[int]:
    """SIGTERM the processes (and their children), SIGKILL what is left after the
    timeout. Returns the pids that were running."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs.extend(p.children(recursive=True))
            procs.append(p)
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    return [p.pid for p in procs]
