"""runtime_env env_vars, per job and per task/actor, merged and inherited as Ray
documents it ("Specifying a runtime environment per-job / per-task or per-actor")."""

from __future__ import annotations

import os

import pytest

import taskmesh
from taskmesh.runtime_env import RuntimeEnv


@pytest.fixture
def job(shared_cluster):
    """A driver whose job has a runtime_env."""
    taskmesh.init(address=shared_cluster.url,
                  runtime_env={"env_vars": {"JOB_ONLY": "job", "SHARED": "from-job"}})
    yield taskmesh
    taskmesh.shutdown()


@taskmesh.remote
def env(*names: str) -> list[str | None]:
    return [os.environ.get(n) for n in names]


def test_job_env_vars_reach_tasks_and_task_env_vars_are_merged_in(job) -> None:
    assert job.get(env.remote("JOB_ONLY", "SHARED")) == ["job", "from-job"]
    task_env = {"env_vars": {"SHARED": "from-task", "TASK_ONLY": "task"}}
    assert job.get(env.options(runtime_env=task_env).remote("JOB_ONLY", "SHARED", "TASK_ONLY")) == [
        "job", "from-task", "task"]


def test_task_env_vars_do_not_leak_into_later_tasks(job) -> None:
    marked = env.options(runtime_env=RuntimeEnv(env_vars={"LEAK_CHECK": "1"}))
    assert job.get([marked.remote("LEAK_CHECK") for _ in range(4)]) == [["1"]] * 4
    assert job.get([env.remote("LEAK_CHECK", "SHARED") for _ in range(8)]) == [[None, "from-job"]] * 8


def test_nested_tasks_inherit_their_parents_env(job) -> None:
    @job.remote
    def parent() -> list[str | None]:
        return taskmesh.get(env.remote("PARENT", "SHARED"))

    got = job.get(parent.options(runtime_env={"env_vars": {"PARENT": "p"}}).remote())
    assert got == ["p", "from-job"]


def test_actor_env_vars_hold_for_its_life(job) -> None:
    @job.remote
    class Reader:
        def read(self, name: str) -> str | None:
            return os.environ.get(name)

    reader = Reader.options(runtime_env={"env_vars": {"ACTOR_VAR": "a"}}).remote()
    assert job.get([reader.read.remote("ACTOR_VAR"), reader.read.remote("JOB_ONLY")]) == ["a", "job"]


def test_bad_runtime_env_raises_rays_error_types(shared_cluster) -> None:
    with pytest.raises(TypeError, match=r"runtime_env\['env_vars'\] must be of type Dict\[str, str\]"):
        env.options(runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(TypeError, match="env_vars"):
        taskmesh.remote(runtime_env={"env_vars": ["A=1"]})(lambda: None)
    with pytest.raises(ValueError, match="Unknown runtime_env field 'envvars'"):
        env.options(runtime_env={"envvars": {"A": "1"}})
    with pytest.raises(NotImplementedError, match="'image_uri'"):
        env.options(runtime_env={"image_uri": "myimage"})
    with pytest.raises(ValueError, match="not a valid local directory"):
        env.options(runtime_env={"working_dir": "/no/such/dir"})
    with pytest.raises(TypeError, match="py_modules"):
        env.options(runtime_env={"py_modules": "mod"})
    with pytest.raises(TypeError, match="The type of keyword 'runtime_env'"):
        env.options(runtime_env="env_vars")
    with pytest.raises(TypeError, match="env_vars"):
        taskmesh.init(address=shared_cluster.url, runtime_env={"env_vars": {"A": None}})
    assert not taskmesh.is_initialized()


def test_working_dir_is_uploaded_and_is_the_tasks_current_directory(shared_cluster, tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.txt").write_text("payload")
    (project / "wd_helper_mod.py").write_text("def answer():\n    return 42\n")
    (project / "huge.bin").write_bytes(b"x" * 1000)
    taskmesh.init(address=shared_cluster.url,
                  runtime_env={"working_dir": str(project), "excludes": ["*.bin"]})
    try:
        @taskmesh.remote
        def read() -> tuple:
            import wd_helper_mod

            with open("data.txt") as f:
                return f.read(), wd_helper_mod.answer(), os.path.exists("huge.bin")

        @taskmesh.remote
        class Reader:
            def read(self) -> str:
                with open("data.txt") as f:
                    return f.read()

        assert taskmesh.get([read.remote() for _ in range(4)]) == [("payload", 42, False)] * 4
        assert taskmesh.get(Reader.remote().read.remote()) == "payload"
    finally:
        taskmesh.shutdown()


def test_py_modules_are_importable_only_in_tasks_that_ask_for_them(ray, tmp_path) -> None:
    package = tmp_path / "pm_pkg_for_test"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 'from the package'\n")

    @ray.remote
    def value() -> str:
        try:
            import pm_pkg_for_test
        except ImportError:
            return "not importable"
        return pm_pkg_for_test.VALUE

    with_module = value.options(runtime_env={"py_modules": [str(package)]})
    assert ray.get([with_module.remote() for _ in range(4)]) == ["from the package"] * 4
    assert ray.get([value.remote() for _ in range(6)]) == ["not importable"] * 6


def test_excludes_and_gitignore_files_have_gitignore_semantics(tmp_path) -> None:
    """Ray's `excludes` are gitignore patterns relative to the working dir, and a
    `.gitignore` (at the top or below) leaves out what it ignores, relative to itself."""
    import io
    import zipfile

    from taskmesh.runtime_env import _zip

    files = ["main.py", "notes.log", "keep.log", "top.txt", "sub/top.txt", "build/out.o",
             "src/build/gen.o", "src/app.py", ".venv/lib/big.so", "data/raw/x.csv", "data/y.csv",
             "data/.gitignore", "a/b/c/z", "a/z", "__pycache__/m.pyc"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".gitignore").write_text(".venv/\n# a comment\n*.log\n!keep.log\n")
    (tmp_path / "data" / ".gitignore").write_text("raw/\n")
    blob = _zip(tmp_path, ["build/", "/top.txt", "a/**/z"], top_level=False)
    kept = set(zipfile.ZipFile(io.BytesIO(blob)).namelist())
    assert kept == {"main.py", "keep.log", "sub/top.txt", "src/app.py", "data/y.csv",
                    "data/.gitignore", ".gitignore"}
