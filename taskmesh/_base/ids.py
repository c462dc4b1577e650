"""The id grammar, in one place. An owner tag is 8 hex digits (the process that owns a
task or object: a Redis Cluster hash tag in every key of its tasks and objects); a task
id is its owner's tag + 16 hex digits; an object id is its task id + 4 hex digits (the
return index, 0 for `put`); an actor id is its creator's tag + 16 hex digits."""

from __future__ import annotations

import os

OWNER_TAG_LEN = 8
TASK_ID_LEN = OWNER_TAG_LEN + 16
INDEX_LEN = 4


def new_owner_tag() -> str:
    return os.urandom(4).hex()


def new_task_id(owner: str) -> str:
    return owner + os.urandom(8).hex()


def object_id(task_id: str, index: int) -> str:
    return f"{task_id}{index:04x}"


def owner_of(any_id: str) -> str:
    """The owner tag that starts a task, object or actor id."""
    return any_id[:OWNER_TAG_LEN]


def task_of(oid: str) -> str:
    """The task that made object `oid`."""
    return oid[:-INDEX_LEN]


def index_of(oid: str) -> int:
    """The return index of object `oid` (0 for a `put`)."""
    return int(oid[-INDEX_LEN:], 16)


def new_actor_id(owner: str) -> str:
    """An actor id: its creator's tag + 16 hex digits (the tag is its keys' hash tag)."""
    return owner + os.urandom(8).hex()
