"""Ray's runtime context (`get_runtime_context()`), from its documentation: task names
and function names in tasks, actors and async actors; the task id of the call running in
an async actor; the actor's own handle, name and restart flag; the deprecated forms with
their RayDeprecationWarning; and Ray's deprecation warnings of options."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import taskmesh
from taskmesh.util.annotations import RayDeprecationWarning


@pytest.mark.cluster
def test_the_context_before_init_starts_a_local_cluster() -> None:
    """As Ray's: get_runtime_context() initializes, like `.remote()` and `put`."""
    assert not taskmesh.is_initialized()
    try:
        context = taskmesh.get_runtime_context()
        assert taskmesh.is_initialized() and context.get_job_id()
    finally:
        taskmesh.shutdown()


def test_task_names_and_function_names(ray) -> None:
    @ray.remote
    def named_task() -> tuple:
        context = ray.get_runtime_context()
        return context.get_task_name(), context.get_task_function_name(), context.get_task_id()

    @ray.remote
    class Actor:
        def names(self) -> tuple:
            context = ray.get_runtime_context()
            return context.get_task_name(), context.get_task_function_name(), context.get_task_id()

    @ray.remote
    class AsyncActor:
        async def names(self) -> tuple:
            await asyncio.sleep(0.05)  # other calls run meanwhile: the ids stay each call's own
            context = ray.get_runtime_context()
            return context.get_task_name(), context.get_task_function_name(), context.get_task_id()

    name, function, task_id = ray.get(named_task.remote())
    assert name == "named_task" and function == f"{__name__}.test_task_names_and_function_names." \
                                                "<locals>.named_task"
    assert task_id
    assert ray.get(named_task.options(name="given").remote())[0] == "given"
    assert ray.get(Actor.remote().names.remote())[:2] == ("Actor.names", f"{__name__}.Actor.names")
    actor = AsyncActor.remote()
    refs = [actor.names.remote() for _ in range(5)]
    results = ray.get(refs)
    assert {r[0] for r in results} == {"AsyncActor.names"}
    # Each call sees its own task id, although five ran at once on one event loop.
    assert len({r[2] for r in results}) == 5 and all(r[2] for r in results)
    assert [r[2] for r in results] == [ref.task_id().hex() for ref in refs]


def test_the_driver_has_no_task(ray) -> None:
    context = ray.get_runtime_context()
    assert context.get_task_id() is None and context.get_task_name() is None
    assert context.get_actor_id() is None and context.get_actor_name() is None
    with pytest.warns(RayDeprecationWarning, match="get_xxx_id"):
        values = context.get()
    assert set(values) == {"job_id", "node_id", "namespace"}  # no task_id key in a driver
    with pytest.raises(RuntimeError, match="only available in an actor"):
        context.current_actor  # noqa: B018


def test_inside_a_task_the_old_dict_has_the_task_id(ray) -> None:
    @ray.remote
    def old_style() -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ray.get_runtime_context().get()

    got = ray.get(old_style.remote())
    assert got["task_id"] and "actor_id" not in got


def test_deprecated_properties_warn_and_still_answer(ray) -> None:
    context = ray.get_runtime_context()
    for name, new in (("job_id", "get_job_id"), ("node_id", "get_node_id"),
                      ("current_placement_group_id", "get_placement_group_id")):
        with pytest.warns(RayDeprecationWarning, match=f"Use {new}"):
            assert getattr(context, name) == getattr(context, new)()
    with pytest.warns(RayDeprecationWarning, match="get_accelerator_ids"):
        assert context.get_resource_ids() == context.get_accelerator_ids()
    assert issubclass(RayDeprecationWarning, DeprecationWarning)


def test_an_actor_knows_itself(ray) -> None:
    @ray.remote(max_restarts=1)
    class Self:
        def __init__(self) -> None:
            self.reconstructed = ray.get_runtime_context().was_current_actor_reconstructed

        def who(self) -> tuple:
            context = ray.get_runtime_context()
            return context.get_actor_name(), context.current_actor, self.reconstructed

        def pid(self) -> int:
            import os

            return os.getpid()

        def ping(self) -> str:
            return "pong"

    actor = Self.options(name="knows_itself").remote()
    name, handle, reconstructed = ray.get(actor.who.remote())
    assert name == "knows_itself" and reconstructed is False
    assert handle == actor and ray.get(handle.ping.remote()) == "pong"
    assert ray.get(Self.remote().who.remote())[0] == ""  # unnamed
    ray.kill(actor, no_restart=False)
    from conftest import wait_until

    def restarted() -> bool:
        try:
            return ray.get(actor.who.remote(), timeout=10)[2]
        except ray.exceptions.RayActorError:
            return False

    assert wait_until(restarted, timeout_s=30, what="the actor restarted and knows it")


def test_options_ray_deprecates_warn(ray) -> None:
    @ray.remote
    class Plain:
        pass

    with pytest.warns(RayDeprecationWarning, match="object_store_memory"):
        Plain.options(object_store_memory=2**20)
