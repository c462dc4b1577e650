"""The error hierarchy: Ray's class names and relations, so `except` clauses written for
Ray work unchanged, plus `StoreUnavailableError` for a Redis that cannot be reached (and
`StoreAuthenticationError`, one that refuses the credentials) and `VersionMismatchError`."""

from __future__ import annotations

import os
import socket
from typing import Any, ClassVar, cast


class RayError(Exception):
    """Base of every error raised by taskmesh itself."""


class CrossLanguageError(RayError):
    """Kept for name compatibility; taskmesh runs Python only."""


class RaySystemError(RayError):
    """The runtime itself failed (not the user's code)."""

    def __init__(self, client_exc: Any = None, traceback_str: str | None = None):
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        super().__init__(client_exc, traceback_str)

    def __str__(self) -> str:
        text = f"System error: {self.client_exc}"
        return f"{text}\ntraceback: {self.traceback_str}" if self.traceback_str else text


class StoreUnavailableError(RayError, ConnectionError):
    """Redis (the control store) could not be reached or timed out."""


class StoreAuthenticationError(StoreUnavailableError):
    """Redis refused the credentials: a wrong password or user, or none where one is
    required. Retrying does not help; giving the cluster's password does."""


class VersionMismatchError(RayError, RuntimeError):
    """This process's Python (major.minor) or taskmesh version is not the cluster's:
    functions travel as bytecode of one Python version, records as one taskmesh's."""


class RayTaskError(RayError):
    """A task raised. `get` raises an instance that is also of the user's exception type
    (see `as_instanceof_cause`), so `except ValueError` catches a remote ValueError."""

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None,
        proctitle: str | None = None,
        pid: int | None = None,
        ip: str | None = None,
    ):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"taskmesh::{function_name}"
        self.pid = os.getpid() if pid is None else pid
        self.ip = ip or _node_ip()
        Exception.__init__(self, function_name, traceback_str, cause, self.proctitle, self.pid, self.ip)

    def __reduce__(self) -> tuple:
        return (
            RayTaskError,
            (self.function_name, self.traceback_str, self.cause, self.proctitle, self.pid, self.ip),
        )

    def __str__(self) -> str:
        lines = self.traceback_str.strip().splitlines()
        body = "\n".join("    " + line for line in lines)
        return f"{self.proctitle}() (pid={self.pid}, ip={self.ip})\n{body}"

    def as_instanceof_cause(self) -> RayTaskError:
        """Return an equivalent error that is an instance of both RayTaskError and the
        cause's class; the plain RayTaskError when the cause's class cannot be mixed in.
        A task that failed because a task it waited for failed has that task's error as
        its cause: the innermost cause's class is the one mixed in, at any depth."""
        cause = self.innermost_cause()
        if cause is None or isinstance(cause, RayTaskError):
            return self
        try:
            return self.make_dual_exception_instance()
        except TypeError:
            return self

    def innermost_cause(self) -> BaseException | None:
        cause = self.cause
        while isinstance(cause, RayTaskError) and cause.cause is not None:
            cause = cause.cause
        return cause

    def make_dual_exception_instance(self) -> RayTaskError:
        """An instance of a class deriving from both RayTaskError and the (innermost)
        cause's class, with its attributes; TypeError when that class cannot be made (a
        cause class that is final, or whose layout conflicts with RayTaskError's)."""
        cause = self.innermost_cause()
        if cause is None:
            raise TypeError("This RayTaskError has no cause to mix in.")
        dual = _dual_class(type(cause))
        err = dual.__new__(dual)
        RayTaskError.__init__(
            err, self.function_name, self.traceback_str, self.cause, self.proctitle, self.pid, self.ip
        )
        err.__dict__.update({k: v for k, v in getattr(cause, "__dict__", {}).items()
                             if k not in err.__dict__})
        return err


_DUAL_CLASSES: dict[type, type[RayTaskError]] = {}


def _dual_class(cause_cls: type) -> type[RayTaskError]:
    dual = _DUAL_CLASSES.get(cause_cls)
    if dual is None:
        name = f"RayTaskError({cause_cls.__name__})"

        def __getattr__(self: Any, attr: str) -> Any:
            return getattr(self.__dict__.get("cause"), attr)

        dual = cast("type[RayTaskError]", type(name, (RayTaskError, cause_cls), {
            "__init__": RayTaskError.__init__,
            "__str__": RayTaskError.__str__,
            "__reduce__": RayTaskError.__reduce__,
            "__getattr__": __getattr__,
        }))
        dual.__module__ = RayTaskError.__module__
        _DUAL_CLASSES[cause_cls] = dual
    return dual


def _node_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class TaskCancelledError(RayError):
    def __init__(self, task_id: Any = None, error_message: str | None = None):
        self.task_id = task_id
        self.error_message = error_message
        super().__init__(task_id, error_message)

    def __str__(self) -> str:
        return self.error_message or f"Task: {self.task_id} was cancelled."


class WorkerCrashedError(RayError):
    def __str__(self) -> str:
        detail = f" {self.args[0]}" if self.args else ""
        return "The worker died unexpectedly while executing this task." + detail


class LocalRayletDiedError(RayError):
    """The local node agent died."""


class RayActorError(RayError):
    def __init__(self, actor_id: str | None = None, error_msg: str = "The actor died unexpectedly."):
        self.actor_id = actor_id
        self.error_msg = error_msg
        super().__init__(actor_id, error_msg)

    def __str__(self) -> str:
        return self.error_msg


class ActorDiedError(RayActorError):
    pass


class ActorUnavailableError(RayActorError):
    pass


class ActorUnschedulableError(RayError):
    pass


class TaskUnschedulableError(RayError):
    pass


class ObjectStoreFullError(RayError):
    pass


class OutOfDiskError(RayError):
    pass


class OutOfMemoryError(RayError):
    pass


class NodeDiedError(RayError):
    pass


class ObjectLostError(RayError):
    def __init__(self, object_ref_hex: str = "", owner_address: str = "", call_site: str = ""):
        self.object_ref_hex = object_ref_hex
        self.owner_address = owner_address
        self.call_site = call_site
        super().__init__(object_ref_hex, owner_address, call_site)

    def __str__(self) -> str:
        return f"Failed to retrieve object {self.object_ref_hex}: all copies of it are lost."


class ObjectFetchTimedOutError(ObjectLostError):
    pass


class ObjectFreedError(ObjectLostError):
    pass


class OwnerDiedError(ObjectLostError):
    """The process that owns the object (the worker or driver that first created its
    ref, by `.remote()` or `put`) has ended: the object is lost with it, as in Ray."""

    def __str__(self) -> str:
        return (f"Failed to retrieve object {self.object_ref_hex}.\n\n"
                "The object's owner has exited. This is the Python worker that first created "
                "the ObjectRef via `.remote()` or `taskmesh.put()`. Check cluster logs (the "
                "node's worker logs) for more information about the Python worker failure.")


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    pass


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of a task's result is lost and the task cannot be run again to make it.
    `reason` is the name Ray gives the cause (OBJECT_UNRECONSTRUCTABLE_...)."""

    REASON_MESSAGES: ClassVar[dict[str, str]] = {
        "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED": (
            "The object cannot be reconstructed because the maximum number of task retries "
            "has been exceeded. Consider increasing the number of retries using "
            "`@taskmesh.remote(max_retries=N)`."),
        "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED": (
            "The object cannot be reconstructed because the task was created with "
            "max_retries=0. Consider enabling retries using `@taskmesh.remote(max_retries=N)`."),
        "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED": (
            "The object cannot be reconstructed because the task that made it is not "
            "recorded (an actor method's result, or a task without lineage)."),
    }
    DEFAULT_REASON: str | None = None

    def __init__(self, object_ref_hex: str = "", reason: str | None = None,
                 reason_message: str | None = None, owner_address: str = "", call_site: str = ""):
        super().__init__(object_ref_hex, owner_address, call_site)
        self.reason = reason or self.DEFAULT_REASON
        self.reason_message = reason_message or self.REASON_MESSAGES.get(self.reason or "", "")

    def __reduce__(self) -> tuple:
        return (type(self), (self.object_ref_hex, self.reason, self.reason_message,
                             self.owner_address, self.call_site))

    def __str__(self) -> str:
        text = f"Failed to retrieve object {self.object_ref_hex}: all copies of it are lost."
        if not self.reason_message:
            return text
        return f"{text}\n\n[{self.reason or 'UNKNOWN'}] {self.reason_message}"


# Ray once raised the next two as classes of their own and now raises the class above
# with a reason: as subclasses of it, `except` clauses written either way work.
class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    DEFAULT_REASON = "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED"


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    DEFAULT_REASON = "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED"


class GetTimeoutError(RayError, TimeoutError):
    """`get` (or a blocking utility) ran past its timeout."""


class PlasmaObjectNotAvailable(RayError):
    pass


class AsyncioActorExit(RayError):
    pass


class RuntimeEnvSetupError(RayError):
    """A task's or actor's runtime_env could not be set up where it was to run."""

    def __init__(self, error_message: str | None = None):
        self.error_message = error_message
        super().__init__(error_message)

    def __str__(self) -> str:
        lines = ["Failed to set up runtime environment."]
        if self.error_message:
            lines.append(self.error_message)
        return "\n".join(lines)


class TaskPlacementGroupRemoved(RayError):
    pass


class ActorPlacementGroupRemoved(RayError):
    pass


class PendingCallsLimitExceeded(RayError):
    pass


class ObjectRefStreamEndOfStreamError(RayError):
    """A streaming generator has no item left (iteration itself ends with StopIteration)."""


__all__ = [name for name, obj in list(globals().items())
           if isinstance(obj, type) and issubclass(obj, BaseException)]


class ActorExitRequest(BaseException):
    """Raised by exit_actor(): unwinds the current method, then the actor exits."""
