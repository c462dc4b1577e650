"""A remote error points at the user's code: the file, line and source line of functions
and classes defined in the driver (pickled by value, as a script's are), whatever
cloudpickle writes as their code's file name, and none of taskmesh's own frames."""

from __future__ import annotations

import sys
import traceback

import cloudpickle
import pytest

from taskmesh.exceptions import RayTaskError
from taskmesh.objects import deserialize, serialize_definition
from taskmesh.workers.execution import user_traceback

# Functions of this module travel by value, as a driver script's do.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

HERE = __file__


def _line_of(text: str) -> int:
    with open(HERE) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line_of" not in line)


def helper(x):
    return 10 / x  # the failing line


def divide(x):
    return helper(x)  # calls the helper


class Divider:
    def divide(self, x):
        return [helper(v) for v in (1, x)]  # in a comprehension


def _assert_points_at_this_file(text: str, *sources: str) -> None:
    assert "<dynamic-code>" not in text
    for source in sources:
        assert f'File "{HERE}", line {_line_of(source)}' in text, text
        assert source in text, text
    assert "taskmesh/workers" not in text and "taskmesh/_core" not in text, text


def test_a_definition_keeps_its_file_through_pickling() -> None:
    blob = serialize_definition(Divider)
    assert b"<dynamic-code>" not in blob or HERE.encode() in blob
    cls = deserialize(blob)
    method = cls.divide
    assert method.__code__.co_filename == HERE
    nested = [c for c in method.__code__.co_consts if hasattr(c, "co_filename")]
    assert all(c.co_filename == HERE for c in nested)
    with pytest.raises(ZeroDivisionError) as raised:
        cls().divide(0)
    _assert_points_at_this_file("".join(traceback.format_tb(raised.tb)),
                                "return 10 / x  # the failing line")


def test_user_traceback_drops_taskmesh_frames_only() -> None:
    from taskmesh.workers import execution

    def run(fn):  # as if it were taskmesh's runner
        return fn(0)

    run.__code__ = run.__code__.replace(co_filename=execution.__file__)
    try:
        run(divide)
    except ZeroDivisionError as e:
        text = user_traceback(e)
    assert execution.__file__ not in text
    assert "return helper(x)  # calls the helper" in text and "ZeroDivisionError" in text
    try:  # an error raised in taskmesh's own code alone keeps its frames
        execution.split_returns(1, 2, "f")
    except ValueError as e:
        assert "split_returns" in user_traceback(e)


def test_a_task_error_shows_the_users_file_lines_and_source(ray) -> None:
    task = ray.remote(divide)
    with pytest.raises(RayTaskError) as raised:
        ray.get(task.remote(0))
    _assert_points_at_this_file(str(raised.value), "return helper(x)  # calls the helper",
                                "return 10 / x  # the failing line")
    assert isinstance(raised.value, ZeroDivisionError)


def test_an_actor_method_error_shows_the_users_file_lines_and_source(ray) -> None:
    actor = ray.remote(Divider).remote()
    with pytest.raises(RayTaskError) as raised:
        ray.get(actor.divide.remote(0))
    _assert_points_at_this_file(str(raised.value), "return [helper(v) for v in (1, x)]",
                                "return 10 / x  # the failing line")
    ray.kill(actor)
