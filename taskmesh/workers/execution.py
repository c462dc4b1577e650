"""What the task runner (worker_main) and the actor runner share: the return-value split,
the error record, the placement context, the output forwarder, and `WorkerHost`, what an
actor runner needs of the worker process that hosts it (so neither runner imports the
other)."""

from __future__ import annotations

import inspect
import io
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from taskmesh import objects
from taskmesh._base.wire import NOTICE_INLINE_LIMIT, Message, TaskContext
from taskmesh.exceptions import RayTaskError

OMP_VAR = "OMP_NUM_THREADS"
_KEPT_KINDS = (objects.KIND_VALUE, objects.KIND_ERROR)


def owner_keeps(objs: Sequence[Sequence[Any]], holds_refs: Callable[[str], bool]) -> bool:
    """Whether a finished task's results go to its owner in the completion notice alone,
    not stored in Redis (Notice.kept): each is a small inline value or error that holds
    no refs. A value that holds refs is stored, so that they are released with it."""
    if len(objs) == 1:  # the common case, without the loops
        oid, kind, data = objs[0]
        return not holds_refs(oid) and _fits_notice(kind, data)
    holding = False
    for oid, _, _ in objs:  # each asked once: holds_refs forgets what it answers
        holding = holds_refs(oid) or holding
    return bool(objs) and not holding and all(_fits_notice(kind, data) for _, kind, data in objs)


def _fits_notice(kind: bytes, data: bytes | None) -> bool:
    """An inline value or error small enough to travel in the completion notice."""
    return kind in _KEPT_KINDS and data is not None and len(data) <= NOTICE_INLINE_LIMIT


_omp_set: str | None = None  # the value set_omp_threads set last in this process


def set_omp_threads(resources: dict[str, float]) -> None:
    """Ray's rule: unless OMP_NUM_THREADS is set (the node's environment, the
    runtime_env's env_vars, the task itself), a task or actor runs with it set to its
    CPUs, rounded down, at least 1 (1 for an actor that holds no CPU). The value stays
    between tasks (every task sets its own): changing the environment costs a putenv."""
    global _omp_set
    current = os.environ.get(OMP_VAR)
    if current is not None and current != _omp_set:
        return
    wanted = str(max(int(resources.get("CPU") or 1), 1))
    if current != wanted:
        os.environ[OMP_VAR] = wanted
        _omp_set = wanted


class LogSink(Protocol):
    """Where a LineForwarder sends complete lines: the worker process."""

    @property
    def context(self) -> TaskContext: ...

    def add_log_lines(self, stream: str, lines: list[str]) -> None: ...


class WorkerHost(Protocol):
    """The worker process as an actor runner sees it."""

    node_id: str
    pid: int
    runtime: Any
    store: Any
    events: Any

    def send(self, msg: Message) -> None: ...

    def function(self, fn_id: str) -> Any: ...

    def resolve_args(self, args: list, kwargs: dict, timeout_s: float | None = None) -> bytes | None: ...

    def end_output(self) -> None: ...

    def flush_logs(self, with_events: bool = False) -> None: ...

    def generator_run(self, *args: Any, **kwargs: Any) -> Any: ...


class LineForwarder(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr while a task runs: complete lines go to the
    driver of the task's job, prefixed there with the task name and pid."""

    def __init__(self, worker: LogSink, stream: str, fallback: Any):
        self._worker = worker
        self._stream = stream
        self._fallback = fallback
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._worker.context.job_id is None:
            return self._fallback.write(text)
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        if lines:
            self._worker.add_log_lines(self._stream, lines)
        return len(text)

    def flush(self) -> None:
        self._fallback.flush()

    def finish(self) -> None:
        if self._partial:
            self._worker.add_log_lines(self._stream, [self._partial])
            self._partial = ""


def split_returns(result: Any, n: int, name: str) -> list[Any]:
    if n == 1:
        return [result]
    if n == 0:
        return []
    try:
        values = list(result)
    except TypeError:
        raise ValueError(f"Task {name} declared num_returns={n} but returned a non-iterable "
                         f"{type(result).__name__}") from None
    if len(values) != n:
        raise ValueError(f"Task {name} declared num_returns={n} but returned {len(values)} values")
    return values


def fixed_returns(result: Any, return_ids: Sequence[str], name: str,
                  encode: Callable[[str, Any], list], error_of: Callable[[Exception], bytes],
                  retry: Callable[[Exception], bool] = lambda e: False) -> list[list] | None:
    """The return objects of a generator called with a fixed num_returns (Ray's "num_returns
    set by the task caller"); None when `result` is no generator. Each value is encoded as
    it is yielded (a large one goes to the object store then and leaves the heap). As Ray:
    a generator that raises after k values keeps them, the rest are its error (unless
    `retry` says the task runs again: then it propagates); one that yields fewer values
    fails the rest with a ValueError; one that yields more keeps the first N and the
    error is logged."""
    if not inspect.isgenerator(result):
        return None
    n = len(return_ids)
    objs: list[list] = []
    try:
        for value in result:
            if len(objs) == n:
                result.close()
                print(f"Unhandled error: Task threw exception, but all {n} return values already "
                      "created. This should only occur when using generator tasks.\n"
                      f"ValueError: Task returned more than num_returns={n} objects.", file=sys.stderr)
                return objs
            objs.append(encode(return_ids[len(objs)], value))
    except Exception as e:
        if retry(e):
            raise
        data = error_of(e)
    else:
        if len(objs) == n:
            return objs
        data = error_of(ValueError(f"Task returned {len(objs)} objects, but num_returns={n}."))
    return objs + [[oid, objects.KIND_ERROR, data] for oid in return_ids[len(objs):]]


# taskmesh's own source files: frames there are the runtime's, not the user's.
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")


def _internal(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_PACKAGE_DIR)


def user_traceback(error: BaseException) -> str:
    """The traceback text of `error` (and of its causes and contexts) without the frames
    of taskmesh's own files that run a task or call, as Ray trims its own: what remains
    starts at the user's function. An error raised by taskmesh itself, with no frame
    outside it, keeps its frames."""
    top = traceback.TracebackException.from_exception(error)
    pending, seen = [top], set()
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        kept = [frame for frame in exc.stack if not _internal(frame.filename)]
        if kept:
            exc.stack = traceback.StackSummary.from_list(kept)
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
        pending += getattr(exc, "exceptions", None) or []  # an ExceptionGroup's members
    return "".join(top.format())


# The end of a failed task's traceback kept in its task event (for the dashboard).
ERROR_TEXT_CHARS = 8_000


def error_text(objs: Sequence[Sequence[Any]] | None) -> str | None:
    """The traceback of a run's first error result (None when none), cut to its last
    ERROR_TEXT_CHARS, for the FAILED task event: read back from the result itself, so
    it costs nothing on a task that succeeds."""
    for _, kind, data in objs or ():
        if kind != objects.KIND_ERROR:
            continue
        try:
            error = objects.deserialize(data)
        except Exception:  # an error whose class does not load here: its type is known
            return None
        text = getattr(error, "traceback_str", None) or str(error)
        return text[-ERROR_TEXT_CHARS:]
    return None


def serialize_error(name: str, error: Exception) -> bytes:
    tb = user_traceback(error)
    try:
        return objects.serialize(RayTaskError(name, tb, error))
    except Exception:  # the user's exception does not pickle: keep its text
        return objects.serialize(RayTaskError(name, tb, None))


def placement(pg: list | None, gpus: Sequence[int] | None) -> dict[str, Any]:
    """TaskContext fields of where a task or actor was placed: its placement group and
    the GPU ids its agent assigned (None: not a GPU node). On a GPU node they are also
    set as CUDA_VISIBLE_DEVICES, as Ray does (none assigned: no GPU visible)."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    return {"pg": pg, "gpu_ids": list(gpus or ())}
