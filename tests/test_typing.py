"""Typed users: the package ships `py.typed`, and a typed `@remote` function's result
keeps its type through `.remote()` and `get` (not `Any`), as with Ray's stubs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import taskmesh

PROGRAM = '''
import taskmesh as ray


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote(num_cpus=1)
def name(x: int) -> str:
    return str(x)


reveal_type(square.remote(3))
reveal_type(ray.get(square.remote(3)))
reveal_type(ray.get([name.remote(1), name.options(num_cpus=2).remote(2)]))
reveal_type(ray.put(1.5))
'''


def test_the_package_says_it_is_typed() -> None:
    assert (Path(taskmesh.__file__).parent / "py.typed").is_file()


@pytest.mark.slow
def test_remote_results_keep_their_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = pytest.importorskip("mypy.api")
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    monkeypatch.setenv("MYPYPATH", str(Path(taskmesh.__file__).parent.parent))
    monkeypatch.chdir(tmp_path)
    stdout, stderr, _ = api.run(["--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
                                 "--follow-imports=silent", "program.py"])
    revealed = re.findall(r'^program\.py:\d+: note: Revealed type is "(.*)"$', stdout, re.M)
    plain = [name.replace("builtins.", "") for name in revealed]  # mypy versions differ
    assert plain == ["taskmesh.objects.ref.ObjectRef[int]", "int", "list[str]",
                     "taskmesh.objects.ref.ObjectRef[float]"], stdout + stderr
