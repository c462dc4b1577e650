"""The versions every process of a cluster must share, and the check made when one joins.

Functions and classes travel pickled by value: their code objects are bytecode of one
Python minor version, and a worker of another one fails in ways that name neither version
(SystemError, a crashed worker). Queue entries, the key schema and the Lua scripts belong
to one taskmesh version and one protocol (PROTOCOL). So the first process to meet a fresh
cluster records its versions (store key `versions`, see store/keys.py) and every later
driver and node agent compares its own with them before it runs anything.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from taskmesh.exceptions import VersionMismatchError

PACKAGE_VERSION = "0.1.0"

# What processes of one cluster say to each other through Redis: queue entries and
# messages (_base/wire.py), the key schema (store/keys.py), the Lua scripts (store/lua).
# Raised with every change one side of an older build would misread, releases or not:
# builds of one package version that speak differently are refused too.
PROTOCOL = "2"

FIELDS = ("python", "taskmesh", "protocol")


def this_process() -> dict[str, str]:
    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "taskmesh": PACKAGE_VERSION,
            "protocol": PROTOCOL}


def check(recorded: Mapping[str, str] | None, where: str) -> None:
    """Raise VersionMismatchError, naming both sides, when `recorded` (the cluster's, as
    read from `where`) differs from this process's; None: nothing recorded, nothing to
    compare (a role that may read but not record, before any agent joined)."""
    if recorded is None:
        return
    mine = this_process()
    if all(recorded.get(f) == mine[f] for f in FIELDS):
        return
    theirs = " and ".join(f"{f} {recorded.get(f, '?')}" for f in FIELDS)
    ours = " and ".join(f"{f} {mine[f]}" for f in FIELDS)
    raise VersionMismatchError(
        f"Version mismatch: the cluster at {where} runs {theirs}, this process runs {ours} "
        f"({sys.executable}). Run it with the cluster's versions, or restart the cluster "
        "with this process's.")
