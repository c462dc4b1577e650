"""The id grammar, in one place. An owner tag is 8 hex digits (the process that owns a
task or object: a Redis Cluster hash tag in every key of its tasks and objects); a task
id is its owner's tag + 16 hex digits; an object id is its task id + 4 hex digits (the
return index, 0 for `put`); an actor id is its creator's tag + 16 hex digits, and its
token (the object whose holders keep a non-detached actor alive) is the object id of the
actor id taken as a task id, index 0."""

from __future__ import annotations

import os
import random

# Task ids come from a private generator seeded from the OS, not os.urandom per id: in a
# driver with busy threads, each urandom call gives up the GIL and can wait a switch
# interval to get it back. Uniqueness comes from the owner tag (os.urandom) and 64
# random bits; a forked child reseeds, and a user's random.seed() does not touch it.
_ids = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))

OWNER_TAG_LEN = 8
TASK_ID_LEN = OWNER_TAG_LEN + 16
INDEX_LEN = 4


def new_owner_tag() -> str:
    return os.urandom(4).hex()


def new_task_id(owner: str) -> str:
    return f"{owner}{_ids.getrandbits(64):016x}"


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


def actor_token(actor_id: str) -> str:
    """The id of an actor's token object: owned by the actor's creator, held by every
    handle that counts (see handles.ActorHandle); any process can name it."""
    return object_id(actor_id, 0)
