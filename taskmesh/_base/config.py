"""Every environment variable taskmesh reads, declared once.

Each `TASKMESH_*` variable is one `Var` below (name, default, unit, meaning) in the
`VARIABLES` table, in the spirit of Ray's `ray_constants.py`. A variable is read when
`Var.get()` is called, never at import, so a test or a launcher can set it after the
package is imported; code on a per-task path reads it once per object that uses it (in
its `__init__`). Other modules read their variables only through this table; they may
still *set* one for a child process. An unset or empty variable means its default; a
number that does not parse or is out of range raises ValueError naming the variable.

README.md's list of variables is generated from the table:
`python -m taskmesh._base --write README.md` rewrites it (`python -m taskmesh._base`
prints it), and `tests/test_config.py` fails when it is out of date.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Var(Generic[T]):
    """One environment variable: its name, default, unit, one-line meaning, and the
    parser of a set, non-empty value (raising ValueError naming the variable)."""

    name: str
    default: T
    unit: str
    meaning: str
    parse: Callable[[str, str], T] = field(repr=False, compare=False)
    shown_default: str = ""  # the default as the README shows it, when not `default` itself

    def get(self, env: Mapping[str, str] | None = None) -> T:
        """The value now (from `env`, by default the process's environment)."""
        raw = (os.environ if env is None else env).get(self.name)
        if not raw:
            return self.default
        return self.parse(self.name, raw)


VARIABLES: dict[str, Var[Any]] = {}


def _declare(var: Var[T]) -> Var[T]:
    if not var.name.startswith("TASKMESH_") or var.name in VARIABLES:
        raise ValueError(f"bad or duplicate variable name {var.name!r}")
    VARIABLES[var.name] = var
    return var


def get(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The value now of the variable called `name` (KeyError: not declared here)."""
    return VARIABLES[name].get(env)


# ---- parsers --------------------------------------------------------------------------

def _check_number(name: str, raw: str, cast: Callable[[str], Any], positive: bool,
                  expected: str) -> Any:
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or not value >= 0 or (positive and value == 0):
        raise ValueError(f"{name}={raw!r}: expected {expected}")
    return value


def env_number(name: str, default: Any, *, cast: Callable[[str], Any] = float,
               positive: bool = False, expected: str = "a number >= 0") -> Any:
    """A number from the environment variable `name` (`default` when unset or empty);
    a value that does not parse, is negative (or zero, with `positive`) raises
    ValueError naming the variable."""
    raw = os.environ.get(name)
    if not raw:
        return default
    return _check_number(name, raw, cast, positive, expected)


_UNIT_WORDS = {"ms": "milliseconds", "s": "seconds"}


def _number(cast: Callable[[str], T], unit: str, positive: bool) -> Callable[[str, str], T]:
    words = _UNIT_WORDS.get(unit, unit)
    kind = "whole number" if cast is int else "number"
    expected = f"a positive {kind} of {words}" if positive else f"a {kind} of {words} >= 0"
    return lambda name, raw: _check_number(name, raw, cast, positive, expected)


def _int(name: str, default: int, unit: str, meaning: str, *, positive: bool = False,
         shown_default: str = "") -> Var[int]:
    return _declare(Var(name, default, unit, meaning, _number(int, unit, positive), shown_default))


def _float(name: str, default: float, unit: str, meaning: str, *,
           positive: bool = False) -> Var[float]:
    return _declare(Var(name, default, unit, meaning, _number(float, unit, positive)))


def _flag(name: str, meaning: str) -> Var[bool]:
    """On when set to 1, true or yes (any case); anything else is off."""
    return _declare(Var(name, False, "flag", meaning,
                        lambda _, raw: raw.lower() in ("1", "true", "yes"),
                        shown_default="off (on: `1`, `true`, `yes`)"))


def _text(name: str, default: str | None, unit: str, meaning: str, *,
          shown_default: str = "") -> Var[str | None]:
    return _declare(Var(name, default, unit, meaning, lambda _, raw: raw, shown_default))


def _path(name: str, default: Path | None, meaning: str, *,
          shown_default: str = "") -> Var[Path | None]:
    return _declare(Var(name, default, "path", meaning, lambda _, raw: Path(raw), shown_default))


# ---- the table ------------------------------------------------------------------------
# Declared in the order the README lists them. A name is written out once, here.

# Where the cluster is, and who this process is in it.
ADDRESS = _text(
    "TASKMESH_ADDRESS", None, "address",
    "Redis address of the cluster that `init()`, the CLI and workers join "
    "(`host:port`, `redis://`, `rediss://`, `redis+sentinel://`)",
    shown_default="unset: the cluster `taskmesh start --head` recorded here, else a new local one")
PREFIX = _text(
    "TASKMESH_PREFIX", "tm", "text",
    "Key prefix of the cluster in Redis; set by an agent for its workers")
NODE_ID = _text(
    "TASKMESH_NODE_ID", "", "text",
    "Node a worker process belongs to; set by its agent", shown_default="unset")
SUBMISSION_ID = _text(
    "TASKMESH_SUBMISSION_ID", None, "text",
    "Submitted job (`taskmesh job submit`) whose entrypoint this process runs in; set by the "
    "job's supervisor: `init()` takes the job's runtime_env and records its driver there",
    shown_default="unset")

# Files and memory.
TEMP_DIR = _path(
    "TASKMESH_TEMP_DIR", None,
    "Directory of sessions, logs, spilled objects and the record of the running cluster",
    shown_default="`$TMPDIR/taskmesh-$UID`")
SHM_ROOT = _path(
    "TASKMESH_SHM_ROOT", Path("/dev/shm"),
    "Directory holding each node's shared-memory object store (`taskmesh-{node_id}/`)")
INLINE_LIMIT = _int(
    "TASKMESH_INLINE_LIMIT", 100 * 1024, "bytes",
    "Largest object stored in Redis itself; larger ones go to the node's shared memory",
    shown_default="`102400` (100 KiB)")
FUNCTION_SIZE_ERROR_THRESHOLD = _int(
    "TASKMESH_FUNCTION_SIZE_ERROR_THRESHOLD", 100 * 1024 * 1024, "bytes",
    "Largest pickled remote function or actor class; `.remote()` of a larger one raises "
    "ValueError (Ray's FUNCTION_SIZE_ERROR_THRESHOLD)", positive=True,
    shown_default="`104857600` (100 MiB)")
GENERATOR_QUEUE_BYTES = _int(
    "TASKMESH_GENERATOR_QUEUE_BYTES", 32 * 1024 * 1024, "bytes",
    "Most bytes of streamed generator items a worker holds while they are being stored; "
    "a generator that yields faster waits (read by each worker)", positive=True,
    shown_default="`33554432` (32 MiB)")
GENERATOR_UNCONSUMED_BYTES = _int(
    "TASKMESH_GENERATOR_UNCONSUMED_BYTES", -1, "bytes",
    "Most bytes of a streaming generator call's items its caller holds without having "
    "taken them; past it the call is stopped with an error (0: no bound; "
    "`_generator_backpressure_num_objects` makes the generator wait instead; read by each "
    "driver and worker)",
    shown_default="the smaller of 1 GiB and a tenth of the machine's memory")
REDIS_MAXMEMORY = _int(
    "TASKMESH_REDIS_MAXMEMORY", -1, "bytes",
    "maxmemory of the Redis server that `init()` and `taskmesh start --head` start (0: none); "
    "past it Redis evicts nothing and refuses writes, which taskmesh reports as "
    "ObjectStoreFullError",
    shown_default="a quarter of the machine's memory (or of its cgroup's limit)")
OBJECT_STORE_FULL_WAIT_S = _float(
    "TASKMESH_OBJECT_STORE_FULL_WAIT_S", 10.0, "s",
    "How long a put waits for room in a full object store before `ObjectStoreFullError` "
    "(read by the node agent)")

# Failures, draining and durability.
GRACE_PERIOD_S = _float(
    "TASKMESH_GRACE_PERIOD_S", 30.0, "s",
    "How long a draining node lets running tasks finish before handing them back "
    "(`--grace-period-s`)")
NODE_TIMEOUT_MS = _int(
    "TASKMESH_NODE_TIMEOUT_MS", 10_000, "ms",
    "A node whose heartbeat is this old is declared dead", positive=True)
RECONCILE_S = _float(
    "TASKMESH_RECONCILE_S", 30.0, "s",
    "How often a node agent compares its pending queue entries in Redis with what it knows, "
    "taking back those left alone this long (a delivery whose reply was lost)")
DRIVER_TIMEOUT_MS = _int(
    "TASKMESH_DRIVER_TIMEOUT_MS", 30_000, "ms",
    "A driver whose heartbeat is this old has its refs released and its job ended (tasks and actors)",
    positive=True)
REDIS_UNREACHABLE_TIMEOUT_S = _float(
    "TASKMESH_REDIS_UNREACHABLE_TIMEOUT_S", 300.0, "s",
    "How long a driver blocked in `get()` waits for an unreachable Redis before raising "
    "`StoreUnavailableError`",
    positive=True)
WAIT_REPLICAS = _int(
    "TASKMESH_WAIT_REPLICAS", 1, "replicas",
    "Replicas that durable writes wait for (`WAIT`) on a `redis+sentinel://` address; "
    "0: none")
WAIT_TIMEOUT_MS = _int(
    "TASKMESH_WAIT_TIMEOUT_MS", 100, "ms",
    "Longest wait for those replicas", positive=True)

# Observability.
TASK_EVENTS_MAXLEN = _int(
    "TASKMESH_TASK_EVENTS_MAXLEN", 2000, "entries",
    "Entries kept in the task events stream (`tm:events`; each a batch of up to 100 events)",
    positive=True)
METRICS_REPORT_INTERVAL_S = _float(
    "TASKMESH_METRICS_REPORT_INTERVAL_S", 1.0, "s",
    "How often a process adds its `taskmesh.util.metrics` values to Redis", positive=True)

# Security.
ALLOW_INSECURE = _flag(
    "TASKMESH_ALLOW_INSECURE",
    "Join a Redis on another machine that runs commands without a password "
    "(`--allow-insecure`); a warning is logged")
REDIS_PASSWORD = _text(
    "TASKMESH_REDIS_PASSWORD", None, "text",
    "Password of the cluster's Redis: the one `taskmesh start --head` gives it, and the one "
    "clients use when the address carries none (never on a command line)",
    shown_default="unset: generated")
REDIS_PASSWORD_FILE = _text(
    "TASKMESH_REDIS_PASSWORD_FILE", None, "path",
    "File holding that password on one line (`--redis-password-file`; the CLI reads it)")
TLS_CA_FILE = _text(
    "TASKMESH_TLS_CA_FILE", None, "path",
    "For `rediss://`: the CA certificate (PEM) that signed the server's certificate "
    "(`--tls-ca-file`)")
TLS_CERT = _text(
    "TASKMESH_TLS_CERT", None, "path",
    "For `rediss://`: the certificate (PEM) this process presents (`--tls-cert`)")
TLS_KEY = _text(
    "TASKMESH_TLS_KEY", None, "path",
    "For `rediss://`: the private key (PEM) of that certificate (`--tls-key`)")

ENV_TEMP_DIR = TEMP_DIR.name


# ---- accessors with more to them than a value ----------------------------------------

class UnsafeDirectoryError(RuntimeError):
    """A directory taskmesh keeps private files in (passwords, the record of what it
    started, logs, spilled objects) belongs to another user or is open to others."""


def temp_root() -> Path:
    """TASKMESH_TEMP_DIR (default: `taskmesh-<uid>` in the system's temp directory),
    made 0700 if missing. Its default name is predictable in a directory every user
    writes, so an existing one must be this user's and closed to others (mode 0700 or
    narrower); otherwise UnsafeDirectoryError says what is wrong."""
    root = TEMP_DIR.get() or Path(tempfile.gettempdir()) / f"taskmesh-{os.getuid()}"
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir(mode=0o700)
        os.chmod(root, 0o700)  # whatever the umask; ours, made just now
    except FileExistsError:
        pass
    check_private_dir(root, f"set ${TEMP_DIR.name} to a directory of your own")
    return root


def check_private_dir(path: Path, remedy: str = "") -> None:
    """Raise UnsafeDirectoryError unless `path` is a directory owned by this user with
    no permission for group or others (a symbolic link counts only when it is this
    user's own, and then its target is checked)."""
    uid = os.getuid()
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid != uid:
            _refuse(path, f"is a symbolic link owned by uid {st.st_uid}, not by this user "
                          f"(uid {uid})", remedy)
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        _refuse(path, "is not a directory", remedy)
    if st.st_uid != uid:
        _refuse(path, f"is owned by uid {st.st_uid}, not by this user (uid {uid}); another "
                      "user may have made it to read or plant taskmesh's files", remedy)
    if st.st_mode & 0o077:
        _refuse(path, f"has mode {stat.S_IMODE(st.st_mode):04o}, open to other users; it "
                      f"must be 0700 (chmod 700 {path})", remedy)


def private_dir(path: Path) -> Path:
    """`path` as a directory of this user's that others cannot enter: made 0700 (missing
    parents with the default mode), or narrowed to 0700 when it exists. For directories
    taskmesh owns outright, such as a Redis server's data directory."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        _refuse(path, f"is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})", "")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _refuse(path: Path, what: str, remedy: str) -> None:
    raise UnsafeDirectoryError(f"refusing to use {path}: it {what}" + (f"; or {remedy}" if remedy else ""))


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as a file only its owner reads and writes: 0600 from the
    moment it exists (a new file beside it, renamed over `path` when complete), so no
    reader ever catches it with looser permissions or half written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def shm_root() -> Path:
    """TASKMESH_SHM_ROOT: where node agents put their shared-memory object stores."""
    return SHM_ROOT.get() or Path("/dev/shm")


# ---- the README's table ---------------------------------------------------------------

README_BEGIN = ("<!-- generated from taskmesh/_base/config.py by "
                "`python -m taskmesh._base --write README.md` -->")
README_END = "<!-- end of the generated table -->"


def _shown(var: Var[Any]) -> str:
    if var.shown_default:
        return var.shown_default
    if var.default is None:
        return "unset"
    return f"`{var.default}`"


def markdown_table() -> str:
    """The table of every variable, as README.md shows it (between its markers)."""
    rows = ["| variable | default | unit | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {_shown(v)} | {v.unit} | {v.meaning} |" for v in VARIABLES.values()]
    return "\n".join(rows)


def readme_section(text: str) -> str | None:
    """What README text holds between the markers (None: no markers)."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[start + len(README_BEGIN):end].strip("\n")


def with_table(text: str) -> str:
    """README text with the generated table put between its markers."""
    if readme_section(text) is None:
        raise ValueError(f"no {README_BEGIN!r} ... {README_END!r} markers to write the table between")
    start = text.find(README_BEGIN) + len(README_BEGIN)
    return f"{text[:start]}\n{markdown_table()}\n{text[text.find(README_END):]}"
