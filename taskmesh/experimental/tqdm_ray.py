"""Progress bars that work inside tasks and actors (Ray's `ray.experimental.tqdm_ray`).

In the driver, `tqdm` is a plain tqdm bar. In a task or an actor, the bar draws nothing
itself: it prints its state as one marked line of the worker's output (at most ~10 a
second, and always when closed or when it reaches its total), and the driver, which
receives its job's worker output, draws it with tqdm (`_core/progress.py`). Example::

    from taskmesh.experimental import tqdm_ray

    @taskmesh.remote
    def work(n):
        bar = tqdm_ray.tqdm(total=n, desc="work")
        for _ in range(n):
            bar.update(1)
        bar.close()
"""

from __future__ import annotations

import builtins
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import tqdm as _tqdm

from taskmesh._base import wire
from taskmesh._core import context

__all__ = ["safe_print", "tqdm"]

MIN_INTERVAL_S = 0.1  # between two states sent to the driver, per bar


def _in_worker() -> bool:
    runtime = context.current()
    return runtime is not None and runtime.is_worker


class tqdm:  # noqa: N801 - Ray's name
    """A progress bar with Ray's tqdm_ray signature; its other keyword arguments go to
    tqdm in the driver and are ignored in a worker."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None,
                 unit: str | None = None, position: int | None = None, flush_interval_s: float | None = None,
                 **kwargs: Any):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self._iterable = iterable
        self._desc, self._total, self._unit, self._pos = desc or "", total, unit or "it", position
        self._x = 0
        self._closed = False
        self._interval_s = max(flush_interval_s or 0.0, MIN_INTERVAL_S)
        self._sent_at = 0.0
        self._uuid = uuid.uuid4().hex
        self._local = None if _in_worker() else _tqdm.tqdm(
            desc=desc, total=total, unit=self._unit, position=position, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("this tqdm was made without an iterable")
        for item in self._iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> tqdm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n(self) -> int:
        return self._x

    @property
    def total(self) -> int | None:
        return self._total

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self._desc = desc or ""
        if self._local is not None:
            self._local.set_description(desc, refresh=refresh)
        elif refresh:
            self._send(force=True)

    def update(self, n: int = 1) -> None:
        self._x += n
        if self._local is not None:
            self._local.update(n)
        else:
            self._send(force=self._total is not None and self._x >= self._total)

    def refresh(self) -> None:
        if self._local is not None:
            self._local.refresh()
        else:
            self._send(force=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.close()
        else:
            self._send(force=True)

    def _send(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._sent_at < self._interval_s:
            return
        self._sent_at = now
        state = {"uuid": self._uuid, "desc": self._desc, "total": self._total, "x": self._x,
                 "pos": self._pos, "unit": self._unit, "closed": self._closed}
        print(wire.progress_line(state), file=sys.stdout, flush=True)


def safe_print(*args: Any, **kwargs: Any) -> None:
    """print() that does not garble the bars the driver draws (tqdm's write mode there;
    a plain print in a worker, whose lines the driver prints between its bars)."""
    if _in_worker():
        builtins.print(*args, **kwargs)
        return
    with _tqdm.tqdm.external_write_mode(file=kwargs.get("file")):
        builtins.print(*args, **kwargs)
