"""What the Store's parts may use of the Store: the one small protocol its mixins
(actor_table, directory, groups, observe) depend on, as redis-py's command mixins
depend on `execute_command` alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis

from taskmesh.store.keys import Keys
from taskmesh.store.records import GROUP, Completion, Leased
from taskmesh.store.scripts import Scripts


class StoreCore(Protocol):
    redis: redis.Redis
    keys: Keys
    scripts: Scripts

    def run_scripts(self, queue_commands: Callable[[Any], None], scripts: tuple[Any, ...], *,
                    durable: bool = False) -> list:
        """Run a pipeline of EVALSHAs (reloading scripts on NOSCRIPT), durable: WAITed for
        a replica when the cluster has one."""
        ...

    def should_wait(self) -> bool:
        """Whether durable writes are WAITed for a replica now."""
        ...

    def complete_tasks(self, completions: Sequence[Completion], acks: dict[str, list[bytes]],
                       group: bytes = GROUP, then_lease: tuple[str, str, int] | None = None) -> list[Leased]:
        ...
