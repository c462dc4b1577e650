"""The driver's side of progress bars made in tasks and actors (experimental.tqdm_ray):
their states arrive as lines of the workers' output (wire.progress_line) and are drawn
here with tqdm, one bar per worker process and bar, until the bar is closed."""

from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm


class DriverBars:
    """The bars the driver draws for its job's workers (fed by the log printer)."""

    def __init__(self, file: Any = None):
        self._file = file
        self._bars: dict[tuple[int, str], tqdm] = {}
        self._lock = threading.Lock()

    def update(self, pid: int, state: dict[str, Any]) -> None:
        key = (pid, str(state["uuid"]))
        with self._lock:
            bar = self._bars.get(key)
            if bar is None:
                bar = self._bars[key] = tqdm(
                    desc=state.get("desc") or None, total=state.get("total"), unit=state.get("unit") or "it",
                    position=state.get("pos"), file=self._file, dynamic_ncols=True)
            bar.set_description(state.get("desc") or None, refresh=False)
            if state.get("total") != bar.total:
                bar.total = state.get("total")
            bar.n = int(state.get("x") or 0)
            bar.refresh()
            if state.get("closed"):
                bar.close()
                del self._bars[key]

    def close_all(self) -> None:
        with self._lock:
            bars, self._bars = list(self._bars.values()), {}
        for bar in bars:
            bar.close()


_bars: DriverBars | None = None


def driver_bars() -> DriverBars:
    """The process's DriverBars (made on first use)."""
    global _bars
    if _bars is None:
        _bars = DriverBars()
    return _bars
