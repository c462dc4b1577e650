"""The wire records: everything that crosses Redis or a process boundary, each a frozen
record with its codec in this one module, the only code that knows their short keys and
field names and checks their values.

| record       | encoded as                           | travels                                              |
|--------------|--------------------------------------|------------------------------------------------------|
| `TaskSpec`   | msgpack map (entry field `spec`),    | a task's queue entry: submitter -> agent -> worker;  |
|              | its arguments apart (field `args`)   | kept with its shared-memory results as lineage       |
|              |                                      | (objects/plane.py)                                   |
| `ActorSpec`  | msgpack map (entry field `spec`)     | an actor's creation entry and its hash               |
|              |                                      | (`tm:actor:{id}` field `spec`): creator -> agent ->  |
|              |                                      | worker; actor_down.lua queues it again for a restart |
| `CallSpec`   | as a TaskSpec (`spec` and `args`)    | an actor method call in `tm:actor:{id}:calls`:       |
|              |                                      | caller -> the actor's worker                         |
| `QueueEntry` | stream entry fields                  | `tm:q:*` (tasks, actor creations) and the call       |
|              |                                      | streams; as a msgpack map, the lineage of            |
|              |                                      | shared-memory results                                |
| `Notice`     | msgpack list (done-stream field `n`) | `tm:{owner}:done`: whoever completes a task          |
|              |                                      | (complete.lua) -> its owner's completion listener    |
| messages     | msgpack list, tag first              | the socket pair between a node agent and each of its |
|              |                                      | workers (below)                                      |

The keys and field names are short and fixed: the Lua scripts (store/lua/) pass entries
through, and re-queue the fields they know by name (actor_down.lua, reconstruct.lua),
so a record changes only with its scripts. Decoding checks every field a reader relies
on and raises WireError naming the field: an entry written by hand or by another program
is then set aside in `tm:deadletter` with the reason (_core/failure.py) instead of
crashing the worker or actor that reads it. A spec is decoded once per entry and process;
a task's or call's spec leaves its arguments out, so that its bytes are the same for
every call of one function (or method) with the same options, and a reader decodes and
checks them once (TaskSpec.from_wire's cache), then per call only the entry's fields.

Agent <-> worker protocol: one msgpack list per message on the socket pair, its tag
first; `decode_message` reads either direction (tags arrive as bytes).

| message         | wire                                 | meaning                                           |
|-----------------|--------------------------------------|---------------------------------------------------|
| agent -> worker |                                      |                                                   |
| `Run`           | `[T, entry_id, fields(, grant)]`     | run this leased entry (a task, or an actor's      |
|                 |                                      | creation); on a GPU node `fields` also holds      |
|                 |                                      | `gpus`, the GPU ids assigned to it. With `grant`  |
|                 |                                      | (a shape queue's name) the worker then leases     |
|                 |                                      | from that queue itself, completing what it runs,  |
|                 |                                      | holding the task's resources until GrantEnded     |
| `Cancel`        | `[C, [task_id, ...], force(, recur)]`| these tasks were cancelled: skip them when leased |
|                 |                                      | under a grant; interrupt (force: exit) if running;|
|                 |                                      | an actor skips such calls, cancels an async one   |
| `JobsEnded`     | `[J, [job_id, ...]]`                 | these jobs ended: skip their tasks when leased;   |
|                 |                                      | exit if running one it leased (detached apart)    |
| `EndGrant`      | `[EG]`                               | stop leasing after the running task (a drain, or  |
|                 |                                      | a task waiting for its CPU back: Reacquire)       |
| `Resume`        | `[RS]`                               | the CPU is the task's again (Reacquire): run it   |
| worker -> agent |                                      |                                                   |
| `Ready`         | `[R, pid, owner tag]`                | started, ready for tasks (the agent releases the  |
|                 |                                      | tag's holds when the worker exits)                |
| `Done`          | `[D, entry_id, owner, notice, objs`  | the task ended: objs = `[[object_id, kind, data], |
|                 | `(, flags)]`                         | ...]` (+ its lineage pseudo-object); the agent    |
|                 |                                      | stores them with the notice and acks the entry.   |
|                 |                                      | flags 1: kept by the owner; 2: the worker stored  |
|                 |                                      | and acked them itself (a grant's first task)      |
| `Requeue`       | `[Q, entry_id]`                      | the task raised an exception its retry_exceptions |
|                 |                                      | names: queue it again, attempt + 1                |
| `Retiring`      | `[X]`                                | the worker exits after this task (max_calls):     |
|                 |                                      | hand it no other                                  |
| `Blocked`       | `[B]`                                | the task waits in `get`: its CPU is lent out      |
| `Unblocked`     | `[U]`                                | ... and is taken back                             |
| `Reacquire`     | `[RQ]`                               | its arguments arrived: it waits for its CPU back  |
| `ActorAlive`    | `[AR, entry_id]`                     | the actor is created: this worker is its process  |
|                 |                                      | now; ack the entry, keep its held resources       |
| `ActorFailed`   | `[AF, entry_id]`                     | the creation failed (the actor is dead) or was    |
|                 |                                      | cancelled: ack it, the worker runs tasks again    |
| `ActorExiting`  | `[AX]`                               | the actor exits on purpose: no restart            |
| `GrantEnded`    | `[GE]`                               | it leases no more (its queue was empty, EndGrant, |
|                 |                                      | max_calls): the grant's resources come back       |
| `Adopt`         | `[AD, entry_id, fields]`             | it leased an actor's creation under its grant: it |
|                 |                                      | runs it as if sent by Run; the grant's resources  |
|                 |                                      | become the creation's (the grant ends)            |
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from taskmesh._base.ids import INDEX_LEN
from taskmesh._base.queues import parse_shape

# Method names every actor answers to (Ray's), besides the user's methods.
TERMINATE = "__ray_terminate__"
READY = "__ray_ready__"

# Values up to this size travel inside the completion notice, saving a fetch in `get`.
NOTICE_INLINE_LIMIT = 64 * 1024

# The most return objects a task or call may have: an object id holds its return index in
# INDEX_LEN hex digits (_base/ids.py).
MAX_RETURNS = 16 ** INDEX_LEN - 1

# Queue-entry kinds: a task (no `kind` field) or an actor's creation.
TASK = "task"
ACTOR = "actor"

# How a generator call returns its items (TaskSpec / CallSpec `gen`, see _core/generators.py).
STREAMING_MODE = "s"
DYNAMIC_MODE = "d"


class WireError(ValueError):
    """A record that does not decode; the message names the field."""


_HEX_ID = re.compile(r"[0-9a-f]+\Z")
_MISSING: Any = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str, key: str, value: Any, expected: str) -> WireError:
    return WireError(f"{where} field {key!r} must be {expected}, got {_show(value)}")


def _map(data: Any, where: str) -> dict:
    """A msgpack map (str keys) out of `data`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{where} must be msgpack bytes, got {_show(data)}")
    try:
        out = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise WireError(f"{where} is unreadable msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(out, dict):
        raise WireError(f"{where} is not a msgpack map")
    return out


def _required(m: dict, keys: Sequence[str], where: str) -> list[Any]:
    try:
        return [m[k] for k in keys]
    except KeyError as e:
        raise WireError(f"{where}: missing field {e.args[0]!r}") from None


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_amounts(value: Any) -> bool:
    """A resource map: name -> finite number >= 0."""
    return isinstance(value, dict) and all(
        type(k) is str and type(v) in (int, float) and math.isfinite(v) and v >= 0
        for k, v in value.items())


def _is_pg(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and type(value[0]) is str
            and _is_int(value[1]) and type(value[2]) is bool)


def _check_call(where: str, fn: Any, args: Any, owner: Any, job: Any, fn_key: str = "fn") -> None:
    """The fields every spec has: what to run, its arguments, its owner and job."""
    if type(fn) is not str:
        raise _bad(where, fn_key, fn, "a str")
    if type(args) is not bytes:
        raise _bad(where, "args", args, "serialized arguments (bytes)")
    if type(owner) is not str:
        raise _bad(where, "owner", owner, "an owner tag (str)")
    if job is not None and type(job) is not str:
        raise _bad(where, "job", job, "a job id (str) or nil")


def _check_returns(where: str, m: dict, nret: Any) -> tuple[str | None, int]:
    """num_returns and the generator fields of a task or call: (gen, bp)."""
    if not (_is_int(nret) and 0 <= nret <= MAX_RETURNS):
        raise _bad(where, "nret", nret, f"an integer from 0 to {MAX_RETURNS}")
    gen = m.get("gen")
    if gen is not None and gen not in (STREAMING_MODE, DYNAMIC_MODE):
        raise _bad(where, "gen", gen, f"{STREAMING_MODE!r} or {DYNAMIC_MODE!r}")
    if gen is not None and nret != 1:  # its one return is its generator ref
        raise _bad(where, "nret", nret, "1 for a generator call")
    bp = m.get("bp", 0)
    if not (_is_int(bp) and bp >= 0):
        raise _bad(where, "bp", bp, "an integer >= 0")
    return gen, bp


def _check_placed(where: str, m: dict) -> tuple[str | None, list | None, dict | None]:
    """The namespace, placement group and runtime_env of a task or actor: (ns, pg, renv)."""
    ns, pg, renv = m.get("ns"), m.get("pg"), m.get("renv")
    if ns is not None and type(ns) is not str:
        raise _bad(where, "ns", ns, "a namespace (str) or nil")
    if pg is not None and not _is_pg(pg):
        raise _bad(where, "pg", pg, "[pg id, bundle index, capture child tasks]")
    if renv is not None and not isinstance(renv, dict):
        raise _bad(where, "renv", renv, "a runtime_env map")
    return ns, pg, renv


# ---- specs ------------------------------------------------------------------------------
# The records decoded once per task (TaskSpec, QueueEntry) are plain slotted dataclasses:
# nothing changes them after decoding (dataclasses.replace makes a changed copy), but a
# frozen one costs an object.__setattr__ per field to build, a third of a task entry's
# decoding.

@dataclass(slots=True)
class TaskSpec:
    """What a task runs and how: the `spec` field of its queue entry (Ray's TaskSpec)."""

    fn_id: str  # fn: the exported function (tm:fn:{fn_id})
    # ([args], {kwargs}) serialized (objects.serialize); refs inside stay refs. Not in the
    # spec's bytes: the queue entry's own field `args` (QueueEntry)
    args: bytes
    num_returns: int  # nret: return objects task_id+0001...; a generator call has 1 (its generator ref)
    owner: str  # owner: tag of the process that owns the task and its objects
    job_id: str | None  # job: the job it belongs to (the field is required; nil only outside a job)
    namespace: str | None = None  # ns: where the actors it creates are named
    max_retries: int = 0  # maxr: attempts after the first when its worker or node dies; -1: forever
    # rexc: retry when it raises too: True (any exception) or the cloudpickled tuple of types
    retry_exceptions: bool | bytes = False
    # maxc: its worker exits after this many runs of the function (0, nil: never)
    max_calls: int | None = None
    # res: its demand (a rebuild of its results queues it by this shape)
    resources: dict[str, float] = field(default_factory=dict)
    generator: str | None = None  # gen: "s" streaming or "d" dynamic generator call; absent otherwise
    # bp: a streaming call pauses while this many items are not taken (absent, 0: never)
    backpressure: int = 0
    pg: list | None = None  # pg: [pg id, bundle index, capture child tasks] of a placement-group task
    runtime_env: dict | None = None  # renv: its resolved runtime_env; absent when empty
    # det: 1 = work of a detached actor (submitted by its process, or by a task of that
    # work): it outlives its job (_core/lifecycle.dropped_with_job); absent otherwise
    detached: bool = False

    def to_wire(self) -> bytes:
        """The spec without its arguments, which travel in the entry's `args` field: the
        same bytes for every call of a function with the same options, so that a reader
        decodes and checks them once (from_wire's cache)."""
        m: dict[str, Any] = {
            "fn": self.fn_id, "nret": self.num_returns, "owner": self.owner,
            "job": self.job_id, "ns": self.namespace, "maxr": self.max_retries,
            "rexc": self.retry_exceptions, "maxc": self.max_calls, "res": self.resources}
        if self.generator:
            m["gen"] = self.generator
        if self.backpressure:
            m["bp"] = self.backpressure
        if self.pg:
            m["pg"] = self.pg
        if self.runtime_env:
            m["renv"] = self.runtime_env
        if self.detached:
            m["det"] = 1
        return msgpack.packb(m, use_bin_type=True)

    @classmethod
    def from_wire(cls, data: bytes, args: Any) -> TaskSpec:
        """The spec of `data` (to_wire's bytes) with its arguments `args` (serialized).
        Decoded specs are kept by their bytes: those of the next call of the same
        function come from the cache, sharing its resources, pg and runtime_env (never
        changed once decoded)."""
        fields = _decoded(_TASK_SPECS, data, cls._decode)
        if type(args) is not bytes:
            raise _bad("entry", "args", args, "serialized arguments (bytes)")
        fn, nret, owner, job, ns, maxr, rexc, maxc, res, gen, bp, pg, renv, det = fields
        return cls(fn, args, nret, owner, job, ns, maxr, rexc, maxc, res, gen, bp, pg, renv, det)

    @staticmethod
    def _decode(data: bytes) -> tuple:
        where = "task spec"
        m = _map(data, where)
        fn, nret, owner, job = _required(m, ("fn", "nret", "owner", "job"), where)
        _check_call(where, fn, b"", owner, job)
        gen, bp = _check_returns(where, m, nret)
        ns, pg, renv = _check_placed(where, m)
        maxr = m.get("maxr", 0)
        if not (_is_int(maxr) and maxr >= -1):
            raise _bad(where, "maxr", maxr, "an integer >= -1 (-1: retry forever)")
        rexc = m.get("rexc", False)
        if type(rexc) not in (bool, bytes):
            raise _bad(where, "rexc", rexc, "a bool or pickled exception types (bytes)")
        maxc = m.get("maxc")
        if maxc is not None and not (_is_int(maxc) and maxc >= 0):
            raise _bad(where, "maxc", maxc, "an integer >= 0 or nil")
        res = m.get("res")
        if res is None:
            res = {}
        elif not _is_amounts(res):
            raise _bad(where, "res", res, "a map of resource name -> amount >= 0")
        det = m.get("det", 0)
        if det not in (0, 1):
            raise _bad(where, "det", det, "1 (work of a detached actor) or absent")
        return fn, nret, owner, job, ns, maxr, rexc, maxc, res, gen, bp, pg, renv, det == 1

    def can_retry(self, attempt: int) -> bool:
        """Whether attempt number `attempt` (0: the first run) may be followed by another:
        the attempts rule of max_retries, the same for a lost worker, a lost node, a
        retried exception and a rebuilt object."""
        return self.max_retries == -1 or attempt < self.max_retries


# TaskSpec.from_wire's and CallSpec.from_wire's decoded specs by their bytes (cleared
# when full).
_TASK_SPECS: dict[bytes, tuple] = {}
_CALL_SPECS: dict[bytes, tuple] = {}
_TASK_SPECS_KEPT = 1024


def _decoded(cache: dict[bytes, tuple], data: Any, decode: Callable[[Any], tuple]) -> tuple:
    """The fields `decode` makes of a spec's bytes, kept in `cache` by those bytes."""
    fields = cache.get(data) if type(data) is bytes else None
    if fields is None:
        fields = decode(data)
        if type(data) is bytes:
            if len(cache) >= _TASK_SPECS_KEPT:
                cache.clear()
            cache[data] = fields
    return fields


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """How to create an actor: the `spec` field of its creation entry, also kept in the
    actor's hash for its restarts (Ray's ActorCreationTaskSpec)."""

    fn_id: str  # fn: the exported class (tm:fn:{fn_id})
    args: bytes  # args: the constructor's ([args], {kwargs}), serialized
    owner: str  # owner: tag of the creating process
    job_id: str | None  # job: the creator's job (the field is required)
    class_name: str  # cls: the class's name, for errors and events
    namespace: str | None = None  # ns: the namespace the actor's own actors are named in
    # held: resources it holds while alive (its placement demand is the queue's)
    held: dict[str, float] = field(default_factory=dict)
    max_concurrency: int = 1  # maxc: calls that may run at once (threaded or async actors), >= 1
    is_async: bool = False  # async: it has `async def` methods: calls run on one event loop
    max_task_retries: int = 0  # mtr: times a call in flight when it died runs again; -1: forever
    concurrency_groups: dict[str, int] = field(default_factory=dict)  # groups: group name -> max concurrency
    pg: list | None = None  # pg: [pg id, bundle index, capture child tasks] when placed in a group
    runtime_env: dict | None = None  # renv: its resolved runtime_env; absent when empty
    events: bool = True  # ev: 0 = enable_task_events=False (absent: events on)
    detached: bool = False  # det: 1 = lifetime="detached": the tasks it submits outlive its job

    def to_wire(self) -> bytes:
        m: dict[str, Any] = {
            "fn": self.fn_id, "args": self.args, "owner": self.owner, "job": self.job_id,
            "ns": self.namespace, "held": self.held, "maxc": self.max_concurrency,
            "async": self.is_async, "cls": self.class_name, "mtr": self.max_task_retries,
            "groups": self.concurrency_groups}
        if self.pg:
            m["pg"] = self.pg
        if self.runtime_env:
            m["renv"] = self.runtime_env
        if not self.events:
            m["ev"] = 0
        if self.detached:
            m["det"] = 1
        return msgpack.packb(m, use_bin_type=True)

    @classmethod
    def from_wire(cls, data: bytes) -> ActorSpec:
        where = "actor spec"
        m = _map(data, where)
        fn, args, owner, job, class_name = _required(m, ("fn", "args", "owner", "job", "cls"), where)
        _check_call(where, fn, args, owner, job)
        if type(class_name) is not str:
            raise _bad(where, "cls", class_name, "a class name (str)")
        ns, pg, renv = _check_placed(where, m)
        held = m.get("held") or {}
        if not _is_amounts(held):
            raise _bad(where, "held", held, "a map of resource name -> amount >= 0")
        maxc = m.get("maxc") or 1
        if not (_is_int(maxc) and maxc >= 1):
            raise _bad(where, "maxc", maxc, "an integer >= 1")
        is_async = m.get("async", False)
        if type(is_async) is not bool:
            raise _bad(where, "async", is_async, "a bool")
        mtr = m.get("mtr", 0)
        if not (_is_int(mtr) and mtr >= -1):
            raise _bad(where, "mtr", mtr, "an integer >= -1 (-1: retry forever)")
        groups = m.get("groups") or {}
        if not (isinstance(groups, dict)
                and all(type(k) is str and _is_int(v) and v >= 1 for k, v in groups.items())):
            raise _bad(where, "groups", groups, "a map of group name -> max concurrency >= 1")
        det = m.get("det", 0)
        if det not in (0, 1):
            raise _bad(where, "det", det, "1 (a detached actor) or absent")
        return cls(fn, args, owner, job, class_name, ns, held, maxc, is_async, mtr, groups, pg, renv,
                   m.get("ev", 1) not in (0, "0"), det == 1)


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One actor method call: the `spec` field of its entry in the actor's call stream."""

    method: str  # m: the method's name (TERMINATE / READY: the built-in ones)
    # ([args], {kwargs}) serialized; see `decode_args`. The entry's field `args`, as a task's
    args: bytes
    num_returns: int  # nret: return objects task_id+0001...; a generator call has 1
    owner: str  # owner: tag of the calling process
    job_id: str | None  # job: the caller's job (the field is required)
    concurrency_group: str | None = None  # cg: the group the call runs in (nil: the default one)
    generator: str | None = None  # gen: "s" streaming or "d" dynamic generator call; absent otherwise
    backpressure: int = 0  # bp: a streaming call pauses while this many items are not taken
    # mtr: times the call runs again (when it raised an exception its rexc names, or its
    # actor died running it); absent: the actor's max_task_retries. -1: no limit
    max_task_retries: int | None = None
    # rexc: retry when it raises: True (any exception) or the cloudpickled tuple of types
    retry_exceptions: bool | bytes = False

    def to_wire(self) -> bytes:
        """The call without its arguments (the entry's `args` field), as TaskSpec's."""
        m: dict[str, Any] = {
            "m": self.method, "nret": self.num_returns, "owner": self.owner,
            "job": self.job_id, "cg": self.concurrency_group}
        if self.generator:
            m["gen"] = self.generator
        if self.backpressure:
            m["bp"] = self.backpressure
        if self.max_task_retries is not None:
            m["mtr"] = self.max_task_retries
        if self.retry_exceptions:
            m["rexc"] = self.retry_exceptions
        return msgpack.packb(m, use_bin_type=True)

    @classmethod
    def from_wire(cls, data: bytes, args: Any) -> CallSpec:
        """The call of `data` with its arguments `args`; decoded calls are kept by their
        bytes, as TaskSpec.from_wire's."""
        fields = _decoded(_CALL_SPECS, data, cls._decode)
        if type(args) is not bytes:
            raise _bad("call", "args", args, "serialized arguments (bytes)")
        method, nret, owner, job, cg, gen, bp, mtr, rexc = fields
        return cls(method, args, nret, owner, job, cg, gen, bp, mtr, rexc)

    @staticmethod
    def _decode(data: bytes) -> tuple:
        where = "call spec"
        m = _map(data, where)
        method, nret, owner, job = _required(m, ("m", "nret", "owner", "job"), where)
        _check_call(where, method, b"", owner, job, fn_key="m")
        gen, bp = _check_returns(where, m, nret)
        cg = m.get("cg")
        if cg is not None and type(cg) is not str:
            raise _bad(where, "cg", cg, "a concurrency group name (str) or nil")
        mtr = m.get("mtr")
        if mtr is not None and not (_is_int(mtr) and mtr >= -1):
            raise _bad(where, "mtr", mtr, "an integer >= -1 (-1: retry forever) or nil")
        rexc = m.get("rexc", False)
        if type(rexc) not in (bool, bytes):
            raise _bad(where, "rexc", rexc, "a bool or pickled exception types (bytes)")
        return method, nret, owner, job, cg, gen, bp, mtr, rexc

    def decode_args(self, deserialize: Callable[[bytes], Any]) -> tuple[list, dict]:
        """The call's (args, kwargs), unpickled in the actor's process by `deserialize`
        (objects.deserialize: refs in them register there). WireError naming `args` when
        they do not unpickle or are not an (args, kwargs) pair: the call is set aside,
        never the actor's end."""
        try:
            value = deserialize(self.args)
        except Exception as e:
            raise WireError(f"call spec field 'args' does not unpickle: {type(e).__name__}: {e}") from e
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and isinstance(value[0], (list, tuple)) and isinstance(value[1], dict)):
            raise WireError(f"call spec field 'args' must hold an (args, kwargs) pair, got "
                            f"{type(value).__name__}")
        args = value[0]
        return (args if type(args) is list else list(args)), value[1]  # resolved in place


Spec = TaskSpec | ActorSpec | CallSpec


# ---- queue entries ----------------------------------------------------------------------

def _text_field(fields: Mapping[bytes, bytes], key: bytes) -> str:
    try:
        return fields[key].decode()
    except KeyError:
        raise WireError(f"missing field {key.decode()!r}") from None
    except (AttributeError, UnicodeDecodeError):
        raise _bad("entry", key.decode(), fields[key], "UTF-8 text") from None


@dataclass(slots=True)
class QueueEntry:
    """The fields of one stream entry: a task or an actor's creation in a queue
    (`tm:q:*`), or a method call in an actor's call stream. Built by the submitter,
    decoded by every reader (agent, worker, monitor) with `from_fields`."""

    task: str  # task: the task id (a creation entry: the actor id), hex
    name: str  # name: what events and errors call it ("f", "Cls.__init__", "Cls.method")
    attempt: int  # attempt: 0, then + 1 per retry (a creation entry: the actor's restarts)
    spec: Spec  # spec: msgpack map: a TaskSpec, an ActorSpec (kind actor) or a CallSpec (call streams)
    # (a task's or a call's: + field args, its serialized arguments, kept out of the spec's
    # map: TaskSpec.to_wire)
    kind: str = TASK  # kind: "actor" for an actor's creation; absent for a task or a call
    shape: str | None = None  # shape: the demand, in a node or bundle queue (whose name says nothing of it)
    # soft: 1 = the node is a preference: back to its shape queue when the node cannot start it soon or dies
    soft: bool = False
    events: bool = True  # ev: 0 = enable_task_events=False: the task records no events
    rebuild: bool = False  # rebuild: 1 = a run that makes lost results again (lineage, objects/plane.py)
    # The spec's bytes as they came (or as packed once): a re-queued entry sends the same.
    spec_wire: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.spec_wire:
            object.__setattr__(self, "spec_wire", self.spec.to_wire())

    @property
    def creates_actor(self) -> bool:
        return self.kind == ACTOR

    def to_fields(self) -> dict[str, Any]:
        """The stream entry's fields (str keys; Redis stores the values as text)."""
        out: dict[str, Any] = {"task": self.task, "name": self.name, "attempt": self.attempt}
        if self.kind != TASK:
            out["kind"] = self.kind
        out["spec"] = self.spec_wire
        if not isinstance(self.spec, ActorSpec):  # a task's or a call's (see TaskSpec.to_wire)
            out["args"] = self.spec.args
        if self.shape is not None:
            out["shape"] = self.shape
            out["soft"] = int(self.soft)
        if not self.events:
            out["ev"] = 0
        if self.rebuild:
            out["rebuild"] = "1"
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes], *, actor_call: bool = False,
                    pinned: bool = False) -> QueueEntry:
        """Decode a stream entry (a queue's, or with `actor_call` a call stream's); WireError
        names the first field that is missing or wrong. An entry of a node or bundle queue
        (`pinned`) must name its demand in `shape`: its queue's name does not."""
        task = _text_field(fields, b"task")
        if not _HEX_ID.match(task):
            raise _bad("entry", "task", task, "a hex id")
        name = _text_field(fields, b"name")
        raw_attempt = fields.get(b"attempt", _MISSING)
        if raw_attempt is _MISSING:
            raise WireError("missing field 'attempt'")
        if not (isinstance(raw_attempt, bytes) and raw_attempt.isdigit()):
            raise _bad("entry", "attempt", raw_attempt, "an integer >= 0")
        spec_wire = fields.get(b"spec", _MISSING)
        if spec_wire is _MISSING:
            raise WireError("missing field 'spec'")
        kind = fields.get(b"kind", b"task")
        if actor_call:
            if kind != b"task":
                raise _bad("call", "kind", kind, "absent")
            spec: Spec = CallSpec.from_wire(spec_wire, fields.get(b"args"))
        elif kind == b"task":
            spec = TaskSpec.from_wire(spec_wire, fields.get(b"args"))
        elif kind == b"actor":
            spec = ActorSpec.from_wire(spec_wire)
        else:
            raise _bad("entry", "kind", kind, "'actor' or absent")
        raw_shape, shape = fields.get(b"shape"), None
        if raw_shape is None and pinned:
            raise WireError("missing field 'shape' (the demand of a node or bundle queue's entry)")
        if raw_shape is not None:
            try:
                shape = raw_shape.decode()
                parse_shape(shape)
            except (ValueError, AttributeError):
                raise _bad("entry", "shape", raw_shape, "a resource shape (CPU=1,...)") from None
        soft = fields.get(b"soft", b"0")
        if soft not in (b"0", b"1"):
            raise _bad("entry", "soft", soft, "0 or 1")
        return cls(task, name, int(raw_attempt), spec, kind.decode(), shape, soft == b"1",
                   fields.get(b"ev") != b"0", fields.get(b"rebuild") == b"1", spec_wire)

    def with_attempt(self, attempt: int) -> QueueEntry:
        return dataclasses.replace(self, attempt=attempt)

    def routed(self, shape: str | None, soft: bool) -> QueueEntry:
        """The entry for a node or bundle queue (`shape` None: for its shape queue, as is)."""
        return self if shape is None else dataclasses.replace(self, shape=shape, soft=soft)

    def fence(self) -> bytes:
        """Data of the fence pseudo-object that names the attempt of a completion
        ("<task_id> <attempt>", see complete.lua)."""
        return f"{self.task} {self.attempt}".encode()

    # A shared-memory result keeps its task's entry (task, name, attempt, spec, args) as a
    # msgpack map in its hash (field `lineage`); a lost one is made again from it.

    def to_lineage(self) -> bytes:
        return msgpack.packb({"task": self.task, "name": self.name, "attempt": self.attempt,
                              "spec": self.spec_wire, "args": self.spec.args}, use_bin_type=True)

    @classmethod
    def from_lineage(cls, data: bytes) -> QueueEntry:
        m = _map(data, "lineage")
        task, name, attempt, spec_wire, args = _required(m, ("task", "name", "attempt", "spec", "args"),
                                                         "lineage")
        if not (type(task) is str and _HEX_ID.match(task)):
            raise _bad("lineage", "task", task, "a hex id")
        if type(name) is not str:
            raise _bad("lineage", "name", name, "a str")
        if not (_is_int(attempt) and attempt >= 0):
            raise _bad("lineage", "attempt", attempt, "an integer >= 0")
        return cls(task, name, attempt, TaskSpec.from_wire(spec_wire, args), spec_wire=spec_wire)


# ---- completion notices -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Notice:
    """A task's completion (or a streaming generator's item), for its owner's done
    stream: the owner learns its results without asking Redis for small ones."""

    task_id: str  # 0: the task
    objects: list  # 1: [[object id, kind, data or nil when larger than NOTICE_INLINE_LIMIT], ...]
    item: bool = False  # 2 (present, flag 1): one item of a streaming generator, not the task's end
    # 2 (present, flag 2): the results are in this notice only, not stored in Redis: the
    # owner keeps them (and stores one when its ref leaves the process, Runtime.shared).
    kept: bool = False

    def to_wire(self) -> bytes:
        return encode_notice(self.task_id, self.objects, item=self.item, kept=self.kept)

    @classmethod
    def from_wire(cls, data: bytes) -> Notice:
        try:
            value = msgpack.unpackb(data, raw=False)
        except Exception as e:
            raise WireError(f"notice is unreadable msgpack: {type(e).__name__}: {e}") from None
        if not (isinstance(value, list) and len(value) in (2, 3) and type(value[0]) is str
                and isinstance(value[1], list) and (len(value) == 2 or value[2] in (1, 2))):
            raise WireError(f"notice must be [task id, objects(, 1 | 2)], got {_show(value)}")
        flags = value[2] if len(value) == 3 else 0
        return cls(value[0], value[1], flags == 1, flags == 2)


def encode_notice(task_id: str, objs: Sequence[Sequence[Any]], *, item: bool = False,
                  kept: bool = False) -> bytes:
    """A completion notice (see Notice): values over NOTICE_INLINE_LIMIT are left out."""
    notice: list[Any] = [task_id, [[oid, kind, data if data is None or len(data) <= NOTICE_INLINE_LIMIT
                                    else None] for oid, kind, data in objs]]
    if item or kept:
        notice.append(1 if item else 2)
    return msgpack.packb(notice, use_bin_type=True)


decode_notice = Notice.from_wire


# ---- node hash fields -------------------------------------------------------------------
# A node agent writes its hash (store/keys.py); drivers, the CLI and other agents read
# these fields of it. A field that does not decode makes that node unusable to the
# reader (flagged or skipped with a warning), never the reader's failure.

def node_resources(raw: bytes | str | None, key: str) -> dict[str, float]:
    """`resources_total` / `resources_available`: a JSON map of resource -> amount >= 0
    (absent or empty: no resources)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        value = _MISSING
    if not _is_amounts(value):
        raise _bad("node", key, raw, "a JSON map of resource name -> amount >= 0")
    return {k: float(v) for k, v in value.items()}


def node_port(raw: bytes | str | None) -> int:
    """`obj_port`: the node's object-transfer port."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if not (text is not None and text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise _bad("node", "obj_port", raw, "a TCP port (1-65535)")
    return int(text)


# ---- other stream entries, one field each -----------------------------------------------

def notices_of(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """The notices of a done-stream entry: complete.lua writes one per field ("1",
    "2", ...), in order."""
    return list(fields.values())


def events_entry(batch: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """A `tm:events` entry: one batch of task events (_core/events.py)."""
    return {"e": msgpack.packb(list(batch), use_bin_type=True)}


def events_of(fields: Mapping[bytes, bytes]) -> list[dict[str, Any]]:
    raw = fields.get(b"e")
    if raw is None:
        raise WireError("missing field 'e'")
    batch = _unpack(raw, "events entry field 'e'")
    if not isinstance(batch, list):
        raise WireError("events entry field 'e' is not a list")
    return batch


# Task event states, as Ray's state API names them (_core/events.py re-exports them).
EVENT_PENDING, EVENT_RUNNING, EVENT_FINISHED, EVENT_FAILED = (
    "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED")
# The counters of `tm:task_counts`, by function name (field "<counter> <name>").
TASK_COUNTERS = ("submitted", "retried", "started", "finished", "failed")


def task_counts(batch: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What a batch of task events adds to `tm:task_counts`: a PENDING event of attempt 0
    is a submission, of a later attempt a retry; RUNNING a start; FINISHED, FAILED an end."""
    out: dict[str, int] = {}
    for ev in batch:
        state = ev.get("state")
        if state == EVENT_PENDING:
            counter = "retried" if ev.get("attempt") else "submitted"
        elif state in (EVENT_RUNNING, EVENT_FINISHED, EVENT_FAILED):
            counter = "started" if state == EVENT_RUNNING else state.lower()
        else:
            continue
        field_ = f"{counter} {ev.get('name') or '?'}"
        out[field_] = out.get(field_, 0) + 1
    return out


def task_count_of(field_: str) -> tuple[str, str]:
    """(counter, function name) of a `tm:task_counts` field."""
    counter, _, name = field_.partition(" ")
    return counter, name


# A progress bar of a task or actor (experimental.tqdm_ray) reaches the driver as one
# line of the worker's output: this marker, then its state as JSON {uuid, desc, total,
# x, pos, unit, closed}. The driver renders it with tqdm instead of printing the line.
PROGRESS_MARKER = "__taskmesh_tqdm__"


def progress_line(state: dict[str, Any]) -> str:
    return PROGRESS_MARKER + json.dumps(state, separators=(",", ":"))


def progress_of(line: str) -> dict[str, Any] | None:
    """The state a progress line carries; None for any other line (or a broken one)."""
    if not line.startswith(PROGRESS_MARKER):
        return None
    try:
        state = json.loads(line[len(PROGRESS_MARKER):])
    except ValueError:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("uuid"), str) else None


def log_entry(payload: bytes) -> dict[str, bytes]:
    """A `tm:logs:{job}` entry: one batch of worker output, msgpack {pid, node, actor, lines}."""
    return {"l": payload}


def log_of(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    raw = fields.get(b"l")
    if raw is None:
        raise WireError("missing field 'l'")
    batch = _unpack(raw, "log entry field 'l'")
    if not isinstance(batch, dict):
        raise WireError("log entry field 'l' is not a map")
    return batch


def _unpack(raw: bytes, where: str) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise WireError(f"{where} is unreadable msgpack: {type(e).__name__}: {e}") from None


# ---- agent <-> worker messages (see the module docstring) -------------------------------

@dataclass(frozen=True, slots=True)
class Run:
    """agent -> worker: run this leased entry."""

    TAG: ClassVar[str] = "T"
    entry_id: bytes  # 1: its stream entry id (named again in the reply)
    fields: Mapping[bytes, bytes]  # 2: its fields as leased (the worker decodes them: QueueEntry)
    gpus: tuple[int, ...] | None = None  # 2 (added field gpus, "0,1"): GPU ids assigned to it, on a GPU node
    grant: str | None = None  # 3 (optional): the shape queue the worker may go on leasing from

    def to_wire(self) -> list:
        fields = self.fields
        if self.gpus is not None:
            fields = {**fields, b"gpus": ",".join(map(str, self.gpus)).encode()}
        out = [self.TAG, self.entry_id, fields]
        if self.grant is not None:
            out.append(self.grant)
        return out

    @classmethod
    def from_wire(cls, msg: list) -> Run:
        entry_id, fields = msg[1], msg[2]
        raw = fields.pop(b"gpus", None)  # a dict just unpacked: ours to change
        try:
            gpus = None if raw is None else tuple(int(g) for g in raw.decode().split(",") if g)
        except ValueError:
            raise _bad("run", "gpus", raw, "GPU ids (0,1,...)") from None
        grant = msg[3] if len(msg) > 3 else None
        if grant is not None and not isinstance(grant, bytes):
            raise _bad("run", "grant", grant, "a queue name")
        return cls(entry_id, fields, gpus, None if grant is None else grant.decode())


@dataclass(frozen=True, slots=True)
class Cancel:
    """agent -> worker: these tasks were cancelled (taskmesh.cancel)."""

    TAG: ClassVar[str] = "C"
    task_ids: Sequence[str]  # 1
    force: bool = False  # 2: kill rather than interrupt a running one
    recursive: bool = True  # 3: cancel the tasks a running one submitted too

    def to_wire(self) -> list:
        return [self.TAG, list(self.task_ids), self.force, self.recursive]

    @classmethod
    def from_wire(cls, msg: list) -> Cancel:
        ids, force = msg[1], msg[2]
        if not isinstance(ids, list) or not all(isinstance(i, bytes) for i in ids):
            raise _bad("cancel", "task_ids", ids, "a list of task ids")
        return cls(tuple(i.decode() for i in ids), bool(force), bool(msg[3]) if len(msg) > 3 else True)


@dataclass(frozen=True, slots=True)
class JobsEnded:
    """agent -> worker: these jobs ended: their tasks it leases later are only acked, and
    the one it leased and runs ends with the process (as a forced cancel), unless it is a
    detached actor's work (_core/lifecycle.dropped_with_job)."""

    TAG: ClassVar[str] = "J"
    job_ids: Sequence[str]  # 1

    def to_wire(self) -> list:
        return [self.TAG, list(self.job_ids)]

    @classmethod
    def from_wire(cls, msg: list) -> JobsEnded:
        ids = msg[1]
        if not isinstance(ids, list) or not all(isinstance(i, bytes) for i in ids):
            raise _bad("jobs ended", "job_ids", ids, "a list of job ids")
        return cls(tuple(i.decode() for i in ids))


@dataclass(frozen=True, slots=True)
class Adopt:
    """worker -> agent: an actor's creation leased under the worker's grant; it runs it."""

    TAG: ClassVar[str] = "AD"
    entry_id: bytes  # 1
    fields: Mapping[bytes, bytes]  # 2: as leased

    def to_wire(self) -> list:
        return [self.TAG, self.entry_id, dict(self.fields)]

    @classmethod
    def from_wire(cls, msg: list) -> Adopt:
        return cls(msg[1], msg[2])


@dataclass(frozen=True, slots=True)
class Ready:
    """worker -> agent: started and ready for tasks."""

    TAG: ClassVar[str] = "R"
    pid: int  # 1
    tag: str | None  # 2: its runtime's owner tag (the agent releases its holds when it exits)

    def to_wire(self) -> list:
        return [self.TAG, self.pid, self.tag]

    @classmethod
    def from_wire(cls, msg: list) -> Ready:
        tag = msg[2] if len(msg) > 2 else None
        return cls(msg[1], tag.decode() if isinstance(tag, bytes) else tag)


@dataclass(frozen=True, slots=True)
class Done:
    """worker -> agent: the task ended; store its results and ack its entry (unless
    the worker did both itself: `stored`)."""

    TAG: ClassVar[str] = "D"
    entry_id: bytes  # 1
    owner: str  # 2: whose done stream gets the notice
    notice: bytes  # 3: the encoded Notice
    objects: Sequence[Sequence[Any]]  # 4: [object id, kind, data] (+ a lineage pseudo-object)
    kept: bool = False  # 5 (present, flag 1): the owner keeps the results (Notice.kept)
    # 5 (present, flag 2): the worker stored the results and acked the entry itself (the
    # first task of a lease grant, in the round trip of its first lease): owner, notice
    # and objects are empty, the agent only takes the task off the worker
    stored: bool = False

    def to_wire(self) -> list:
        msg = [self.TAG, self.entry_id, self.owner, self.notice, list(self.objects)]
        flags = (1 if self.kept else 0) | (2 if self.stored else 0)
        return [*msg, flags] if flags else msg

    @classmethod
    def from_wire(cls, msg: list) -> Done:
        entry_id, owner, notice, objs = msg[1:5]
        flags = msg[5] if len(msg) > 5 else 0
        return cls(entry_id, owner.decode(), notice, tuple((o.decode(), k, d) for o, k, d in objs),
                   bool(flags & 1), bool(flags & 2))


@dataclass(frozen=True, slots=True)
class Requeue:
    """worker -> agent: the task raised an exception its retry_exceptions names."""

    TAG: ClassVar[str] = "Q"
    entry_id: bytes  # 1

    def to_wire(self) -> list:
        return [self.TAG, self.entry_id]

    @classmethod
    def from_wire(cls, msg: list) -> Requeue:
        return cls(msg[1])


@dataclass(frozen=True, slots=True)
class ActorAlive:
    """worker -> agent: the actor of the running creation entry is alive."""

    TAG: ClassVar[str] = "AR"
    entry_id: bytes  # 1

    def to_wire(self) -> list:
        return [self.TAG, self.entry_id]

    @classmethod
    def from_wire(cls, msg: list) -> ActorAlive:
        return cls(msg[1])


@dataclass(frozen=True, slots=True)
class ActorFailed:
    """worker -> agent: the actor's creation failed or was cancelled."""

    TAG: ClassVar[str] = "AF"
    entry_id: bytes  # 1

    def to_wire(self) -> list:
        return [self.TAG, self.entry_id]

    @classmethod
    def from_wire(cls, msg: list) -> ActorFailed:
        return cls(msg[1])


@dataclass(frozen=True, slots=True)
class _Signal:
    """A message with no fields."""

    TAG: ClassVar[str] = ""

    def to_wire(self) -> list:
        return [self.TAG]

    @classmethod
    def from_wire(cls, msg: list) -> Any:
        return cls()


@dataclass(frozen=True, slots=True)
class Retiring(_Signal):
    """worker -> agent: it exits after this task (max_calls)."""

    TAG: ClassVar[str] = "X"


@dataclass(frozen=True, slots=True)
class Blocked(_Signal):
    """worker -> agent: the task waits in `get`; its CPU is lent out meanwhile."""

    TAG: ClassVar[str] = "B"


@dataclass(frozen=True, slots=True)
class Unblocked(_Signal):
    """worker -> agent: the task's wait is over; it takes its CPU back."""

    TAG: ClassVar[str] = "U"


@dataclass(frozen=True, slots=True)
class Reacquire(_Signal):
    """worker -> agent: the task's arguments arrived (its CPU was lent out while it
    waited for them): it runs once the agent gives the CPU back (Resume). As Ray, which
    starts no task before its arguments are there: the node's CPUs are never
    oversubscribed by tasks that waited for arguments."""

    TAG: ClassVar[str] = "RQ"


@dataclass(frozen=True, slots=True)
class Resume(_Signal):
    """agent -> worker: the CPU is the task's again; it runs now."""

    TAG: ClassVar[str] = "RS"


@dataclass(frozen=True, slots=True)
class ActorExiting(_Signal):
    """worker -> agent: the actor exits on purpose (terminate, exit_actor): no restart."""

    TAG: ClassVar[str] = "AX"


@dataclass(frozen=True, slots=True)
class GrantEnded(_Signal):
    """worker -> agent: it leases no more; the grant's resources come back."""

    TAG: ClassVar[str] = "GE"


@dataclass(frozen=True, slots=True)
class EndGrant(_Signal):
    """agent -> worker: lease no more after the running task (the node drains)."""

    TAG: ClassVar[str] = "EG"


Message = (Run | Ready | Done | Requeue | Retiring | Blocked | Unblocked | Reacquire | Resume
           | ActorAlive | ActorFailed | ActorExiting | Cancel | JobsEnded | Adopt | GrantEnded | EndGrant)
_BY_TAG: dict[bytes, Any] = {m.TAG.encode(): m for m in (
    Run, Ready, Done, Requeue, Retiring, Blocked, Unblocked, Reacquire, Resume, ActorAlive,
    ActorFailed, ActorExiting, Cancel, JobsEnded, Adopt, GrantEnded, EndGrant)}


def encode_message(msg: Message) -> bytes:
    return msgpack.packb(msg.to_wire(), use_bin_type=True)


def decode_message(data: bytes) -> Message:
    """A message from the socket pair, whichever direction."""
    try:
        raw = msgpack.unpackb(data, raw=True)
        return _BY_TAG[raw[0]].from_wire(raw)
    except WireError:
        raise
    except Exception as e:
        raise WireError(f"malformed agent/worker message: {type(e).__name__}: {e}") from None


# ---- the running task's context ---------------------------------------------------------

@dataclass(slots=True)
class TaskContext:
    """What the runtime context reports while a task runs in this process."""

    job_id: str | None = None
    task_id: str | None = None
    task_name: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    actor_id: str | None = None
    pg: list | None = None  # [pg id, bundle index, capture child tasks] (PgTarget.to_wire)
    gpu_ids: list[int] = field(default_factory=list)
    function_name: str | None = None  # module.qualname of the running task's function
    restarted: bool = False  # an actor process that was restarted (Ray's was_current_actor_reconstructed)
    actor_name: str | None = None  # a named actor's name ("" for an unnamed actor)
