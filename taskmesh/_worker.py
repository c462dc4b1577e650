"""A worker process: runs tasks its node agent hands it over a socket pair.

The agent sends one task at a time; the worker resolves top-level ref arguments, runs the
function, serializes the returns and sends them back, and the agent stores them in Redis
(batched with other completions). A worker dies with its agent: PR_SET_PDEATHSIG plus a
parent-pid watch.

Messages (msgpack lists) on the socket:
  agent -> worker  ["T", entry_id, fields]               run this task
  worker -> agent  ["R", pid]                           ready for tasks
                   ["D", entry_id, owner, notice, objs] done; objs = [[object_id, kind, data]]
                   ["Q", entry_id]                      failed, retry it (retry_exceptions)
                   ["B"] / ["U"]                        blocked in get / unblocked
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from . import _process, objects
from ._runtime import Runtime, TaskContext, encode_notice
from .exceptions import RayTaskError, TaskCancelledError
from .objects import KIND_ERROR, ObjectRef
from .store import Store, retry_transient


class _LineForwarder(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr while a task runs: complete lines go to the
    driver of the task's job, prefixed there with the task name and pid."""

    def __init__(self, worker: Worker, stream: str, fallback: Any):
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


class Worker:
    def __init__(self, conn: Connection, store: Store, node_id: str):
        self.conn = conn
        self.store = store
        self.node_id = node_id
        self.pid = os.getpid()
        self.runtime = Runtime(store, job_id=None, namespace=None, node_id=node_id, is_worker=True)
        self.runtime.on_block = lambda: self._send(["B"])
        self.runtime.on_unblock = lambda: self._send(["U"])
        self._send_lock = threading.Lock()
        self._functions: dict[str, Any] = {}
        self._interruptible = False  # a task is running: SIGINT cancels it
        self._calls: dict[str, int] = {}
        self._log_lock = threading.Lock()
        self._log_lines: list[list[str]] = []
        self._log_job: str | None = None
        self._out = _LineForwarder(self, "stdout", sys.__stdout__)
        self._err = _LineForwarder(self, "stderr", sys.__stderr__)

    @property
    def context(self) -> TaskContext:
        return self.runtime.context

    def _send(self, msg: list) -> None:
        data = msgpack.packb(msg, use_bin_type=True)
        with self._send_lock:
            self.conn.send_bytes(data)

    # ---- logs -------------------------------------------------------------------------

    def add_log_lines(self, stream: str, lines: list[str]) -> None:
        name = self.context.task_name or "worker"
        with self._log_lock:
            self._log_job = self.context.job_id
            self._log_lines.extend([name, stream, line] for line in lines)
            big = len(self._log_lines) > 1000
        if big:
            self.flush_logs()

    def flush_logs(self) -> None:
        with self._log_lock:
            lines, self._log_lines = self._log_lines, []
            job = self._log_job
        if lines and job is not None:
            payload = msgpack.packb({"pid": self.pid, "node": self.node_id, "lines": lines})
            try:
                self.store.publish_log(job, payload)
            except Exception:
                pass

    def _log_flush_loop(self) -> None:
        while True:
            time.sleep(0.2)
            self.flush_logs()

    # ---- tasks ------------------------------------------------------------------------

    def serve(self) -> None:
        import taskmesh.api as api

        api._set_worker_runtime(self.runtime)
        threading.Thread(target=self._log_flush_loop, name="taskmesh-logs", daemon=True).start()
        sys.stdout, sys.stderr = self._out, self._err  # type: ignore[assignment]
        # Known to Redis before it can hold anything: if its node dies, the monitor
        # releases what it held.
        retry_transient(lambda: self.store.add_node_process(self.node_id, self.runtime.owner))
        signal.signal(signal.SIGINT, self._on_sigint)
        self._send(["R", self.pid, self.runtime.owner])
        while True:
            try:
                raw = self.conn.recv_bytes()
            except (EOFError, OSError):
                return
            msg = msgpack.unpackb(raw, raw=True)
            if msg[0] == b"T" and msg[2].get(b"kind") == b"actor":
                from ._actor_worker import ActorServer

                ActorServer(self, msg[1], msg[2]).run()  # returns only if creation failed
            elif msg[0] == b"T":
                if not self._run(msg[1], msg[2]):
                    return

    def _sync_refs(self) -> None:
        """Register what the task kept of the refs it was lent (and the refs its results
        contain) before the caller learns it is done and drops them."""
        try:
            retry_transient(self.runtime.sync_refs, deadline_s=60)
        except Exception as e:
            print(f"taskmesh worker {self.pid}: could not record held refs: {e!r}", file=sys.__stderr__)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT is how the agent cancels the running task; between tasks it is ignored."""
        if self._interruptible:
            raise KeyboardInterrupt

    def send(self, msg: list) -> None:
        self._send(msg)

    def end_output(self) -> None:
        """Flush what the running task printed (called when a task or call ends)."""
        self._out.finish()
        self._err.finish()
        self.flush_logs()

    def function(self, fn_id: str) -> Any:
        return self._function(fn_id)

    def resolve_args(self, args: list, kwargs: dict) -> bytes | None:
        return self._resolve_args(args, kwargs)

    def _function(self, fn_id: str) -> Any:
        fn = self._functions.get(fn_id)
        if fn is None:
            # Through a Redis restart: a task must not fail because Redis blinked.
            blob = retry_transient(lambda: self.store.get_function(fn_id))
            if blob is None:
                raise RuntimeError(f"function {fn_id} was never exported to this cluster")
            fn = objects.deserialize(blob)
            self._functions[fn_id] = fn
        return fn

    def _run(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Run one task; False when this worker must exit afterwards (max_calls)."""
        task_id = fields[b"task"].decode()
        name = fields[b"name"].decode()
        attempt = int(fields[b"attempt"])
        spec = msgpack.unpackb(fields[b"spec"], raw=False)
        spec["attempt"] = attempt
        owner, nret = spec["owner"], spec["nret"]
        return_ids = [objects.object_id(task_id, i + 1) for i in range(nret)]
        self.runtime.job_id = spec["job"]
        self.runtime.namespace = spec.get("ns")
        self.runtime.context = TaskContext(spec["job"], task_id, name, spec.get("res", {}))
        try:
            self._interruptible = True
            objs = self._execute(spec, name, return_ids)
        except _Retry:
            objs = None
        except KeyboardInterrupt:  # taskmesh.cancel, arriving between the task and here
            objs = self._cancelled(return_ids)
        finally:
            self._interruptible = False
            self.runtime.context = TaskContext()
            self.end_output()
        self._sync_refs()
        if objs is None:
            self._send(["Q", entry_id])
        else:
            self._send(["D", entry_id, owner, encode_notice(task_id, objs), objs])
        max_calls = spec.get("maxc") or 0
        self._calls[spec["fn"]] = calls = self._calls.get(spec["fn"], 0) + 1
        return not (max_calls and calls >= max_calls)

    def _execute(self, spec: dict, name: str, return_ids: list[str]) -> list[list]:
        try:
            fn = self._function(spec["fn"])
            args, kwargs = objects.deserialize(spec["args"])
            upstream_error = self._resolve_args(args, kwargs)
            if upstream_error is not None:
                return [[oid, KIND_ERROR, upstream_error] for oid in return_ids]
            result = fn(*args, **kwargs)
            values = split_returns(result, len(return_ids), name)
            return [self.runtime.encode_value(oid, v) for oid, v in zip(return_ids, values)]
        except KeyboardInterrupt:  # taskmesh.cancel interrupted it
            self._interruptible = False
            return self._cancelled(return_ids)
        except Exception as e:
            if _should_retry(spec, e):
                raise _Retry() from e
            data = serialize_error(name, e)
            return [[oid, KIND_ERROR, data] for oid in return_ids]

    def _cancelled(self, return_ids: list[str]) -> list[list]:
        """The task was cancelled: so are the tasks it submitted (Ray's recursive=True)."""
        task_id = return_ids[0][:-4] if return_ids else ""
        try:
            self.runtime.cancel_children()
        except Exception as e:
            print(f"taskmesh worker {self.pid}: cancelling child tasks failed: {e!r}", file=sys.__stderr__)
        data = objects.serialize(TaskCancelledError(task_id))
        return [[oid, KIND_ERROR, data] for oid in return_ids]

    def _resolve_args(self, args: list, kwargs: dict) -> bytes | None:
        """Replace top-level refs by their values, in place; nested refs stay refs.
        Returns the serialized error of a failed argument, which becomes the result."""
        positions = [i for i, a in enumerate(args) if isinstance(a, ObjectRef)]
        names = [k for k, v in kwargs.items() if isinstance(v, ObjectRef)]
        if not positions and not names:
            return None
        ids = [args[i].hex() for i in positions] + [kwargs[k].hex() for k in names]
        raw = self.runtime.get_raw(ids, None)
        for oid in ids:
            if raw[oid][0] == KIND_ERROR:
                return raw[oid][1]
        plane = self.runtime.plane
        for i in positions:
            oid = args[i].hex()
            args[i] = plane.decode(oid, *raw[oid])
        for k in names:
            oid = kwargs[k].hex()
            kwargs[k] = plane.decode(oid, *raw[oid])
        return None


class _Retry(Exception):
    pass


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


def _should_retry(spec: dict, error: Exception) -> bool:
    retry = spec.get("rexc")
    if not retry:
        return False
    if isinstance(retry, bytes):
        if not isinstance(error, tuple(objects.deserialize(retry))):
            return False
    max_retries = spec.get("maxr", 0)
    return max_retries == -1 or spec.get("attempt", 0) < max_retries


def serialize_error(name: str, error: Exception) -> bytes:
    tb = traceback.format_exc()
    try:
        return objects.serialize(RayTaskError(name, tb, error))
    except Exception:  # the user's exception does not pickle: keep its text
        return objects.serialize(RayTaskError(name, tb, None))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taskmesh-worker")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    _process.fate_share_with_parent()
    conn = Connection(args.fd)
    store = Store(os.environ["TASKMESH_ADDRESS"], prefix=os.environ.get("TASKMESH_PREFIX", "tm"))
    Worker(conn, store, os.environ.get("TASKMESH_NODE_ID", "")).serve()
    os._exit(0)


if __name__ == "__main__":
    main()
