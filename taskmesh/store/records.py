"""What the store's modules share: error handling and the retry helper, and the records
that cross Redis. (The key schema is in keys.py.)"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from redis.typing import EncodableT, FieldT

from taskmesh._base import config
from taskmesh._base.ids import OWNER_TAG_LEN  # noqa: F401  (re-exported)
from taskmesh._base.wire import QueueEntry
from taskmesh.exceptions import ObjectStoreFullError, StoreAuthenticationError, StoreUnavailableError

GROUP = b"agents"  # the consumer group of every queue (one consumer per node)
CALL_GROUP = b"actor"  # the consumer group of an actor's call stream (consumer: the actor id)
# The fence hash field that marks its owner gone (no task id is "*"; see complete.lua).
GONE_FENCE = "*"
# What Store.get_objects gives for an object whose owner is gone: Ray's OwnerDiedError.
KIND_OWNER_GONE = b"ownergone"
ENV_WAIT_REPLICAS = config.WAIT_REPLICAS.name
ENV_WAIT_TIMEOUT_MS = config.WAIT_TIMEOUT_MS.name
# How long a primary found without replicas is not waited for, before asking again.
_NO_REPLICA_BACKOFF_S = 1.0

# ReadOnlyError: a write reached a primary that was demoted to a replica. Through a
# Sentinel pool it arrives as a ConnectionError (the pool drops the connection and asks the
# Sentinels again); on a plain address it is still a Redis that cannot take writes now.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
              ConnectionError, TimeoutError)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def retry_transient(
    fn: Callable[[], T], *, deadline_s: float = 30.0, base_s: float = 0.05, cap_s: float = 2.0,
    stop: Callable[[], bool] = lambda: False,
) -> T:
    """Call `fn` until it succeeds, retrying only transient (connection/timeout) errors
    with capped exponential backoff and full jitter; the last error propagates after
    `deadline_s` or once `stop()` is true. The one retry helper of the code base."""
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            return fn()
        except (StoreUnavailableError, *_TRANSIENT):
            attempt += 1
            delay = random.uniform(0, min(cap_s, base_s * 2 ** attempt))
            if stop() or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)


def keep_listening(error: BaseException, pubsub: Any, thread: Any) -> None:
    """Exception handler for pub/sub listener threads: a lost connection (Redis
    restarting, a failover) is waited out, and the next read reconnects and subscribes
    again, instead of the thread ending silently."""
    time.sleep(0.5)


def translate_errors(fn: F) -> F:
    """Turn Redis connection/timeout errors into one StoreUnavailableError; refused
    credentials (redis-py's AuthenticationError is a ConnectionError) into its subclass
    StoreAuthenticationError, whose message does not call the server unavailable; a
    write refused over maxmemory into ObjectStoreFullError (Redis is where small objects
    live: Ray's error for an object that cannot be stored)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.AuthenticationError as e:
            raise StoreAuthenticationError(f"Redis refused the credentials: {e}") from e
        except _TRANSIENT as e:
            raise StoreUnavailableError(f"Redis is unavailable: {e}") from e
        except redis.exceptions.OutOfMemoryError as e:
            raise ObjectStoreFullError(
                f"Redis is out of memory and refused a write: {e} Drop the refs of objects no "
                "longer needed, or give Redis a larger maxmemory.") from e

    return wrapper  # type: ignore[return-value]


@dataclass(slots=True)  # built per task: not frozen, see wire.TaskSpec
class Completion:
    """One finished task as the agent hands it to `complete_tasks`."""

    owner: str
    notice: bytes
    objects: tuple[tuple[str, bytes, bytes], ...]  # (object_id, kind, data)
    # The notice carries every result and the owner keeps them (Notice.kept): nothing is
    # stored, the owner is only notified (fenced as any completion).
    kept: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """One change of who holds an object (see release.lua): holder "owner", "p:<tag>"
    or "o:<object_id>"; delta +1/-1, or 0 to drop the holder entirely."""

    object_id: str
    holder: str
    delta: int


@dataclass(frozen=True, slots=True)
class Freed:
    """An object release.lua freed: where its copies are and the refs it contained;
    for an actor's token, the actor (which then ends: lifecycle.release)."""

    object_id: str
    nodes: tuple[str, ...]
    nested: tuple[str, ...]
    actor_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A task or actor creation for a queue (`target`: a queue name, see _base/queues.py),
    or a method call for an actor (actor_id set)."""

    target: str
    entry: QueueEntry
    actor_id: str | None = None
    returns: tuple[str, ...] = ()


@dataclass(slots=True)  # built per task: not frozen, see wire.TaskSpec
class Leased:
    """One task entry read from a queue stream."""

    queue: str
    entry_id: bytes
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Liveness:
    """Heartbeats and queue consumers read at one instant, for the failure monitor."""

    heartbeats: dict[str, int]  # node_id -> last heartbeat (ms, Redis server time)
    consumers: dict[str, dict[str, int]]  # shape -> consumer -> pending entries
    now_ms: int = 0  # the Redis server's time when this was read


def _forget_frames(replies: Any) -> Any:
    """Drop the tracebacks of error replies we handle: redis-py keeps error objects in
    reference cycles, and a traceback keeps every frame up to our caller's alive until
    the cycle collector runs, with the caller's ObjectRefs and actor handles in them (so
    objects and actors would outlive the user's last reference)."""
    for reply in replies:
        if isinstance(reply, BaseException):
            reply.__traceback__ = None
            reply.__context__ = None
    return replies


def _fields(mapping: Mapping[str, EncodableT]) -> Mapping[FieldT, EncodableT]:
    """`mapping` as HSET's `mapping` argument, unchanged. redis-py types that argument
    Mapping[FieldT, EncodableT], and a Mapping's key type is invariant: no dict[str, ...]
    matches it although every str is a FieldT."""
    return cast("Mapping[FieldT, EncodableT]", mapping)


def _flat(info: Mapping[str, Any]) -> Mapping[FieldT, EncodableT]:
    """A hash's fields for HSET: strings as they are, anything else as JSON."""
    return _fields({k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()})


def _now_ms() -> int:
    return int(time.time() * 1000)


_warned: set[str] = set()
log = logging.getLogger("taskmesh.store")


def warn_once(message: str) -> None:
    """Log a record of the store that cannot be read (a poisoned shape, a node hash
    with garbage) once per process: it is skipped on every read after."""
    if message not in _warned and len(_warned) < 10_000:
        _warned.add(message)
        log.warning("%s", message)


# Reading replies. The Store's clients never set decode_responses, so Redis replies are
# bytes; redis-py types them `bytes | str` (either setting). These helpers read a reply
# as the text or bytes it is, whichever way the client was made.

def _text(value: str | bytes, errors: str = "strict") -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else value


def _opt_text(value: str | bytes | None) -> str | None:
    """A reply that may be missing (HGET of an absent field) as text; None when it is
    missing or empty."""
    return _text(value) if value else None


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _opt_bytes(value: str | bytes | None) -> bytes | None:
    return None if value is None else _bytes(value)


def stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """An XRANGE / XREVRANGE / XCLAIM reply (or None: an empty one) as (entry id, fields),
    without the entries deleted since they were delivered (fields None, in XCLAIM)."""
    entries = cast("list[tuple[bytes, dict[bytes, bytes] | None]]", reply or [])
    return [(entry_id, fields) for entry_id, fields in entries if fields is not None]


def parse_entries(reply: Any) -> list[Leased]:
    """An XREADGROUP / XCLAIM reply as Leased entries: as redis-py parses it (fields a
    dict) or as Redis sends it (round_trip: under RESP3 a map of streams, each entry's
    fields a flat list of names and values)."""
    out = []
    for stream, entries in (reply.items() if isinstance(reply, dict) else reply or []):
        queue = stream.decode()
        for entry_id, fields in entries:
            if type(fields) is list:
                pairs = iter(fields)
                fields = dict(zip(pairs, pairs, strict=True))
            if fields is not None:
                out.append(Leased(queue, entry_id, fields))
    return out


def scan_hashes(client: redis.Redis, match: str, skip_suffix: bytes | tuple[bytes, ...] | None = None
                ) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """(key, fields) of every hash whose key matches `match` (SCAN, then one pipelined
    HGETALL each), leaving out keys ending in `skip_suffix` (or any of them: other types
    under the same pattern). For listings (the CLI, `taskmesh list`), not hot paths."""
    keys = [k for k in client.scan_iter(match=match, count=1000)
            if skip_suffix is None or not k.endswith(skip_suffix)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    replies = cast("list[dict[bytes, bytes]]", pipe.execute())
    return list(zip(keys, replies, strict=True))
