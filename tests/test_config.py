"""The table of environment variables (taskmesh/_base/config.py): it declares every
TASKMESH_* name the package uses, nothing reads one around it, values are parsed as
documented and read when used (set after import here), and README's list is generated
from it. Pure: no Redis, no processes."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from taskmesh._base import config

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "taskmesh"
NAME = re.compile(r"\bTASKMESH_[A-Z0-9_]*[A-Z0-9]\b")
FAMILY = re.compile(r"\bTASKMESH_[A-Z0-9_]*_\*")  # "TASKMESH_TLS_*" in prose


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def _python_names(tree: ast.AST) -> set[str]:
    """Names the code binds (constants, functions, classes): not environment variables."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---- the table covers the package -------------------------------------------------------


def test_every_variable_named_in_the_package_is_declared() -> None:
    used: dict[str, set[str]] = {}
    families: set[str] = set()
    for path, text in _sources().items():
        skip = _python_names(ast.parse(text))
        for name in NAME.findall(text):
            if name not in skip:
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
        families.update(m.group(0)[:-1] for m in FAMILY.finditer(text))
    undeclared = {name: sorted(where) for name, where in used.items() if name not in config.VARIABLES}
    assert not undeclared, f"declare these in taskmesh/_base/config.py: {undeclared}"
    assert len(used) >= 19  # the scan found the names (ADDRESS, NODE_TIMEOUT_MS, ...)
    for prefix in families:
        assert any(name.startswith(prefix) for name in config.VARIABLES), prefix


def _declared() -> dict[str, config.Var[Any]]:
    """The table's entries by their attribute name in config (ADDRESS, ...)."""
    return {attr: value for attr, value in vars(config).items() if isinstance(value, config.Var)}


def test_no_module_reads_a_variable_around_the_table() -> None:
    """Reads go through config (setting one for a child process is fine)."""
    offenders = []
    for path, text in _sources().items():
        if path == PACKAGE / "_base" / "config.py":
            continue
        for node in ast.walk(ast.parse(text)):
            key: ast.expr | None = None
            if isinstance(node, ast.Call) and node.args and (
                    (isinstance(node.func, ast.Attribute) and node.func.attr == "getenv")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                        and ast.unparse(node.func.value).endswith("environ"))):
                key = node.args[0]
            elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                  and ast.unparse(node.value).endswith("environ")):
                key = node.slice
            if key is None:
                continue
            source = ast.unparse(key)
            if "TASKMESH_" in source or re.search(r"\bENV_", source):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "read these through taskmesh._base.config:\n" + "\n".join(offenders)


def test_entries_are_complete_and_named_once() -> None:
    declared = _declared()
    assert sorted(v.name for v in declared.values()) == sorted(config.VARIABLES)
    for attr, var in declared.items():
        assert var.name == f"TASKMESH_{attr}", attr
        assert var.unit and var.meaning and "\n" not in var.meaning and "|" not in var.meaning
    with pytest.raises(ValueError, match="duplicate"):
        config._int("TASKMESH_NODE_TIMEOUT_MS", 1, "ms", "again")


# ---- defaults and parsing ------------------------------------------------------------------


def test_defaults_when_unset_or_empty(clean_env: pytest.MonkeyPatch) -> None:
    for var in config.VARIABLES.values():
        assert var.get() == var.default, var.name
        clean_env.setenv(var.name, "")
        assert var.get() == var.default, var.name
    assert config.INLINE_LIMIT.get() == 100 * 1024
    assert config.NODE_TIMEOUT_MS.get() == 10_000
    assert config.DRIVER_TIMEOUT_MS.get() == 30_000
    assert config.GRACE_PERIOD_S.get() == 30.0
    assert config.OBJECT_STORE_FULL_WAIT_S.get() == 10.0
    assert config.WAIT_REPLICAS.get() == 1 and config.WAIT_TIMEOUT_MS.get() == 100
    assert config.TASK_EVENTS_MAXLEN.get() == 2000
    assert config.METRICS_REPORT_INTERVAL_S.get() == 1.0
    assert config.PREFIX.get() == "tm" and config.ADDRESS.get() is None
    assert config.ALLOW_INSECURE.get() is False
    assert config.shm_root() == Path("/dev/shm")


@pytest.mark.parametrize(("var", "raw", "value"), [
    (config.INLINE_LIMIT, "4096", 4096),
    (config.INLINE_LIMIT, "0", 0),  # everything to shared memory
    (config.NODE_TIMEOUT_MS, "1500", 1500),
    (config.WAIT_REPLICAS, "0", 0),  # no WAIT
    (config.GRACE_PERIOD_S, "0.5", 0.5),
    (config.GRACE_PERIOD_S, "0", 0.0),
    (config.METRICS_REPORT_INTERVAL_S, "2", 2.0),
    (config.ALLOW_INSECURE, "1", True),
    (config.ALLOW_INSECURE, "TRUE", True),
    (config.ALLOW_INSECURE, "yes", True),
    (config.ALLOW_INSECURE, "0", False),
    (config.ALLOW_INSECURE, "no", False),
    (config.SHM_ROOT, "/tmp/shm", Path("/tmp/shm")),
    (config.TLS_CERT, "/etc/node.pem", "/etc/node.pem"),
])
def test_values_are_parsed(var: config.Var[Any], raw: str, value: Any) -> None:
    assert var.get({var.name: raw}) == value
    assert type(var.get({var.name: raw})) is type(value)


@pytest.mark.parametrize(("var", "raw"), [
    (config.NODE_TIMEOUT_MS, "soon"),
    (config.NODE_TIMEOUT_MS, "0"),  # positive
    (config.NODE_TIMEOUT_MS, "1.5"),  # whole milliseconds
    (config.DRIVER_TIMEOUT_MS, "-1"),
    (config.WAIT_TIMEOUT_MS, "0"),  # WAIT 1 0 would block forever
    (config.WAIT_REPLICAS, "-1"),
    (config.INLINE_LIMIT, "100KiB"),
    (config.TASK_EVENTS_MAXLEN, "0"),
    (config.GRACE_PERIOD_S, "-1"),
    (config.GRACE_PERIOD_S, "nan"),
    (config.OBJECT_STORE_FULL_WAIT_S, "ten"),
    (config.METRICS_REPORT_INTERVAL_S, "0"),
])
def test_bad_numbers_are_refused_naming_the_variable(var: config.Var[Any], raw: str) -> None:
    words = config._UNIT_WORDS.get(var.unit, var.unit)
    with pytest.raises(ValueError, match=rf"^{var.name}='{re.escape(raw)}': expected a .*{words}"):
        var.get({var.name: raw})


def test_env_number_still_parses_any_variable(clean_env: pytest.MonkeyPatch) -> None:
    assert config.env_number("TASKMESH_X_TEST", 3) == 3
    clean_env.setenv("TASKMESH_X_TEST", "7")
    assert config.env_number("TASKMESH_X_TEST", 3, cast=int) == 7
    clean_env.setenv("TASKMESH_X_TEST", "-7")
    with pytest.raises(ValueError, match="TASKMESH_X_TEST='-7': expected a number >= 0"):
        config.env_number("TASKMESH_X_TEST", 3)


# ---- read when used ---------------------------------------------------------------------------


def test_values_are_read_when_called_not_at_import(clean_env: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from taskmesh import security
    from taskmesh.objects import shm
    from taskmesh.objects.plane import ObjectPlane
    from taskmesh.store.connection import TlsFiles
    from taskmesh.workers import grace_period_from_env, monitor

    clean_env.setenv("TASKMESH_SHM_ROOT", str(tmp_path / "shm"))
    assert shm.node_dir("n1") == tmp_path / "shm" / "taskmesh-n1"
    (tmp_path / "shm").mkdir()
    assert shm.reap_dead_stores() == []  # looks under the new root (and finds nothing)

    clean_env.setenv("TASKMESH_INLINE_LIMIT", "10")
    assert ObjectPlane(None, None).inline_limit == 10  # type: ignore[arg-type]

    clean_env.setenv("TASKMESH_NODE_TIMEOUT_MS", "1234")
    assert monitor.node_timeout_from_env() == 1234
    clean_env.setenv("TASKMESH_GRACE_PERIOD_S", "2.5")
    assert grace_period_from_env() == 2.5
    clean_env.setenv("TASKMESH_ALLOW_INSECURE", "1")
    assert security.allow_insecure_default() is True
    clean_env.setenv("TASKMESH_TLS_CA_FILE", "/ca.pem")
    assert TlsFiles.from_env() == TlsFiles("/ca.pem", None, None)
    assert TlsFiles.from_env({"TASKMESH_TLS_KEY": "/k.pem"}) == TlsFiles(None, None, "/k.pem")
    clean_env.setenv("TASKMESH_TEMP_DIR", str(tmp_path / "temp"))
    assert config.temp_root() == tmp_path / "temp" and (tmp_path / "temp").is_dir()
    clean_env.setenv("TASKMESH_PREFIX", "other")
    assert config.get("TASKMESH_PREFIX") == "other"


def test_task_events_maxlen_is_read_per_batch(clean_env: pytest.MonkeyPatch) -> None:
    from taskmesh.store.keys import Keys
    from taskmesh.store.observe import ObserveMethods

    class Observer(ObserveMethods):
        keys = Keys()

    class Pipe:
        def __init__(self) -> None:
            self.maxlens: list[int] = []

        def xadd(self, key: str, fields: dict, *, maxlen: int, approximate: bool) -> None:
            self.maxlens.append(maxlen)

    pipe = Pipe()
    Observer().queue_events(pipe, [{"task_id": "t"}])
    clean_env.setenv("TASKMESH_TASK_EVENTS_MAXLEN", "50")
    Observer().queue_events(pipe, [{"task_id": "t"}])
    assert pipe.maxlens == [2000, 50]


# ---- README -----------------------------------------------------------------------------------


def test_readme_lists_the_variables_of_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = config.readme_section(readme)
    assert section is not None, f"README.md lacks the markers {config.README_BEGIN!r} / {config.README_END!r}"
    assert section == config.markdown_table(), (
        "README.md's table of environment variables differs from taskmesh/_base/config.py: "
        "regenerate it with `python -m taskmesh._base --write README.md`")


def test_the_table_is_rendered_from_the_entries() -> None:
    table = config.markdown_table().splitlines()
    assert table[0] == "| variable | default | unit | meaning |"
    assert len(table) == 2 + len(config.VARIABLES)
    row = next(line for line in table if "`TASKMESH_NODE_TIMEOUT_MS`" in line)
    assert row == ("| `TASKMESH_NODE_TIMEOUT_MS` | `10000` | ms | "
                   f"{config.NODE_TIMEOUT_MS.meaning} |")
    text = f"before\n{config.README_BEGIN}\nold rows\n{config.README_END}\nafter\n"
    assert config.readme_section(config.with_table(text)) == config.markdown_table()
    assert config.with_table(text).startswith("before\n") and config.with_table(text).endswith("after\n")
    with pytest.raises(ValueError, match="markers"):
        config.with_table("no markers")
