"""The store: the only part that knows what a taskmesh key looks like (keys.py holds the
schema), the Lua scripts that change several keys at once (lua/), and one typed method
per operation on the `Store`. It imports nothing of taskmesh's but `_base` and
`exceptions`: it knows keys, not objects, actors or processes."""

from taskmesh.store.client import KIND_FENCE, Store
from taskmesh.store.keys import Keys
from taskmesh.store.records import (
    CALL_GROUP,
    GROUP,
    KIND_OWNER_GONE,
    OWNER_TAG_LEN,
    Completion,
    Freed,
    Leased,
    Liveness,
    Outgoing,
    Release,
    keep_listening,
    retry_transient,
    translate_errors,
)

__all__ = [
    "CALL_GROUP", "GROUP", "KIND_FENCE", "KIND_OWNER_GONE", "OWNER_TAG_LEN", "Completion", "Freed", "Keys",
    "Leased", "Liveness", "Outgoing", "Release", "Store", "keep_listening", "retry_transient",
    "translate_errors",
]
