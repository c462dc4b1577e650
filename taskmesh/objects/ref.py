"""Object refs, ids and serialization.

Values are serialized with cloudpickle (pickle protocol 5) with out-of-band buffers, so
the bytes of a numpy array (or any PickleBuffer) are copied once, straight to where the
object is stored, and come back as views of that memory. A serialized object is either a
plain pickle (no out-of-band buffers) or a frame:

    offset 0   b"TMOBJ\x01\x00\x00"                    magic, version 1
    offset 8   u64 little-endian: header length H
    offset 16  header, msgpack [total_size, pickle_len, [buffer_len, ...]]
    then       the pickle, then each buffer, every part starting on a 64-byte boundary

Small objects (up to TASKMESH_INLINE_LIMIT, see ObjectPlane) are stored inline in Redis as those bytes (kind
"value"); larger ones are written as the same frame into the shared memory of the node
that made them (kind "shm"; Redis then holds only the size and the node, see store/keys.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import os
import pickle
import struct
import threading
import types
from collections import ChainMap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import cloudpickle
import msgpack

from taskmesh._base import ids
from taskmesh.exceptions import RaySystemError

KIND_VALUE = b"value"
KIND_ERROR = b"error"
KIND_SHM = b"shm"

# Arguments larger than this are stored as separate objects (Ray: 100 KiB). Objects larger
# than TASKMESH_INLINE_LIMIT (_base/config.py) live in shared memory rather than in Redis.
INLINE_ARG_LIMIT = 100 * 1024

MAGIC = b"TMOBJ\x01\x00\x00"
_ALIGN = 64

T = TypeVar("T")  # the type of the value an ObjectRef refers to


class RefTracker(Protocol):
    """What the runtime does when refs are created, dropped and passed on."""

    def incref(self, object_id: str) -> None: ...

    def decref(self, object_id: str) -> None: ...

    def escaped(self, object_id: str) -> None: ...

    def shared(self, object_id: str) -> None: ...

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future: ...


class _NoTracker:
    def incref(self, object_id: str) -> None:
        pass

    def decref(self, object_id: str) -> None:
        pass

    def escaped(self, object_id: str) -> None:
        pass

    def shared(self, object_id: str) -> None:
        pass

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future:
        raise RuntimeError("taskmesh is not initialized: call taskmesh.init() first.")


_tracker: RefTracker = _NoTracker()
_tracker_lock = threading.Lock()
_collector = threading.local()


@contextlib.contextmanager
def collecting_refs() -> Iterator[list[str]]:
    """Collect the ids of refs serialized in this block (this thread) instead of
    marking them escaped: the caller makes sure they stay held (by a pending task or
    by the object being stored)."""
    previous = getattr(_collector, "found", None)
    found: list[str] = []
    _collector.found = found
    try:
        yield found
    finally:
        _collector.found = previous


def set_tracker(tracker: RefTracker | None) -> None:
    global _tracker
    with _tracker_lock:
        _tracker = tracker or _NoTracker()


class TaskID(str):
    """A task's id: a string that also answers Ray's `TaskID.hex()`."""

    __slots__ = ()

    def hex(self) -> str:  # Ray's name
        return str(self)


class ObjectRef(Generic[T]):
    """A reference to a value in the cluster; `get` it, pass it to tasks, await it.
    Generic in the value's type (`ObjectRef[int]`, as Ray's `ray.types.ObjectRef`), so
    that `get(f.remote(x))` has `f`'s return type."""

    __slots__ = ("_id", "__weakref__")

    def __init__(self, object_id: str):
        self._id = object_id
        _tracker.incref(object_id)

    def __del__(self) -> None:
        try:
            _tracker.decref(self._id)
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def hex(self) -> str:
        return self._id

    def binary(self) -> bytes:
        return bytes.fromhex(self._id)

    def task_id(self) -> TaskID:
        return TaskID(ids.task_of(self._id))

    def owner_tag(self) -> str:
        return ids.owner_of(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"

    def __reduce__(self) -> tuple:
        _tracker.shared(self._id)
        found = getattr(_collector, "found", None)
        if found is not None:
            found.append(self._id)
        else:
            _tracker.escaped(self._id)
        return (ObjectRef, (self._id,))

    def __copy__(self) -> ObjectRef:
        return self

    def __deepcopy__(self, memo: dict) -> ObjectRef:
        return self

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that resolves to the value (or raises its error)."""
        return _tracker.future_for(self)

    def __await__(self) -> Any:
        return asyncio.wrap_future(self.future()).__await__()


@dataclass(frozen=True, slots=True)
class Serialized:
    """A value pickled with its large buffers kept out of band (not yet copied)."""

    pickled: bytes
    buffers: tuple[memoryview, ...]

    @property
    def size(self) -> int:
        """Bytes the framed object takes (the pickle alone when there are no buffers)."""
        if not self.buffers:
            return len(self.pickled)
        return _layout(self)[0]

    def write_into(self, out: memoryview) -> None:
        """Write the frame into `out` (exactly `size` bytes): each buffer copied once."""
        if not self.buffers:
            _copy(out, self.pickled)
            return
        self._write_frame(out, _layout(self))

    def _write_frame(self, out: memoryview, layout: tuple[int, bytes, list[int]]) -> None:
        _, header, offsets = layout
        out[:8] = MAGIC
        out[8:16] = struct.pack("<Q", len(header))
        out[16:16 + len(header)] = header
        for part, offset in zip((self.pickled, *self.buffers), offsets, strict=True):
            _copy(out[offset:offset + len(part)], part)

    def to_bytes(self) -> bytes:
        if not self.buffers:
            return self.pickled
        layout = _layout(self)
        out = bytearray(layout[0])
        self._write_frame(memoryview(out), layout)
        return bytes(out)


# A buffer this large is copied in chunks by several threads (numpy's copy releases the
# GIL): one thread copies ~6-10 GB/s into touched memory and ~1-2 GB/s into fresh shared
# memory, where page faults dominate and spread over cores.
PARALLEL_COPY_MIN_BYTES = 64 * 1024 * 1024
_CHUNK_MIN_BYTES = 16 * 1024 * 1024
_MAX_COPY_THREADS = 8
_copy_pool: concurrent.futures.ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def copy_threads(nbytes: int) -> int:
    """How many threads copy a buffer of `nbytes`: one per usable core but one (left to
    the rest of the node: agent, workers, Redis), at most _MAX_COPY_THREADS, each with at
    least _CHUNK_MIN_BYTES; 1 below the threshold. So a 2-core machine copies as it
    always did, and a 16-core one with 8 threads."""
    if nbytes < PARALLEL_COPY_MIN_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores - 1, _MAX_COPY_THREADS, nbytes // _CHUNK_MIN_BYTES))


def _copy(out: memoryview, part: Any) -> None:
    """out[:] = part, in parallel chunks when the part is large and cores allow."""
    source = memoryview(part).cast("B")
    if source.nbytes < PARALLEL_COPY_MIN_BYTES:
        out[:] = source
        return
    threads = copy_threads(source.nbytes)
    if threads == 1:
        out[:] = source
        return
    import numpy as np  # only for large copies: keeps numpy off the import path

    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None:
            _copy_pool = concurrent.futures.ThreadPoolExecutor(_MAX_COPY_THREADS, "taskmesh-copy")
    dst = np.frombuffer(out, dtype=np.uint8)
    src = np.frombuffer(source, dtype=np.uint8)
    step = -(-source.nbytes // threads)
    jobs = [_copy_pool.submit(np.copyto, dst[i:i + step], src[i:i + step])
            for i in range(0, source.nbytes, step)]
    for job in jobs:
        job.result()


def _layout(s: Serialized) -> tuple[int, bytes, list[int]]:
    lengths = [len(s.pickled)] + [b.nbytes for b in s.buffers]
    header = msgpack.packb([0, lengths[0], lengths[1:]])
    # The header holds the total size, which depends on the header's own length: packed
    # again only when the total's encoding moves the first offset.
    while True:
        offsets, end = [], _align(16 + len(header))
        for n in lengths:
            offsets.append(end)
            end = _align(end + n)
        total = offsets[-1] + lengths[-1]
        final = msgpack.packb([total, lengths[0], lengths[1:]])
        if _align(16 + len(final)) == offsets[0]:
            return total, final, offsets
        header = final


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


# Custom serializers (Ray's `register_serializer`): class -> reducer. They apply in the
# process that registered them; the deserializer travels pickled with each value, so the
# process that loads it needs no registration.
_custom_reducers: dict[type, Callable[[Any], tuple]] = {}


def register_serializer(cls: type, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None:
    """Pickle instances of exactly `cls` as `deserializer(serializer(obj))`."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer expects a class, got {cls!r}")

    def reduce(obj: Any) -> tuple:
        return deserializer, (serializer(obj),)

    _custom_reducers[cls] = reduce


def deregister_serializer(cls: type) -> None:
    """Forget `cls`'s custom serializer (nothing happens when it has none)."""
    _custom_reducers.pop(cls, None)


# Values of these exact types pickle the same with the standard pickler, which costs a
# fraction of cloudpickle's (a task's result is often one of them).
_PLAIN_TYPES = frozenset((int, float, bool, str, bytes, type(None)))


def _dumps(value: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
    if not _custom_reducers:
        return cloudpickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    out = io.BytesIO()
    _CustomPickler(out, buffer_callback).dump(value)
    return out.getvalue()


class _CustomPickler(cloudpickle.CloudPickler):
    """cloudpickle with the registered serializers in its dispatch table (looked up by
    exact type, after cloudpickle's own handling of classes and functions)."""

    def __init__(self, out: io.BytesIO, buffer_callback: Callable[[pickle.PickleBuffer], bool]):
        # Set before the pickler's __init__, which is when it reads the table.
        self.dispatch_table = collections.ChainMap(dict(_custom_reducers),
                                                   cloudpickle.CloudPickler.dispatch_table)
        super().__init__(out, protocol=5, buffer_callback=buffer_callback)


def _is_plain(value: Any) -> bool:
    """Of a plain type, for which no serializer was registered (register_serializer)."""
    kind = type(value)
    return kind in _PLAIN_TYPES and kind not in _custom_reducers


def plain_pickle(value: Any) -> bytes | None:
    """A value of a plain type (no refs, no buffers, nothing cloudpickle adds) pickled
    the cheap way; None for any other value."""
    return pickle.dumps(value, protocol=5) if _is_plain(value) else None


def plain_call_pickle(args: tuple, kwargs: dict) -> bytes | None:
    """A call's ([args], {kwargs}) pickled the cheap way when every argument is of a
    plain type (nothing to collect, no buffers); None otherwise."""
    if not all(map(_is_plain, (*args, *kwargs.values()))):
        return None
    return pickle.dumps((list(args), kwargs), protocol=5)


def serialize_plain(value: Any) -> Serialized | None:
    """`plain_pickle` as a Serialized."""
    data = plain_pickle(value)
    return None if data is None else Serialized(data, ())


def serialize_oob(value: Any) -> Serialized:
    plain = serialize_plain(value)
    if plain is not None:
        return plain
    buffers: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        # Every buffer goes out of band, small ones too (as Ray's serializer does): it
        # comes back as a view of the stored bytes, read-only, so a numpy array that `get`
        # returns or a task receives is read-only whatever its size. In band, a writable
        # buffer would be pickled as a bytearray and come back writable.
        buffers.append(buf.raw())  # contiguous by construction (protocol 5 only offers those)
        return False

    return Serialized(_dumps(value, keep), tuple(buffers))


def serialize(value: Any) -> bytes:
    return serialize_oob(value).to_bytes()


# ---- exported functions and classes keep their source locations -------------------------
#
# A function or class defined in the driver's script is pickled by value, code objects
# and all. Some cloudpickle versions (3.1.3) write every code object's co_filename as
# "<dynamic-code>", so a remote traceback could not name the user's file nor show the
# line. Exports therefore go through a pickler that wraps each code object with its
# file name (made absolute, for linecache in a worker with another working directory),
# put back with code.replace() when it is unpickled; nested code objects (inner
# functions, lambdas, methods) and the functions it references by value pass through
# the same pickler. With a cloudpickle that keeps the name this changes nothing.

_CodeReduce = Callable[[types.CodeType], tuple[Any, ...]]
_plain_code_reduce: _CodeReduce | None = getattr(
    cloudpickle.Pickler, "dispatch_table", {}).get(types.CodeType)


def _located_code(make: Any, args: tuple, filename: str) -> types.CodeType:
    code = make(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def _reduce_located_code(code: types.CodeType) -> tuple[Any, ...]:
    assert _plain_code_reduce is not None
    make, args = _plain_code_reduce(code)[:2]
    filename = code.co_filename
    if not filename.startswith("<"):
        filename = os.path.abspath(filename)
    return _located_code, (make, args, filename)


class _LocatedPickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_located_code},
                              getattr(cloudpickle.Pickler, "dispatch_table", {}))


def serialize_definition(obj: Any) -> bytes:
    """Pickle an exported function or class (a plain pickle: `deserialize` reads it),
    keeping the file name of its code objects (see above)."""
    if _plain_code_reduce is None:  # a cloudpickle that reduces code otherwise
        return cloudpickle.dumps(obj, protocol=5)
    with io.BytesIO() as out:
        _LocatedPickler(out, protocol=5).dump(obj)
        return out.getvalue()


def deserialize(data: bytes | memoryview) -> Any:
    """The value of a plain pickle or of a frame; buffers of a frame are views of `data`
    (read-only when `data` is, e.g. a shared-memory mapping)."""
    if data[:8] != MAGIC:
        return cloudpickle.loads(data)
    view = memoryview(data)
    try:
        (header_len,) = struct.unpack("<Q", view[8:16])
        total, pickle_len, lengths = msgpack.unpackb(view[16:16 + header_len])
    except Exception as e:
        raise RaySystemError(f"corrupt object: unreadable frame header ({e})") from None
    if view.nbytes < total:
        raise RaySystemError(f"corrupt object: {view.nbytes} bytes where its header says {total}")
    offset = _align(16 + header_len)
    pickled = view[offset:offset + pickle_len]
    offset = _align(offset + pickle_len)
    buffers = []
    for n in lengths:
        buffers.append(view[offset:offset + n])
        offset = _align(offset + n)
    return pickle.loads(pickled, buffers=buffers)


# Reprs and pickles name the public path (Ray's), not the module that defines it.
ObjectRef.__module__ = "taskmesh.objects"
