"""How long this process has been unable to reach Redis, and a log of it that stays short.

A loop that fails on every call while Redis is down (leasing, heartbeats, reading
completions) reports to one `Outage` per process instead of logging each failure: the
first failure is logged, then one line a minute while it lasts ("still unreachable after
60 s"), and one line when Redis answers again. The time since the first failure is what
a driver's `get()` and a draining agent compare with `TASKMESH_REDIS_UNREACHABLE_TIMEOUT_S`
to give up rather than wait forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from taskmesh.store.connection import mask_password

# The longest silence while the outage lasts.
REPEAT_S = 60.0


class Outage:
    """The current outage of one Redis address, as seen by the callers that report to it."""

    def __init__(self, address: str, logger: logging.Logger, repeat_s: float = REPEAT_S,
                 clock: Callable[[], float] = time.monotonic, prefix: str = ""):
        self.address = mask_password(address)
        self._prefix = prefix  # before each line: a driver's go to a bare stderr
        self._clock = clock
        self._log = logger
        self._repeat_s = repeat_s
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time of the first failure
        self._logged_at = 0.0

    def failed(self, what: str, error: BaseException) -> None:
        """A call failed because Redis did not answer (`what`: the work that failed)."""
        now = self._clock()
        with self._lock:
            if self._since is None:
                self._since, self._logged_at = now, now
                message = f"Redis at {self.address} is unreachable ({what}: {error!r}); retrying"
            elif now - self._logged_at >= self._repeat_s:
                self._logged_at = now
                message = f"Redis at {self.address} still unreachable after {now - self._since:.0f} s"
            else:
                return
        self._log.warning("%s%s", self._prefix, message)

    def succeeded(self) -> None:
        """A call reached Redis: the outage, if any, is over."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            self._log.warning("%sRedis at %s answers again after %.0f s",
                              self._prefix, self.address, self._clock() - since)

    def down_for(self) -> float:
        """Seconds since the first failure of the current outage; 0 when there is none."""
        since = self._since
        return 0.0 if since is None else self._clock() - since

    def ongoing(self, ping: Callable[[], object]) -> bool:
        """Whether an outage is on and `ping` (one call to Redis) still fails; a ping
        that is answered ends it. For a decision such as skipping a cleanup, which the
        last failure of a loop alone does not justify."""
        if self._since is None:
            return False
        try:
            ping()
        except Exception:
            return True
        self.succeeded()
        return False

    def message(self, seconds: float | None = None) -> str:
        """What a caller that gives up raises (`seconds`: how long it tried, when it
        knows better than the outage's own start)."""
        seconds = self.down_for() if seconds is None else seconds
        return f"Redis at {self.address} has been unreachable for {seconds:.0f} s"
