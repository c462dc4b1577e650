"""Runtime environments (`ray.runtime_env`): `env_vars`, `working_dir`, `py_modules`
and `excludes`; `pip`, `uv`, `conda` and `container` are checked and carried, and a task
or actor that has one fails with RuntimeEnvSetupError when it is to run (taskmesh
installs nothing). An `env_vars` value may name the worker's variables (`${PATH}:/x`),
expanded as Ray does when the task runs.

A job's runtime_env (`init(runtime_env=...)`) is the parent of its tasks' and actors'
(`.options(runtime_env=...)`), and a running task's or actor's is the parent of the
tasks it submits. As Ray documents, a child's `env_vars` are merged into its parent's
(the child's values win) and every other field of the child replaces the parent's.

A local `working_dir` or `py_modules` entry is zipped by the submitting process (files
under `__pycache__` and `.git`, those matching `excludes` and those a `.gitignore` in the
directory or below ignores are left out, both with gitignore semantics as in Ray; at most
100 MiB)
and stored once in Redis under its content hash (`Keys.package`); the environment then
names it `taskmesh-pkg://<hash>`, so every node reads the same bytes. A worker extracts a
package once per node (under the temp dir) and, while a task runs, makes the working dir
its current directory and puts both on `sys.path`.

The merged environment travels in the task's spec. The worker applies it for the task
and undoes it afterwards (environment variables, current directory, `sys.path`, and the
modules imported from the packages); an actor's process keeps it for its life. A library
that read a variable when it was imported, earlier in the same pooled worker, does not see
the new value.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import threading
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]

SUPPORTED_FIELDS = ("env_vars", "working_dir", "py_modules", "excludes")
# Fields that install something, which taskmesh does not do: checked as Ray checks them
# and carried with the task, whose run then fails with RuntimeEnvSetupError, as a Ray
# task does whose environment cannot be set up.
SETUP_FIELDS = ("pip", "uv", "conda", "container")
# Fields Ray knows that taskmesh does not implement yet: rejected rather than ignored.
_RAY_FIELDS = ("py_executable", "image_uri", "nsight",
               "java_jars", "mpi", "cgroupv2", "worker_process_setup_hook",
               "_ray_release", "_ray_commit", "_inject_current_ray", "plugins", "eager_install")
PKG_SCHEME = "taskmesh-pkg://"
MAX_PACKAGE_BYTES = 100 * 1024 * 1024  # as Ray's limit for uploaded packages
_ALWAYS_EXCLUDED = ("__pycache__", ".git")


class RuntimeEnv(dict):
    """A checked runtime environment; a dict, usable wherever a runtime_env dict is.

        RuntimeEnv(env_vars={"OMP_NUM_THREADS": "4"}, working_dir=".")
    """

    def __init__(self, *, env_vars: dict[str, str] | None = None, working_dir: str | None = None,
                 py_modules: list[Any] | None = None, excludes: list[str] | None = None,
                 **fields: Any):
        given = {"env_vars": env_vars, "working_dir": working_dir, "py_modules": py_modules,
                 "excludes": excludes}
        raw = {**fields, **{k: v for k, v in given.items() if v is not None}}
        super().__init__(validate(raw) or {})


class RuntimeEnvConfig(dict):
    """Ray's options of a runtime environment's setup, checked as Ray checks them (a
    dict). Accepted as `runtime_env["config"]`; taskmesh installs nothing (its fields
    are env vars and uploaded packages, extracted once per node), so they change nothing:
    there is no setup to time out, nothing to install eagerly and no dashboard log."""

    known_fields = frozenset({"setup_timeout_seconds", "eager_install", "log_files"})

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = True,
                 log_files: list[str] | None = None):
        if isinstance(setup_timeout_seconds, bool) or not isinstance(setup_timeout_seconds, int):
            raise TypeError("setup_timeout_seconds must be of type int, got: "
                            f"{type(setup_timeout_seconds)}")
        if setup_timeout_seconds <= 0 and setup_timeout_seconds != -1:
            raise ValueError("setup_timeout_seconds must be greater than zero or equals to -1, "
                             f"got: {setup_timeout_seconds}")
        if not isinstance(eager_install, bool):
            raise TypeError(f"eager_install must be a boolean. got {type(eager_install)}")
        if log_files is not None and not (isinstance(log_files, list)
                                          and all(isinstance(f, str) for f in log_files)):
            raise TypeError(f"log_files must be a list of strings, got {log_files!r}")
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install,
                         log_files=list(log_files or []))

    @classmethod
    def parse_and_validate_runtime_env_config(cls, config: Any) -> RuntimeEnvConfig:
        """A dict (or a RuntimeEnvConfig) as a checked RuntimeEnvConfig."""
        if isinstance(config, RuntimeEnvConfig):
            return config
        if not isinstance(config, Mapping):
            raise TypeError("runtime_env['config'] must be of type dict or RuntimeEnvConfig, "
                            f"got: {type(config)}")
        unknown = set(config) - cls.known_fields
        if unknown:
            raise ValueError(f"Unknown field(s) {sorted(unknown)} in runtime_env['config']; "
                             f"valid ones are {sorted(cls.known_fields)}.")
        return cls(**config)


# ---- checking ------------------------------------------------------------------------------

def validate(runtime_env: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A runtime_env checked as Ray checks it (TypeError for a wrong type, ValueError for
    an unknown field or a missing path, NotImplementedError for a Ray field taskmesh does
    not support); None when empty."""
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"runtime_env must be a dict or a RuntimeEnv, got {type(runtime_env)}.")
    for name in runtime_env:
        if name in SUPPORTED_FIELDS or name in SETUP_FIELDS:
            continue
        if name == "config":  # checked, then dropped: see RuntimeEnvConfig
            RuntimeEnvConfig.parse_and_validate_runtime_env_config(runtime_env[name])
            continue
        if name in _RAY_FIELDS:
            raise NotImplementedError(
                f"The runtime_env field '{name}' is a valid Ray field, but taskmesh does not "
                f"support it yet (supported: {list(SUPPORTED_FIELDS)}); remove it to run this program.")
        raise ValueError(f"Unknown runtime_env field '{name}'. Valid ones are "
                         f"{sorted((*SUPPORTED_FIELDS, *SETUP_FIELDS, 'config', *_RAY_FIELDS))}.")
    out: dict[str, Any] = _setup_fields(runtime_env)
    env_vars = runtime_env.get("env_vars")
    if env_vars is not None:
        if not (isinstance(env_vars, Mapping)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())):
            raise TypeError("runtime_env['env_vars'] must be of type Dict[str, str], got "
                            f"{env_vars!r}")
        if env_vars:
            out["env_vars"] = dict(env_vars)
    working_dir = runtime_env.get("working_dir")
    if working_dir is not None:
        out["working_dir"] = _check_location(working_dir, "working_dir", directory=True)
    py_modules = runtime_env.get("py_modules")
    if py_modules is not None:
        if not isinstance(py_modules, (list, tuple)):
            raise TypeError(f"`py_modules` must be a list of strings, got {type(py_modules)}.")
        out["py_modules"] = [_check_location(m, "py_modules", directory=False) for m in py_modules]
    excludes = runtime_env.get("excludes")
    if excludes is not None:
        if not (isinstance(excludes, list) and all(isinstance(p, str) for p in excludes)):
            raise TypeError(f"runtime_env['excludes'] must be of type List[str], got {type(excludes)}")
        if excludes:
            out["excludes"] = list(excludes)
    return out or None


def _setup_fields(runtime_env: Mapping[str, Any]) -> dict[str, Any]:
    """The checked pip/uv/conda/container fields, as Ray checks them (a pip or uv list
    with no package is dropped, as in Ray: there is nothing to install)."""
    if sum(runtime_env.get(f) is not None for f in ("pip", "uv", "conda")) > 1:
        raise ValueError("The 'pip' field, 'uv' field, and 'conda' field of runtime_env cannot "
                         "be specified at the same time.\n"
                         f"specified pip field: {runtime_env.get('pip')}\n"
                         f"specified conda field: {runtime_env.get('conda')}\n"
                         f"specified uv field: {runtime_env.get('uv')}")
    if runtime_env.get("container"):
        others = set(runtime_env) - {"container", "config", "env_vars"}
        if others:
            raise ValueError("The 'container' field currently cannot be used together with other "
                             f"fields of runtime_env. Specified fields: {others}")
    out: dict[str, Any] = {}
    for field in ("pip", "uv"):
        value = runtime_env.get(field)
        if value is not None and _packages(field, value):
            out[field] = value
    conda = runtime_env.get("conda")
    if conda is not None:
        if not isinstance(conda, (str, Mapping)):
            raise TypeError(f"runtime_env['conda'] must be of type str or dict, got {type(conda)}.")
        if isinstance(conda, str) and Path(conda).suffix in (".yaml", ".yml") and not Path(conda).is_file():
            raise ValueError(f"Can't find conda YAML file {conda}.")
        out["conda"] = conda
    if runtime_env.get("container") is not None:
        out["container"] = runtime_env["container"]
    return out


def _packages(field: str, value: Any) -> list[str]:
    """The packages a pip or uv field names: a list, a requirements file or a dict with
    `packages` (either of those)."""
    if isinstance(value, Mapping):
        if "packages" not in value:
            raise ValueError(f"runtime_env['{field}'] must include field 'packages', but got {value}")
        value = value["packages"]
    if isinstance(value, str):
        if not Path(value).is_file():
            raise ValueError(f"{value} is not a valid file")
        return Path(value).read_text().strip().split("\n")
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value
    raise TypeError(f"runtime_env['{field}'] must be of type str or List[str], got {type(value)}")


def _check_location(value: Any, field: str, *, directory: bool) -> str:
    """A local path (made absolute) or a package this cluster stored."""
    if isinstance(value, types.ModuleType) and field == "py_modules":
        paths = getattr(value, "__path__", None)
        value = next(iter(paths)) if paths else value.__file__
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f"`{field}` must be a string, got {type(value)}.")
    if value.startswith(PKG_SCHEME):
        return value
    if value.startswith(FILE_SCHEME):
        return _check_file_uri(value, field)
    if "://" in value:
        raise NotImplementedError(f"Remote URIs in `{field}` ({value}) are not supported by taskmesh "
                                  "yet: give a local directory, which is uploaded to the cluster.")
    path = Path(value).expanduser().resolve()
    if directory and not path.is_dir():
        raise ValueError(f"{value} is not a valid local directory for `{field}`.")
    if not directory and not (path.is_dir() or (path.is_file() and path.suffix == ".py")):
        raise ValueError(f"{value} is not a valid local directory or .py file for `{field}`.")
    return str(path)


FILE_SCHEME = "file://"
# Ray's package formats of a URI, by field; taskmesh unpacks the .zip ones.
_URI_FORMATS = {"working_dir": (".zip", ".tar.gz", ".tgz", ".tar.xz"),
                "py_modules": (".zip", ".whl", ".tar.gz", ".tgz", ".tar.xz")}


def _check_file_uri(uri: str, field: str) -> str:
    """A `file://` URI of a package on this machine (Ray's "file" protocol): a .zip file
    whose single top-level directory, if it has one, is dropped as Ray does. It is
    uploaded like a local directory, so no node needs the file itself."""
    formats = _URI_FORMATS[field]
    if not any(uri.endswith(ext) for ext in formats):
        raise ValueError(f"Only {', '.join(formats)} files are supported for {field} URIs; got {uri}.")
    if not uri.endswith(".zip"):
        raise NotImplementedError(f"`{field}`: taskmesh unpacks .zip packages only, got {uri}.")
    path = Path(unquote(uri[len(FILE_SCHEME):]))
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{uri} is not a zip file on this machine for `{field}`.")
    return uri


def _unwrapped_zip(path: Path) -> bytes:
    """The zip at `path`, without its single top-level directory when it has one (an
    `__MACOSX` beside it aside), as Ray unpacks a package URI."""
    with zipfile.ZipFile(path) as source:
        entries = [i for i in source.infolist() if not i.filename.startswith("__MACOSX/")]
        tops = {i.filename.split("/", 1)[0] for i in entries}
        top = next(iter(tops)) + "/" if len(tops) == 1 and all("/" in i.filename for i in entries) else ""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for info in entries:
                name = info.filename[len(top):]
                if name and not info.is_dir():
                    archive.writestr(name, source.read(info), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def check_option(value: Any) -> None:
    """The `runtime_env` option's check (raises; returns no message)."""
    validate(value)


def merge(parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The child's runtime_env over its parent's: env_vars merged, other fields replaced."""
    if not child:
        return dict(parent) if parent else None
    if not parent:
        return dict(child)
    merged = {**parent, **child}
    env_vars = {**(parent.get("env_vars") or {}), **(child.get("env_vars") or {})}
    if env_vars:
        merged["env_vars"] = env_vars
    return merged


# ---- packaging (the submitting side) -------------------------------------------------------

_uploaded: dict[tuple[str, str, tuple[str, ...]], str] = {}  # (cluster, path, excludes) -> uri
_upload_lock = threading.Lock()


def resolve(parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None,
            store: Any) -> dict[str, Any] | None:
    """`merge`, with local paths of the result uploaded and replaced by package URIs
    (each path zipped once per process)."""
    merged = merge(parent, _validated(child) if child else None)
    if not merged or ("working_dir" not in merged and "py_modules" not in merged):
        return merged
    excludes = tuple(merged.get("excludes") or ())
    if "working_dir" in merged:
        merged["working_dir"] = _upload(merged["working_dir"], excludes, store, top_level=False)
    if "py_modules" in merged:
        merged["py_modules"] = [_upload(m, excludes, store, top_level=True) for m in merged["py_modules"]]
    return merged


_checked: dict[int, tuple[Mapping[str, Any], dict[str, Any] | None]] = {}


def _validated(child: Mapping[str, Any]) -> dict[str, Any] | None:
    """`validate`, once per options dict (it looks at the file system)."""
    hit = _checked.get(id(child))
    if hit is not None and hit[0] is child:
        return hit[1]
    if len(_checked) > 1000:
        _checked.clear()
    checked = validate(child)
    _checked[id(child)] = (child, checked)
    return checked


def _upload(location: str, excludes: tuple[str, ...], store: Any, *, top_level: bool) -> str:
    if location.startswith(PKG_SCHEME):
        return location
    key = (store.url, location, excludes)
    with _upload_lock:
        uri = _uploaded.get(key)
        if uri is None:
            if location.startswith(FILE_SCHEME):
                blob = _unwrapped_zip(Path(unquote(location[len(FILE_SCHEME):])))
            else:
                blob = _zip(Path(location), excludes, top_level=top_level)
            digest = hashlib.sha1(blob).hexdigest()
            store.put_package(digest, blob)
            uri = _uploaded[key] = f"{PKG_SCHEME}{digest}"
    return uri


def _zip(path: Path, excludes: Sequence[str], *, top_level: bool) -> bytes:
    """The files under `path` (or the file itself), deterministically: a package's hash
    only depends on file names and contents. `top_level`: the archive holds `path`'s own
    name (a py_modules package), else its contents (a working_dir)."""
    if path.is_file():
        files = [(path.name, path)]
    else:
        base = path.name + "/" if top_level else ""
        files = []
        ignored = _Ignored(excludes)
        for root, dirs, names in os.walk(path):
            rel_root = Path(root).relative_to(path)
            ignored.read_gitignore(Path(root), rel_root)
            dirs[:] = sorted(d for d in dirs if not ignored(rel_root / d, is_dir=True))
            for name in sorted(names):
                rel = rel_root / name
                if not ignored(rel, is_dir=False):
                    files.append((base + rel.as_posix(), Path(root) / name))
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, file in files:
            data = file.read_bytes()
            total += len(data)
            if total > MAX_PACKAGE_BYTES:
                raise ValueError(f"The runtime_env package from {path} is larger than "
                                 f"{MAX_PACKAGE_BYTES // 2**20} MiB: leave out large files with "
                                 "runtime_env['excludes'] (gitignore patterns) or a .gitignore.")
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (file.stat().st_mode & 0o777) << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


class _Ignored:
    """Which paths of a directory stay out of its package: `__pycache__` and `.git`, the
    `excludes` patterns (relative to the directory) and each `.gitignore`'s patterns
    (relative to the `.gitignore`'s own directory), all with gitignore semantics
    (pathspec's): `*.log`, `build/` (directories only), `/top.txt` (anchored), `a/**/z`."""

    def __init__(self, excludes: Sequence[str]):
        import pathspec  # here: only submitters zip, and it takes ~25 ms to import

        self._spec = pathspec.GitIgnoreSpec.from_lines
        self._specs = [(Path("."), self._spec(excludes))]

    def read_gitignore(self, directory: Path, rel: Path) -> None:
        try:
            lines = (directory / ".gitignore").read_text(errors="replace").splitlines()
        except OSError:
            return
        self._specs.append((rel, self._spec(lines)))

    def __call__(self, rel: Path, *, is_dir: bool) -> bool:
        if any(part in _ALWAYS_EXCLUDED for part in rel.parts):
            return True
        for base, spec in self._specs:
            if base != Path(".") and base not in rel.parents:
                continue
            text = rel.relative_to(base).as_posix() + ("/" if is_dir else "")
            if spec.match_file(text):
                return True
        return False


# ---- applying (the worker side) ------------------------------------------------------------

def _local_copy(uri: str, store: Any) -> str:
    """The node's extracted copy of a package (fetched from Redis the first time)."""
    from taskmesh._base.config import temp_root

    digest = uri[len(PKG_SCHEME):]
    target = temp_root() / "runtime_resources" / digest
    if target.is_dir():
        return str(target)
    blob = store.get_package(digest)
    if blob is None:
        from taskmesh.exceptions import RuntimeEnvSetupError

        raise RuntimeEnvSetupError(f"The runtime_env package {uri} is not in this cluster's Redis.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=target.parent))
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        archive.extractall(staging)
    try:
        staging.rename(target)  # atomic: another worker of this node may have won
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def apply(runtime_env: Mapping[str, Any] | None, store: Any = None) -> Callable[[], None] | None:
    """Apply an environment to this process: variables, working dir (the current
    directory) and the packages on `sys.path`. Returns what undoes it (None when there
    was nothing to do)."""
    if not runtime_env:
        return None
    _refuse_setup(runtime_env)
    env_vars = runtime_env.get("env_vars") or {}
    saved_vars = {k: os.environ.get(k) for k in env_vars}
    for key, value in env_vars.items():  # in order: a value may name an earlier key
        os.environ[key] = expand_vars(value)
    paths: list[str] = []
    old_cwd = None
    try:
        if runtime_env.get("working_dir"):
            working_dir = _local_copy(runtime_env["working_dir"], store)
            old_cwd = os.getcwd()
            os.chdir(working_dir)
            paths.append(working_dir)
        paths += [_local_copy(m, store) for m in runtime_env.get("py_modules") or ()]
    except BaseException:
        _undo(saved_vars, old_cwd, [])
        raise
    sys.path[:0] = paths
    return lambda: _undo(saved_vars, old_cwd, paths)


_UNSET_REFERENCE = re.compile(r"\$\{[A-Z0-9_]+\}")


def expand_vars(value: str) -> str:
    """An env_vars value with `$VAR` and `${VAR}` replaced by this process's variables, as
    Ray does (os.path.expandvars); a `${VAR}` of an unset variable becomes "" (a `$VAR`
    stays as it is)."""
    if "$" not in value:
        return value
    return _UNSET_REFERENCE.sub("", os.path.expandvars(value))


def _refuse_setup(runtime_env: Mapping[str, Any]) -> None:
    fields = [f for f in SETUP_FIELDS if runtime_env.get(f) is not None]
    if fields:
        from taskmesh.exceptions import RuntimeEnvSetupError

        raise RuntimeEnvSetupError(
            f"taskmesh installs no packages, conda environments or containers: the runtime_env "
            f"field(s) {fields} cannot be set up. Install what they name on every node (or in "
            "the image the nodes run) and remove the field(s).")


def setup_error(env: Mapping[str, Any] | None, error: Exception) -> Exception:
    """What a task or actor whose runtime_env `apply` failed on raises: a
    RuntimeEnvSetupError (that one, when `apply` raised one)."""
    from taskmesh.exceptions import RuntimeEnvSetupError

    if isinstance(error, RuntimeEnvSetupError):
        return error
    return RuntimeEnvSetupError(f"Failed to set up the runtime_env {env}: {error!r}")


def _undo(saved_vars: dict[str, str | None], old_cwd: str | None, paths: list[str]) -> None:
    for k, v in saved_vars.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if old_cwd is not None:
        with contextlib.suppress(OSError):
            os.chdir(old_cwd)
    for p in paths:
        with contextlib.suppress(ValueError):
            sys.path.remove(p)
    if paths:  # the next task may bring another version of these modules
        prefixes = tuple(p + os.sep for p in paths)
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(prefixes):
                del sys.modules[name]


def set_vars(runtime_env: Mapping[str, Any] | None) -> Callable[[], None] | None:
    """Only the environment variables of `apply` (no packages to fetch)."""
    env_vars = (runtime_env or {}).get("env_vars")
    return apply({"env_vars": env_vars}) if env_vars else None


@contextlib.contextmanager
def applied(runtime_env: Mapping[str, Any] | None, store: Any = None) -> Iterator[None]:
    """`apply` for the duration of a block."""
    restore = apply(runtime_env, store)
    try:
        yield
    finally:
        if restore is not None:
            restore()
